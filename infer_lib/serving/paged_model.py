"""The course's ``Transformer`` run over a paged KV cache: packed prefill chunks, batched decode steps.

``infer_lib.model.Transformer`` takes a rectangular ``(B, S)`` batch and a contiguous
``KVCache``. A server needs two other shapes of work, and this wrapper runs the model's
own modules (embedding, norms, projections, MLP, output head — the same parameters, not
copied, so ``fast.use_matmul`` and ``fast.quantize`` carry over) on them, with the cache
handled here (the model's ``forward`` is not used, nor ``fast.fuse``'s):

* **Prefill chunks, packed.** Several sequences' next prompt chunks (of different lengths,
  each at its own start position) go through the layers as *one* row of ``T`` tokens, so
  the projections and the MLP see every token of the step in one matmul. In each layer the
  new keys and values are first **written into the paged cache** at their blocks; then
  each sequence's keys — the earlier chunks' and this one's — are **gathered from its
  blocks into a contiguous tile** ``(n, H_kv, L, D)`` and attended by the model's attention
  backend (``extend``: ``S`` queries per sequence over its cache, causal, aligned
  bottom-right — ``flash_attention`` for the ``"triton"`` backend, SDPA with a mask for
  ``"sdpa"``). The queries are padded to the longest chunk, right-aligned, so query ``i``
  of a chunk of ``c`` tokens sits at its true position; padded rows are dropped. The
  gather costs one copy of the keys a prefill reads; a paged prefill kernel would read the
  blocks in place, and is left for later.
* **Decode steps, batched.** One new token for each of ``B`` sequences: its key and value
  are written into its block, and ``kernels.paged_decode_attention`` reads every
  sequence's keys through its block table, all in one launch (``attention="paged"``). With
  ``attention="gather"`` the keys are gathered into a contiguous tile and attended by the
  model's backend instead (``decode``): the same numbers, a PyTorch path for machines
  without Triton and a check of the kernel.

**CUDA graphs.** A decode step has static shapes once its batch is padded to a bucket
(1, 2, 4, …, ``max_batch``): the tokens, positions and block-table rows are copied into
fixed buffers, padded rows point at the reserved ``NULL_BLOCK`` with one token, and the
lengths and block ids stay on the GPU (nothing in the step reads them on the host). So one
graph per bucket is captured the first time that bucket runs (``capture`` does it ahead of
time) and replayed after: the ~20 kernel launches of each of ``L`` layers cost one
launch. Prefill chunks change shape every step and run eagerly.

Greedy only: a step returns the argmax of each sequence's logits (and, if asked, the
logits).
"""

from __future__ import annotations

import os

import torch

from ..model.layers import BACKENDS, Transformer, apply_rope
from .paged_cache import NULL_BLOCK, PagedKVCache

ATTENTIONS = ("paged", "gather")


def _bucket(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


class PagedModel:
    """``model`` run over ``cache``: ``prefill(...)`` of packed chunks, ``decode(...)`` steps.

    ``attention``: ``"paged"`` (decode through ``kernels.paged_decode_attention``) or
    ``"gather"`` (keys gathered into a contiguous tile, the model's backend attends).
    ``cuda_graphs``: replay decode steps from CUDA graphs (default: on a GPU, unless
    ``INFER_LIB_CHECKS=1`` asks the kernels to read values on the host, which a graph cannot).
    ``max_batch``: the largest decode batch (the static buffers' size). ``pad_batch``: pad each
    decode batch to its bucket with rows on the null block, as the graphs need (default: with
    graphs; the CPU tests turn it on to run the padded rows without a GPU).
    """

    def __init__(self, model: Transformer, cache: PagedKVCache, *, attention: str = "paged",
                 cuda_graphs: bool | None = None, max_batch: int | None = None, pad_batch: bool | None = None):
        if attention not in ATTENTIONS:
            raise ValueError(f"PagedModel: attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        weight = model.embed_tokens.weight
        if weight.device != cache.device or weight.dtype != cache.dtype:
            raise ValueError(f"PagedModel: the model is {weight.dtype} on {weight.device} but the cache is "
                             f"{cache.dtype} on {cache.device}; make the cache in the model's dtype and device")
        config = model.config
        if (cache.config.n_layers, cache.config.n_kv_heads, cache.config.head_dim) != \
                (config.n_layers, config.n_kv_heads, config.head_dim):
            raise ValueError("PagedModel: the cache was made for another model shape "
                             "(layers, K/V heads or head dim differ)")
        self.model = model
        self.cache = cache
        self.attention = attention
        self.max_batch = cache.max_seqs if max_batch is None else max_batch
        if cuda_graphs is None:
            cuda_graphs = cache.device.type == "cuda" and os.environ.get("INFER_LIB_CHECKS") != "1"
        self.cuda_graphs = bool(cuda_graphs) and cache.device.type == "cuda"
        self.graph_error: str | None = None       # why graphs were switched off, if they were
        self.pad_batch = self.cuda_graphs if pad_batch is None else bool(pad_batch)
        dev = cache.device
        pin = dev.type == "cuda"
        n = _bucket(self.max_batch)
        # static decode inputs: host staging (pinned on a GPU) and their device copies
        self._tok_host = torch.zeros(n, dtype=torch.int64, pin_memory=pin)
        self._pos_host = torch.zeros(n, dtype=torch.int64, pin_memory=pin)
        self._table_host = torch.full((n, cache.max_blocks), NULL_BLOCK, dtype=torch.int32, pin_memory=pin)
        self._tok = torch.zeros(n, dtype=torch.int64, device=dev)
        self._pos = torch.zeros(n, dtype=torch.int64, device=dev)
        self._table = torch.full((n, cache.max_blocks), NULL_BLOCK, dtype=torch.int32, device=dev)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = None

    # -- the layers -------------------------------------------------------------------------

    def _layers(self, x: torch.Tensor, positions: torch.Tensor, block: torch.Tensor, row: torch.Tensor,
                attend) -> torch.Tensor:
        """Every block of the model over ``x (T, d)`` at ``positions (T,)``; the new keys and
        values are written at ``(block, row)`` before ``attend(layer, q (T, H, D))`` reads the
        cache. The same operations as ``Block.forward`` and ``Attention.forward``."""
        m = self.model
        T = x.shape[0]
        H, H_kv, D = m.config.n_heads, m.config.n_kv_heads, m.config.head_dim
        cos, sin = m.rope_cos[positions][None], m.rope_sin[positions][None]      # (1, T, D)
        for i, blk in enumerate(m.layers):
            a = blk.self_attn
            h = blk.input_layernorm(x)
            q = a.q_proj(h).view(1, T, H, D).transpose(1, 2)            # (1, H, T, D)
            k = a.k_proj(h).view(1, T, H_kv, D).transpose(1, 2)
            v = a.v_proj(h).view(T, H_kv, D)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.cache.write(i, k[0].transpose(0, 1), v, block, row)     # into the blocks first
            out = attend(i, q[0].transpose(0, 1))                       # (T, H, D)
            x = x + a.o_proj(out.reshape(T, H * D))
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.norm(x))

    # -- prefill ----------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, slots: list[int], starts: list[int], chunks: list[list[int]]) -> torch.Tensor:
        """Run chunk ``j`` (token ids) of the sequence in ``slots[j]`` at positions ``starts[j] …``,
        all in one packed pass; the cache must already hold room for them (``cache.grow``).
        Returns the logits of each chunk's last token, ``(n, V)``."""
        cache, dev = self.cache, self.cache.device
        n = len(chunks)
        lens = [len(c) for c in chunks]
        if n == 0 or min(lens) < 1:
            raise ValueError("PagedModel.prefill: every chunk needs at least one token")
        T, C = sum(lens), max(lens)
        seq = torch.repeat_interleave(torch.arange(n), torch.tensor(lens))                # (T,)
        first = torch.tensor([0] + lens[:-1]).cumsum(0)                                   # (n,)
        step = torch.arange(T) - first[seq]                                               # (T,) index in chunk
        starts_t = torch.tensor(starts)
        positions = starts_t[seq] + step                                                  # (T,)
        slot_t = torch.tensor(slots)
        block, row = cache.slots_of(slot_t[seq], positions)                               # (T,) each
        # keys each sequence attends: positions 0 … start + c − 1, padded to the longest
        kv_lens = starts_t + torch.tensor(lens)                                           # (n,)
        L = int(kv_lens.max())
        kpos = torch.minimum(torch.arange(L)[None], (kv_lens - 1)[:, None])               # (n, L)
        kblock, krow = cache.slots_of(slot_t[:, None].expand(n, L), kpos)
        # query rows right-aligned in a (n, C) grid: token i of chunk j at row C − c_j + i
        qrow = seq * C + (C - torch.tensor(lens))[seq] + step                             # (T,)
        to = dict(device=dev, non_blocking=True)
        tokens = torch.tensor([t for c in chunks for t in c], dtype=torch.int64).to(**to)
        positions, block, row, kblock, krow, qrow = (t.to(**to) for t in (positions, block, row, kblock,
                                                                           krow, qrow))
        kv_lens_dev = kv_lens.to(torch.int32).to(**to)
        extend = BACKENDS[self.model.backend].extend
        H, D = self.model.config.n_heads, self.model.config.head_dim

        def attend(layer: int, q: torch.Tensor) -> torch.Tensor:          # q (T, H, D)
            k, v = cache.gather(layer, kblock, krow)                      # (n, H_kv, L, D)
            q_pad = q.new_zeros(n * C, H, D)
            q_pad[qrow] = q
            q_pad = q_pad.view(n, C, H, D).transpose(1, 2)                # (n, H, C, D)
            out = extend(q_pad, k, v, kv_lens_dev)                        # (n, H, C, D)
            return out.transpose(1, 2).reshape(n * C, H, D)[qrow]         # (T, H, D)

        x = self.model.embed_tokens(tokens[None])[0]                      # (T, d)
        x = self._layers(x, positions, block, row, attend)
        last = (first + torch.tensor(lens) - 1).to(dev)                   # each chunk's last token
        return self._head(x[last])

    # -- decode -----------------------------------------------------------------------------

    def _decode_body(self, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step over the static buffers' first ``B`` rows: ``(logits (B, V), argmax (B,))``.
        Reads nothing on the host: it captures in a CUDA graph."""
        cache = self.cache
        tokens, positions, table = self._tok[:B], self._pos[:B], self._table[:B]
        rows = torch.arange(B, device=tokens.device)
        block, row = cache.slots_of(rows, positions, table)
        seqlens = (positions + 1).to(torch.int32)                         # the new token included
        if self.attention == "paged":
            from ..kernels import paged_decode_attention

            def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
                return paged_decode_attention(q, cache.k_blocks[layer], cache.v_blocks[layer], table, seqlens)
        else:
            L = cache.max_seq_len                                         # static: graphs stay valid
            kpos = torch.minimum(torch.arange(L, device=tokens.device)[None], positions[:, None])
            kblock, krow = cache.slots_of(rows[:, None].expand(B, L), kpos, table)
            decode = BACKENDS[self.model.backend].decode

            def attend(layer: int, q: torch.Tensor) -> torch.Tensor:
                k, v = cache.gather(layer, kblock, krow)                  # (B, H_kv, L, D)
                return decode(q[:, :, None], k, v, seqlens)[:, :, 0]

        x = self.model.embed_tokens(tokens[None])[0]                      # (B, d)
        logits = self._head(self._layers(x, positions, block, row, attend))
        return logits, logits.argmax(-1)

    def _stage(self, slots: list[int], tokens: list[int], positions: list[int], B: int) -> None:
        """Copy a step's inputs into the static buffers, rows ``len(slots) … B − 1`` padding."""
        n = len(slots)
        self._tok_host[:n] = torch.tensor(tokens, dtype=torch.int64)
        self._pos_host[:n] = torch.tensor(positions, dtype=torch.int64)
        torch.index_select(self.cache.table_host, 0, torch.tensor(slots, dtype=torch.int64),
                           out=self._table_host[:n])
        self._tok_host[n:B] = 0
        self._pos_host[n:B] = 0                      # one token, at row 0 of the null block
        self._table_host[n:B] = NULL_BLOCK
        self._tok[:B].copy_(self._tok_host[:B], non_blocking=True)
        self._pos[:B].copy_(self._pos_host[:B], non_blocking=True)
        self._table[:B].copy_(self._table_host[:B], non_blocking=True)

    @torch.no_grad()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Feed ``tokens[j]`` at ``positions[j]`` to the sequence in ``slots[j]`` (its block for that
        position already allocated); returns ``(logits (n, V), the argmax of each as a list)``.
        The one host synchronisation of a step is reading the argmax back."""
        n = len(slots)
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"PagedModel.decode: {n} sequences; a step takes 1 to {self.max_batch}")
        B = min(_bucket(n), _bucket(self.max_batch)) if (self.pad_batch or self.cuda_graphs) else n
        self._stage(slots, tokens, positions, B)
        if self.cuda_graphs:
            graph = self._graph(B)
            if graph is not None:
                g, logits, argmax = graph
                g.replay()
                return logits[:n], argmax[:n].tolist()
        logits, argmax = self._decode_body(B)
        return logits[:n], argmax[:n].tolist()

    # -- CUDA graphs ------------------------------------------------------------------------

    def capture(self, batch_sizes=None) -> None:
        """Capture the decode graphs of ``batch_sizes`` (default: every bucket up to ``max_batch``)
        now, not on first use: a timed run then never pays for a capture."""
        if not self.cuda_graphs:
            return
        sizes = batch_sizes or [1 << i for i in range(_bucket(self.max_batch).bit_length())]
        for B in sorted({min(_bucket(b), _bucket(self.max_batch)) for b in sizes}, reverse=True):
            self._stage([], [], [], B)           # all padding: the null block
            self._graph(B)

    def _graph(self, B: int):
        """The graph of a ``B``-row step (captured on first use), or None once capture has failed
        (then ``graph_error`` says why and every later step runs eagerly)."""
        if B in self._graphs:
            return self._graphs[B]
        if not self.cuda_graphs:
            return None
        try:
            with torch.no_grad():
                self._decode_body(B)                             # compile and tune outside the capture
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._decode_body(B)
                torch.cuda.current_stream().wait_stream(side)
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=self._pool):
                    logits, argmax = self._decode_body(B)
        except Exception as err:                                 # record it, run eagerly from now on
            self.cuda_graphs = False
            self.graph_error = f"{type(err).__name__}: {err}"
            torch.cuda.synchronize()
            return None
        self._graphs[B] = (g, logits, argmax)
        return self._graphs[B]
