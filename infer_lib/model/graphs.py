"""A decode step captured once in a CUDA graph and replayed for every token.

A decode step of a 1B model at batch 1 launches a few hundred kernels of a few microseconds
each; launched from Python, one by one, the launches take longer than the work (chapter 2).
A CUDA graph records the step's kernels, with their arguments, once; ``graph.replay()``
then submits all of them in one call. What that demands of the step:

* **Static shapes and addresses.** The graph replays the same kernels on the same
  buffers: the token goes into a fixed input tensor, the logits come out in a fixed
  output tensor, the cache is allocated once at its full length (``KVCache``), and the
  step writes into it in place. A different batch size is a different graph.
* **No host synchronisation.** Nothing in the step may read a GPU value on the host
  (``.item()``, ``.tolist()``, a Python ``if`` on a tensor): the graph records GPU work
  only. The model keeps each sequence's length on the GPU (``cache.seqlens``), and the
  kernels read it there.
* **No data-dependent shapes** (``nonzero``, boolean indexing): the sizes are frozen.

What a graph cannot check by itself, ``GraphedDecoder`` checks on the host before each
replay, from lengths it counts there: a batch of another size, or a step past the end of
the static cache, is refused with a clear error instead of replayed into wrong tokens.
"""

from __future__ import annotations

import torch

from .generate import decode_one_token
from .kv_cache import KVCache
from .layers import Transformer


class GraphedDecoder:
    """``decode_one_token(model, token, cache)`` captured in a CUDA graph.

    ``GraphedDecoder(model, cache)`` warms the step up (which also tunes the Triton kernels'
    configurations for these shapes) and captures it; ``step(token)`` with ``token (B,)``
    writes the token into the graph's input, replays, and returns the logits ``(B, V)`` —
    a view of the graph's output buffer, overwritten by the next step (clone it to keep it).
    The cache's lengths advance by one per step, as with ``decode_one_token``.

    Needs a CUDA GPU. The cache's lengths are read once, at capture (one synchronisation);
    afterwards they are counted on the host, so change them only through this object (or
    call ``resync()`` after changing them elsewhere, e.g. after a prefill)."""

    def __init__(self, model: Transformer, cache: KVCache):
        if not torch.cuda.is_available() or cache.k_cache.device.type != "cuda":
            raise RuntimeError("GraphedDecoder: CUDA graphs need a CUDA GPU and a cache on it; without "
                               "one, call decode_one_token(model, token, cache) step by step")
        self.model, self.cache = model, cache
        self.batch_size = cache.batch_size
        self.token = torch.zeros(self.batch_size, dtype=torch.long, device=cache.k_cache.device)
        lengths = cache.seqlens.clone()
        cache.check_room(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                      # warm-up: tuning, allocator, compiles
            decode_one_token(model, self.token, cache)
        torch.cuda.current_stream().wait_stream(side)
        cache.seqlens.copy_(lengths)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decode_one_token(model, self.token, cache)
        cache.seqlens.copy_(lengths)                       # the capture ran the step once: undo
        self.resync()

    def resync(self) -> None:
        """Read the cache's lengths again (one synchronisation)."""
        self.lengths = self.cache.seqlens.tolist()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One decode step of ``token (B,)``; returns the logits ``(B, V)`` (the graph's buffer)."""
        if not isinstance(token, torch.Tensor) or token.shape != (self.batch_size,):
            shape = tuple(token.shape) if isinstance(token, torch.Tensor) else type(token).__name__
            raise ValueError(f"GraphedDecoder.step: the graph was captured for a batch of {self.batch_size} "
                             f"tokens, shape ({self.batch_size},); got {shape}. A different batch size "
                             "needs its own graph (and its own cache)")
        longest = max(self.lengths)
        if longest + 1 > self.cache.max_seq_len:
            raise ValueError(f"GraphedDecoder.step: the static cache holds {self.cache.max_seq_len} "
                             f"positions and a sequence already has {longest}; the graph cannot grow it — "
                             "allocate a longer KVCache before capturing")
        self.token.copy_(token)
        self.graph.replay()
        self.lengths = [n + 1 for n in self.lengths]
        return self.logits
