"""The KV cache: every layer's keys and values of the tokens seen so far, preallocated.

Decoding token ``t`` needs the keys and values of tokens ``0 … t`` in every
layer. Recomputing them costs a forward pass over the whole prefix per token;
keeping them costs memory, ``2 · L · H_kv · D · bytes`` per token
(``ModelConfig.kv_cache_bytes_per_token``) — for Llama-3-8B in bf16,
2·32·8·128·2 = 128 KiB per token, 1 GiB for 8192 tokens.

Layout: one buffer for keys and one for values, each ``(L, B, H_kv, S_max, D)``
— per layer a ``(B, H_kv, S_max, D)`` block, the layout attention reads — and
``seqlens`` (B,) int32, the number of valid positions of each sequence (they may
differ: prompts of different lengths). Nothing is ever reallocated or resized:
``update`` writes new keys in place at their positions, and the model advances
``seqlens`` in place, so the shapes of a decode step never change and the step
can be captured in a CUDA graph. Positions at or beyond ``seqlens[b]`` hold
zeros or stale values that attention never reads.

``select(rows)`` is a view of some sequences (sharing the buffers): prompts are
prefilled one at a time into their own rows, then decoded together.

``max_cached_tokens`` answers the sizing question of the chapters on the cache (6 and 7):
how many tokens of cache, summed over a batch, fit beside the weights in a GPU's memory.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig


def _nbytes(dtype: torch.dtype | int) -> int:
    return dtype if isinstance(dtype, int) else torch.empty((), dtype=dtype).element_size()


def max_cached_tokens(config: ModelConfig, memory_bytes: float,
                      cache_dtype: torch.dtype | int = torch.bfloat16,
                      weight_dtype: torch.dtype | int = torch.bfloat16) -> int | None:
    """Tokens of KV cache — batch × context, summed over the sequences — that fit beside the
    weights in ``memory_bytes`` of GPU memory (``hardware.GPUSpec.memory_bytes``: NVIDIA's
    memory "GB" are GiB)::

        (memory_bytes − num_params · weight bytes) // kv_cache_bytes_per_token(cache bytes)

    ``None`` when the weights alone do not fit. Nothing else is counted: activations, the
    allocator's slack and fragmentation come on top. The largest batch at a context of ``T``
    tokens is ``max_cached_tokens(...) // T``. The dtypes may be given as their size in bytes."""
    if not (isinstance(memory_bytes, (int, float)) and not isinstance(memory_bytes, bool)
            and math.isfinite(memory_bytes) and memory_bytes > 0):
        raise ValueError(f"max_cached_tokens: memory_bytes must be a finite positive number, "
                         f"got {memory_bytes!r}")
    free = memory_bytes - config.num_params() * _nbytes(weight_dtype)
    if free <= 0:
        return None
    return int(free // config.kv_cache_bytes_per_token(_nbytes(cache_dtype)))


class KVCache:
    """Keys and values for ``batch_size`` sequences of up to ``max_seq_len`` tokens.

    ``k_cache``, ``v_cache`` (L, B, H_kv, S_max, D); ``seqlens`` (B,) int32."""

    def __init__(self, config: ModelConfig, batch_size: int, max_seq_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        S_max = config.max_seq_len if max_seq_len is None else max_seq_len
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"KVCache: batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(S_max, bool) or not isinstance(S_max, int) or S_max < 1:
            raise ValueError(f"KVCache: max_seq_len must be a positive integer, got {S_max!r}")
        if S_max > config.max_seq_len:
            raise ValueError(f"KVCache: max_seq_len={S_max} exceeds the model's max_seq_len="
                             f"{config.max_seq_len} (the longest sequence its RoPE tables cover)")
        shape = (config.n_layers, batch_size, config.n_kv_heads, S_max, config.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)   # (B,)

    @property
    def batch_size(self) -> int:
        return self.k_cache.shape[1]

    @property
    def max_seq_len(self) -> int:
        return self.k_cache.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.k_cache.dtype

    def nbytes(self) -> int:
        """Bytes of the two buffers: ``2 · L · B · H_kv · S_max · D · bytes``."""
        return 2 * self.k_cache.numel() * self.k_cache.element_size()

    def select(self, rows: int | slice) -> KVCache:
        """A view of sequence ``rows`` (an index or a slice): writes through it, and the
        lengths it advances, land in this cache."""
        if isinstance(rows, int):
            if not -self.batch_size <= rows < self.batch_size:
                raise IndexError(f"KVCache.select: row {rows} out of range for a batch of {self.batch_size}")
            rows = slice(rows % self.batch_size, rows % self.batch_size + 1)
        view = KVCache.__new__(KVCache)
        view.k_cache = self.k_cache[:, rows]          # views: no copy
        view.v_cache = self.v_cache[:, rows]
        view.seqlens = self.seqlens[rows]
        if view.batch_size == 0:
            raise IndexError(f"KVCache.select: {rows} selects no row of a batch of {self.batch_size}")
        return view

    def reset(self) -> None:
        """Forget every sequence (the buffers are overwritten as new tokens arrive)."""
        self.seqlens.zero_()

    def check_room(self, n_new: int) -> None:
        """Raise if appending ``n_new`` tokens would grow a sequence past ``max_seq_len``.

        Reads the lengths on the host (one synchronisation), so it is skipped while a
        CUDA graph is being captured and inside ``torch.compile``'s traced code (where it
        would break the graph): check before capturing or calling a compiled model."""
        if torch.compiler.is_compiling():
            return
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return
        longest = int(self.seqlens.max()) + n_new
        if longest > self.max_seq_len:
            lengths = self.seqlens.tolist()
            b = max(range(len(lengths)), key=lengths.__getitem__)
            raise ValueError(f"KV cache full: sequence {b} holds {lengths[b]} tokens and {n_new} more "
                             f"would make {longest}, past the cache's max_seq_len={self.max_seq_len}; "
                             "allocate a longer KVCache (or generate fewer tokens)")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` (B, H_kv, S_new, D) of layer ``layer`` at ``positions`` (B, S_new)
        int64, in place; return the layer's whole buffers, each (B, H_kv, S_max, D).

        Positions must lie in ``[0, max_seq_len)``: ``Transformer.forward`` checks once a
        step with ``check_room``. ``seqlens`` is not touched: the model advances it
        after the last layer."""
        k_layer, v_layer = self.k_cache[layer], self.v_cache[layer]        # (B, H_kv, S_max, D)
        B, H_kv, _, D = k_layer.shape
        if k.shape != v.shape or k.dim() != 4 or k.shape[0] != B or k.shape[1] != H_kv or k.shape[3] != D:
            raise ValueError(f"KVCache.update: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
                             f"(B={B}, H_kv={H_kv}, S_new, D={D})")
        if positions.shape != (B, k.shape[2]):
            raise ValueError(f"KVCache.update: positions must be (B, S_new) = ({B}, {k.shape[2]}), "
                             f"got {tuple(positions.shape)}")
        if k.dtype != self.dtype or v.dtype != self.dtype:
            raise TypeError(f"KVCache.update: the cache holds {self.dtype} but k is {k.dtype} and v is "
                            f"{v.dtype}; allocate the cache in the model's dtype")
        index = positions[:, None, :, None].expand(B, H_kv, -1, D)         # (B, H_kv, S_new, D)
        k_layer.scatter_(2, index, k)             # in place: fixed shapes, no allocation
        v_layer.scatter_(2, index, v)
        return k_layer, v_layer
