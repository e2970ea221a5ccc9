"""RoPE on the queries and keys, and the keys and values written into the KV cache, in one launch.

Notation: ``B`` sequences, ``S`` new tokens each, ``H`` query heads and ``H_kv``
key/value heads of ``D`` entries. After the projections of a decoding step,
attention needs three things done to ``q (B, S, H, D)``, ``k, v (B, S, H_kv, D)``:

1. rotate every query and key head by its token's angles (rotary position
   embedding): each pair ``(x[i], x[i + D/2])`` becomes
   ``(x[i]·cos[i] − x[i + D/2]·sin[i], x[i + D/2]·cos[i + D/2] + x[i]·sin[i + D/2])``
   — that is ``x·cos + rotate_half(x)·sin`` with ``rotate_half(x) = (−x₂, x₁)``;
2. write the rotated keys and the values into the cache ``(B, H_kv, S_max, D)``
   at each token's position;
3. lay the queries out as ``(B, H, S, D)``, the layout the attention kernels read.

In PyTorch that is a dozen small kernels per layer — two casts of the angle
tables, a ``cat`` and a negation for ``rotate_half``, two products and a sum, for
queries and keys each, then two scatters. Each moves a few kilobytes at decode
time, so each costs its launch, not its bytes: on an H200, Llama-3.2-1B shapes at
batch 1, they took about 360 µs of a 1.75 ms step (``torch.profiler``,
2026-12-02). Here one program handles one head of one token: it reads the head
(``D`` entries) and the token's ``cos, sin`` rows, rotates in fp32, and writes the
result to its one destination — a query head to ``q_out``, a key head and its
value head to the cache. ``(H + H_kv)·D`` entries read and written per token:
nothing to gain but the launches.

Memory traffic per token: ``(H + 2·H_kv)·D`` elements read and written, plus
``2·D`` fp32 angles from L2.

The inputs may be strided views (the slices of one fused ``qkv`` projection
need no copy): only the last dimension must be contiguous. Positions are int64
``(B, S)``; they must lie in ``[0, S_max)`` — checked where reading them is free
(CPU tensors, or with ``INFER_LIB_CHECKS=1``), as for ``decode_attention``'s lengths;
on a GPU otherwise a position past the cache would write out of bounds, so the
model checks the room once per step before calling (``KVCache.check_room``).

References: J. Su et al., "RoFormer: Enhanced Transformer with Rotary Position
Embedding" (2021), https://arxiv.org/abs/2104.09864 (the rotate-half form is the
one of Hugging Face's Llama); the fused rotary-and-cache kernels of vLLM and
FlashInfer do the same work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_same, check_tensor, values_checked


def rope_cache_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   positions: torch.Tensor) -> torch.Tensor:
    """The same in plain PyTorch, fp32 inside and rounded once: writes the rotated ``k`` and
    ``v`` into the caches in place and returns the rotated ``q`` as ``(B, H, S, D)``."""
    def rotate(x):                                           # (B, S, h, D) → fp32
        x = x.float()
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos[:, :, None].float() + torch.cat((-x2, x1), dim=-1) * sin[:, :, None].float()

    B, S, H_kv, D = k.shape
    index = positions[:, None, :, None].expand(B, H_kv, S, D)            # (B, H_kv, S, D)
    k_cache.scatter_(2, index, rotate(k).to(k_cache.dtype).transpose(1, 2))
    v_cache.scatter_(2, index, v.transpose(1, 2).to(v_cache.dtype))
    return rotate(q).to(q.dtype).transpose(1, 2).contiguous()


@triton.jit
def _rotate(x_ptrs, cos_ptrs, sin_ptrs, offs, HALF: tl.constexpr, mask):
    """Rotate one head: ``x·cos + rotate_half(x)·sin`` in fp32 (the partner of entry ``i`` is
    ``i ± D/2``, read again from L1)."""
    partner = tl.where(offs < HALF, offs + HALF, offs - HALF)
    x = tl.load(x_ptrs + offs, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(x_ptrs + partner, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(cos_ptrs + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptrs + offs, mask=mask, other=0.0).to(tl.float32)
    return x * c + tl.where(offs < HALF, -xp, xp) * s


# B·S and the positions change every step: not specialised (no recompiles).
@triton.jit(do_not_specialize=["S"])
def _rope_cache_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, q_out_ptr, kc_ptr, vc_ptr,
                       S, H, H_kv,
                       stride_qb, stride_qs, stride_qh,
                       stride_kb, stride_ks, stride_kh,
                       stride_vb, stride_vs, stride_vh,
                       stride_cb, stride_cs,
                       stride_kcb, stride_kch, stride_kcs,
                       stride_vcb, stride_vch, stride_vcs,
                       D: tl.constexpr, BLOCK_D: tl.constexpr):
    # Grid: (B·S, H + H_kv). Program (token, head): a query head for head < H, else
    # key/value head head − H.
    token = tl.program_id(0)
    head = tl.program_id(1)
    b = (token // S).to(tl.int64)
    s = (token % S).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    cos_ptrs = cos_ptr + b * stride_cb + s * stride_cs
    sin_ptrs = sin_ptr + b * stride_cb + s * stride_cs
    if head < H:
        x = _rotate(q_ptr + b * stride_qb + s * stride_qs + head * stride_qh, cos_ptrs, sin_ptrs,
                    offs, D // 2, mask)
        # q_out is (B, H, S, D), contiguous
        out = q_out_ptr + ((b * H + head) * S + s) * D
        tl.store(out + offs, x.to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        kh = head - H
        pos = tl.load(pos_ptr + b * S + s)                  # this token's slot in the cache
        x = _rotate(k_ptr + b * stride_kb + s * stride_ks + kh * stride_kh, cos_ptrs, sin_ptrs,
                    offs, D // 2, mask)
        tl.store(kc_ptr + b * stride_kcb + kh * stride_kch + pos * stride_kcs + offs,
                 x.to(kc_ptr.dtype.element_ty), mask=mask)
        val = tl.load(v_ptr + b * stride_vb + s * stride_vs + kh * stride_vh + offs, mask=mask)
        tl.store(vc_ptr + b * stride_vcb + kh * stride_vch + pos * stride_vcs + offs, val, mask=mask)


def _check(q, k, v, cos, sin, k_cache, v_cache, positions) -> None:
    op = "rope_cache"
    for name, t in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(op, name, t, ndim=4)
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(op, name, t, ndim=3)
    check_tensor(op, "positions", positions, dtypes=(torch.int64,), ndim=2)
    check_same(op, q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache)
    check_same(op, cos=cos, sin=sin)
    B, S, H, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, S) or k.shape[3] != D:
        raise ValueError(f"rope_cache: k {tuple(k.shape)} and v {tuple(v.shape)} must both be "
                         f"(B={B}, S={S}, H_kv, D={D}) like q {tuple(q.shape)}")
    H_kv = k.shape[2]
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(f"rope_cache: H={H} query heads is not a multiple of H_kv={H_kv} key/value heads")
    if D % 2 != 0:
        raise ValueError(f"rope_cache: head dim D={D} is odd; RoPE rotates pairs (x[i], x[i + D/2])")
    if cos.shape != (B, S, D) or sin.shape != (B, S, D):
        raise ValueError(f"rope_cache: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must be "
                         f"(B, S, D) = ({B}, {S}, {D}): the angles of each token's position")
    if positions.shape != (B, S):
        raise ValueError(f"rope_cache: positions must be (B, S) = ({B}, {S}), got {tuple(positions.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.shape[0] != B or k_cache.shape[1] != H_kv \
            or k_cache.shape[3] != D:
        raise ValueError(f"rope_cache: k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                         f"must both be (B={B}, H_kv={H_kv}, S_max, D={D})")
    for name, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin), ("k_cache", k_cache),
                    ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"rope_cache: the last dimension of {name} must be contiguous (stride 1), "
                             f"got strides {tuple(t.stride())}")
    if cos.stride() != sin.stride():
        raise ValueError("rope_cache: cos and sin must have the same strides (two tables of one layout)")
    if not positions.is_contiguous():
        raise ValueError("rope_cache: positions must be contiguous")
    if cos.device != q.device or positions.device != q.device:
        raise ValueError(f"rope_cache: cos, sin and positions must be on q's device {q.device}")
    if values_checked(positions) and positions.numel() > 0:
        S_max = k_cache.shape[2]
        bad = (positions < 0) | (positions >= S_max)
        if bool(bad.any()):
            b, s = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"rope_cache: positions[{b}, {s}] = {int(positions[b, s])} is outside the "
                             f"cache's 0..{S_max - 1}; allocate a longer cache")


def rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
    """Rotate ``q (B, S, H, D)`` and ``k (B, S, H_kv, D)`` by RoPE, write the rotated keys and
    ``v (B, S, H_kv, D)`` into ``k_cache, v_cache (B, H_kv, S_max, D)`` at ``positions (B, S)``
    (int64), in place; return the rotated queries as a new ``(B, H, S, D)`` tensor.

    ``cos, sin (B, S, D)`` fp32: the angles of each token's position (the model's tables
    indexed by ``positions``). ``q, k, v`` and the caches share one dtype (fp32, fp16 or
    bf16); the rotation is computed in fp32 and rounded once. Any strides with a contiguous
    last dimension. What ``rope_cache_ref`` computes, in one launch.
    """
    _check(q, k, v, cos, sin, k_cache, v_cache, positions)
    if q.is_cuda and q.device.index != torch.cuda.current_device():
        with torch.cuda.device(q.device):   # Triton launches on the current device
            return rope_cache(q, k, v, cos, sin, k_cache, v_cache, positions)
    B, S, H, D = q.shape
    H_kv = k.shape[2]
    q_out = torch.empty((B, H, S, D), dtype=q.dtype, device=q.device)
    if B * S == 0:
        return q_out
    _rope_cache_kernel[(B * S, H + H_kv)](
        q, k, v, cos, sin, positions, q_out, k_cache, v_cache, S, H, H_kv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), cos.stride(0), cos.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        D=D, BLOCK_D=triton.next_power_of_2(D), num_warps=1)
    return q_out
