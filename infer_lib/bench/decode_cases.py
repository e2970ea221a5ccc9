"""Benchmark cases of chapter 6: one decoding step of attention over a KV cache.

``decode_attention`` reads, for each sequence, the keys and values of its
``cache_seqlens[b]`` tokens once: ``2 · Σ_b cache_seqlens[b] · H_kv · D``
elements, plus the query and the output (``B · H · D`` each). Those are the
bytes counted (unit GB/s, held to the copy bandwidth); the FLOPs,
``4 · H · Σ_b cache_seqlens[b] · D``, are ``H / H_kv`` per byte in 16-bit (1 to 32 here):
below any GPU's balance point, memory-bound.

Peers: ``scaled_dot_product_attention`` with ``enable_gqa`` (one query per
sequence; a boolean mask of each sequence's keys in the ragged case), and the
naive version a first implementation writes, which copies each K/V head to its
``H / H_kv`` query heads with ``repeat_interleave`` before a plain
softmax(q kᵀ) v: ``H / H_kv`` times the cache's bytes read, plus the copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import device
from ..kernels import decode_attention   # the launcher (importable without Triton)
from .core import Case

#: (B, H, H_kv, S) at D = 128: GQA at batch 16 and 64, MHA, MQA, one long sequence
DECODE_SHAPES = ((16, 32, 8, 4096), (64, 32, 8, 4096), (16, 32, 32, 4096), (16, 32, 1, 4096),
                 (1, 32, 8, 32768))
#: the ragged batch: (B, H, H_kv, S_max), lengths drawn from 1..S_max (seed 0), one of each end
DECODE_RAGGED = (16, 32, 8, 8192)
DECODE_HEAD_DIM = 128


def naive_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 cache_seqlens: torch.Tensor) -> torch.Tensor:
    """Decode attention as a first PyTorch version writes it: K/V heads copied to every query head
    of their group, scores for all ``S_max`` keys, the keys past each length masked."""
    B, H, D = q.shape
    group = H // k_cache.shape[1]
    k = k_cache.repeat_interleave(group, dim=1)                    # (B, H, S_max, D): a copy
    v = v_cache.repeat_interleave(group, dim=1)
    scores = (q[:, :, None, :] @ k.transpose(-1, -2)) / math.sqrt(D)   # (B, H, 1, S_max)
    past = torch.arange(k.shape[2], device=q.device) >= cache_seqlens[:, None, None, None]
    p = torch.softmax(scores.masked_fill(past, float("-inf")).float(), dim=-1).to(q.dtype)
    return (p @ v)[:, :, 0]                                        # (B, H, D)


def _sdpa_decode(q, k_cache, v_cache, mask):
    gqa = k_cache.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q[:, :, None], k_cache, v_cache, attn_mask=mask,
                                          enable_gqa=gqa)[:, :, 0]


def _lengths(B: int, S_max: int, ragged: bool) -> torch.Tensor:
    if not ragged:
        return torch.full((B,), S_max, dtype=torch.int32, device=device.DEVICE)
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, S_max + 1, (B,), generator=g, dtype=torch.int32)
    lens[0], lens[-1] = S_max, 1
    return lens.to(device.DEVICE)


def decode_attention_cases(smoke: bool) -> list[Case]:
    """One decode step, bf16 (fp16 without bf16), against SDPA and the naive repeat_interleave version."""
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    esize = dtype.itemsize
    D = 32 if smoke else DECODE_HEAD_DIM
    shapes = [(s, False) for s in ((2, 4, 2, 40), (2, 4, 1, 24))] if smoke else \
        [(s, False) for s in DECODE_SHAPES]
    shapes.append(((3, 4, 2, 48), True) if smoke else (DECODE_RAGGED, True))
    out = []
    for (B, H, H_kv, S), ragged in shapes:
        q = torch.randn(B, H, D, device=device.DEVICE, dtype=dtype)
        k, v = (torch.randn(B, H_kv, S, D, device=device.DEVICE, dtype=dtype) for _ in range(2))
        lens = _lengths(B, S, ragged)
        mask = (torch.arange(S, device=device.DEVICE) < lens[:, None])[:, None, None, :] if ragged else None
        tokens = int(lens.sum())
        kv_bytes = 2 * tokens * H_kv * D * esize
        out.append(Case(
            kernel="decode_attention",
            case=f"B{B} H{H} H_kv{H_kv} S{S} D{D}{' ragged' if ragged else ''}",
            params={"B": B, "H": H, "H_kv": H_kv, "S_max": S, "D": D, "dtype": device.dtype_name(dtype),
                    "ragged": ragged, "tokens": tokens, "kv_bytes": kv_bytes},
            unit="GB/s",
            bytes=kv_bytes + 2 * B * H * D * esize,      # K and V seen once; q read, output written
            flops=4 * H * tokens * D,
            ours=("triton decode_attention",
                  lambda q=q, k=k, v=v, lens=lens: decode_attention(q, k, v, lens)),
            peers=[("SDPA", lambda q=q, k=k, v=v, m=mask: _sdpa_decode(q, k, v, m)),
                   ("naive (repeat_interleave)", lambda q=q, k=k, v=v, lens=lens: naive_decode(q, k, v, lens))],
            limit="copy", atol=2e-2, rtol=2e-2,
        ))
    return out
