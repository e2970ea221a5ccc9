"""Decode attention: one new query per sequence against its KV cache, split along the keys.

Math: ``q (B, H, D)`` is the query of the token each of ``B`` sequences is
generating; ``k_cache, v_cache (B, H_kv, S_max, D)`` hold the keys and values of
the tokens so far, of which sequence ``b`` has ``cache_seqlens[b]`` (the new
token's own key included). Query head ``h`` reads key/value head
``h // (H // H_kv)`` (GQA; MQA is ``H_kv = 1``). For each sequence and head,

    out = softmax(q kᵀ · sm_scale) v      over the first cache_seqlens[b] keys,

``sm_scale = 1/√D`` by default. The new token is the last one, so it sees every
key in its cache: no causal mask. Its own key and value are already in the
cache, so every length is in ``1..S_max``. The fp32 reference is
``decode_attention_ref`` below.

Why a kernel of its own. ``flash_attention`` gives one program a tile of
``BLOCK_M`` queries of one head. At decode time there is one query per
sequence: a 128-row tile would hold 1 useful row, and ``B · H`` programs (32
for one sequence of a 32-head model) leave most of an H200's 132 SMs idle while
the cache — the whole cost — streams through a few of them. Two changes:

* **All the query heads of one KV head in one program.** With GQA, ``G = H / H_kv``
  query heads share each K/V head. One program takes the ``G`` queries as the
  rows of its tile (padded to 16, what ``tl.dot`` needs) and reads each K/V tile
  once for all of them: the cache is read once, not ``G`` times.
* **Split-KV** ("flash decoding"). The keys of a sequence are cut into
  ``num_splits`` chunks, each its own program, so ``B · H_kv · num_splits``
  programs stream the cache at once. Each computes the online softmax of
  ``softmax_kernel.py`` over its chunk and writes three partial results per
  query: the running maximum ``m_s``, sum ``l_s`` and un-normalised output
  ``o_s``. A second, small kernel combines the chunks exactly:

      m = max_s m_s,   out = Σ_s 2^(m_s − m) o_s  /  Σ_s 2^(m_s − m) l_s

  (base 2, as in ``flash_attention``: scores are scaled by ``sm_scale · log2 e``).

The number of splits depends only on the shapes (``B``, ``H_kv``, ``S_max``) and
the GPU, never on the lengths, which stay on the GPU: a decode step with this
kernel can be captured in a CUDA graph and replayed as the sequences grow.
Chunks past a sequence's length return at once.

NaN and ±inf as in ``flash_attention``: a NaN in a query, or in a key or value
it sees, makes its output NaN; a ``+inf`` score gives NaN, ``-inf`` scores get
probability 0, and a query whose scores are all ``-inf`` returns zeros. Keys
and values past ``cache_seqlens[b]`` are never loaded, so whatever a cache
holds there cannot reach the output. A length outside ``1..S_max`` is refused
with an error where the launcher can read the lengths for free — CPU tensors, or
with ``INFER_LIB_CHECKS=1`` — and otherwise (reading GPU lengths would cost a host
synchronisation every step, and cannot happen inside a CUDA graph) makes that
sequence's output NaN: a broken length never gives a plausible answer.

Memory traffic: the keys and values each sequence sees, read once
(``2 · cache_seqlens[b] · H_kv · D`` elements), ``q`` and the output once, and
the partials (``B · H · num_splits · (D + 2)`` fp32 values, written and read
once, from L2). The FLOPs (``4 · H · cache_seqlens[b] · D``) are ``G = H / H_kv``
per byte of a 16-bit cache (1 for MHA, 32 for MQA with 32 query heads): below the
balance point of every GPU in the spec table (≈ 165 FLOP/byte measured on an H200),
so decode attention is memory-bound, and its measure is the bandwidth at which it
reads the cache.

References: T. Dao, D. Haziza, F. Massa, G. Sizov, "Flash-Decoding for
long-context inference" (2023), https://pytorch.org/blog/flash-decoding/;
FlashInfer's and vLLM's split-KV decode kernels.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import device
from ..reference import attention_ref
from . import _tuning
from ._checks import (check_bf16_supported, check_heads, check_same, check_seqlen_values, check_sm_scale,
                      check_tensor)

#: log2(e): exp(x) = exp2(x · LOG2E)
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
#: The most splits of one sequence's keys (the second grid dimension stays far below CUDA's 65 535).
MAX_SPLITS = 256


def decode_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_seqlens: torch.Tensor, sm_scale: float | None = None) -> torch.Tensor:
    """What ``decode_attention`` computes, in plain PyTorch (fp32 inside, cast back to q's dtype):
    ``infer_lib.reference.attention_ref`` of each sequence's query ``q[b] (H, D)`` over its first
    ``cache_seqlens[b]`` keys; NaN for a sequence whose length is outside ``1..S_max``."""
    out = torch.empty_like(q)
    S_max = k_cache.shape[2]
    for b, n in enumerate(cache_seqlens.tolist()):
        if not 1 <= n <= S_max:
            out[b] = float("nan")
            continue
        out[b] = attention_ref(q[b, None, :, None], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n],
                               sm_scale=sm_scale)[0, :, 0]
    return out


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, o_part_ptr, m_part_ptr, l_part_ptr, qk_scale,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    H_kv, GROUP, S_max, CHUNK, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Grid: (B · H_kv, num_splits). Program (b·H_kv + kv_head, s) owns the GROUP query
    # heads of one KV head and the keys [s·CHUNK, (s+1)·CHUNK) of sequence b.
    pid_bkv = tl.program_id(0)
    split = tl.program_id(1)
    off_b = (pid_bkv // H_kv).to(tl.int64)
    off_hkv = (pid_bkv % H_kv).to(tl.int64)
    length = tl.load(seqlens_ptr + off_b).to(tl.int32)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, length)
    if (start < end) & (length <= S_max):       # chunks past the sequence have nothing to do
        offs_g = tl.arange(0, BLOCK_G)             # query heads of this KV head (rows ≥ GROUP: padding)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        heads = off_hkv * GROUP + offs_g           # (BLOCK_G,) query head index
        q_ptrs = q_ptr + off_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=offs_g[:, None] < GROUP, other=0.0)     # (BLOCK_G, D)
        if UPCAST:
            # The interpreter's tl.dot is wrong for bf16 operands (triton 3.7.1,
            # https://github.com/triton-lang/triton/issues/11584): fp32 on the CPU.
            q = q.to(tl.float32)
        k_ptrs = (k_ptr + off_b * stride_kb + off_hkv * stride_kh
                  + (start + offs_n)[:, None].to(tl.int64) * stride_kn + offs_d[None, :] * stride_kd)
        v_ptrs = (v_ptr + off_b * stride_vb + off_hkv * stride_vh
                  + (start + offs_n)[:, None].to(tl.int64) * stride_vn + offs_d[None, :] * stride_vd)
        # Running max from -FLT_MAX, as in flash_attention: -inf scores keep it finite,
        # so exp2(-inf - m) = 0 and no -inf - (-inf) = NaN arises.
        m_i = tl.full([BLOCK_G], -3.4028234663852886e38, tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for start_n in range(start, end, BLOCK_N):
            cols = start_n + offs_n
            inside = cols < end
            # keys past the end read as 0 and score -inf: nothing of them reaches the output
            k = tl.load(k_ptrs, mask=inside[:, None], other=0.0)          # (BLOCK_N, D)
            v = tl.load(v_ptrs, mask=inside[:, None], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)      # (BLOCK_G, BLOCK_N)
            s = tl.where(inside[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if UPCAST:
                acc = tl.dot(p, v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            else:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
        # Partials of query head h, split s at [(b·H + h)·NUM_SPLITS + s]: fp32, contiguous.
        rows = (off_b * H_kv * GROUP + heads) * NUM_SPLITS + split          # (BLOCK_G,)
        keep = offs_g < GROUP
        tl.store(m_part_ptr + rows, m_i, mask=keep)
        tl.store(l_part_ptr + rows, l_i, mask=keep)
        tl.store(o_part_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=keep[:, None])


@triton.jit
def _decode_combine_kernel(
    o_part_ptr, m_part_ptr, l_part_ptr, seqlens_ptr, o_ptr,
    stride_ob, stride_oh, stride_od,
    H, S_max, CHUNK, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # Grid: (B · H,). One program combines the splits of one (sequence, query head).
    pid = tl.program_id(0)
    off_b = pid // H
    off_h = pid % H
    length = tl.load(seqlens_ptr + off_b).to(tl.int32)
    n_used = tl.cdiv(tl.maximum(length, 0), CHUNK)          # splits that wrote partials
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    used = (offs_s < n_used) & (offs_s < NUM_SPLITS)
    base = pid.to(tl.int64) * NUM_SPLITS
    m_s = tl.load(m_part_ptr + base + offs_s, mask=used, other=-3.4028234663852886e38)   # (BLOCK_S,)
    l_s = tl.load(l_part_ptr + base + offs_s, mask=used, other=0.0)
    o_s = tl.load(o_part_ptr + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
                  mask=used[:, None], other=0.0)                                       # (BLOCK_S, D)
    m = tl.max(m_s, 0)
    w = tl.exp2(m_s - m)                     # each split's weight; 0 for the unused ones
    w = tl.where(used, w, 0.0)
    num = tl.sum(w[:, None] * o_s, 0)        # (D,)
    den = tl.sum(w * l_s, 0)
    # den = 0: no key, or every score -inf: zeros (num is 0 too, or NaN from a NaN value)
    out = num / tl.where(den == 0.0, 1.0, den)
    out = tl.where((length >= 1) & (length <= S_max), out, float("nan"))   # a broken length: NaN
    o_ptrs = o_ptr + off_b.to(tl.int64) * stride_ob + off_h.to(tl.int64) * stride_oh + offs_d * stride_od
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty))


def _check_inputs(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits) -> None:
    op = "decode_attention"
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(op, name, t)
        want = 3 if name == "q" else 4
        if t.dim() != want:
            layout = "(B, H, D)" if name == "q" else "(B, H_kv, S_max, D)"
            hint = ("; one query per sequence — for several use flash_attention"
                    if name == "q" and t.dim() == 4 else "")
            raise ValueError(f"{op}: {name} must be {want}-D {layout}, got shape {tuple(t.shape)}{hint}")
    check_same(op, q=q, k_cache=k_cache, v_cache=v_cache)
    B, H, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{op}: k_cache has shape {tuple(k_cache.shape)} but v_cache has "
                         f"{tuple(v_cache.shape)}; they must match (B, H_kv, S_max, D)")
    if k_cache.shape[0] != B:
        raise ValueError(f"{op}: q has batch B={B} but the caches have B={k_cache.shape[0]}")
    if k_cache.shape[3] != D:
        raise ValueError(f"{op}: q has head dim D={D} but the caches have D={k_cache.shape[3]}")
    check_heads(op, q, k_cache, "the caches", SUPPORTED_HEAD_DIMS)
    check_bf16_supported(op, q)
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"{op}: cache_seqlens must be a torch.Tensor of B integer lengths, got "
                        f"{type(cache_seqlens).__name__}")
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or cache_seqlens.shape != (B,):
        raise ValueError(f"{op}: cache_seqlens must be an int32 or int64 tensor of shape ({B},), one "
                         f"length per sequence; got {cache_seqlens.dtype} of shape "
                         f"{tuple(cache_seqlens.shape)}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"{op}: q is on {q.device} but cache_seqlens is on {cache_seqlens.device}")
    check_seqlen_values(op, cache_seqlens, k_cache.shape[2])
    check_sm_scale(op, sm_scale)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise ValueError(f"{op}: num_splits must be an integer ≥ 1 (or None: chosen from the shapes), "
                         f"got {num_splits!r}")


def choose_splits(B: int, H_kv: int, S_max: int, block_n: int, programs: int) -> int:
    """How many chunks each sequence's keys are cut into: enough for ``B · H_kv · splits`` to
    reach ``programs`` (about two per SM), never more than there are key tiles or
    ``MAX_SPLITS``. From the shapes only, so a CUDA graph of a decode step stays valid."""
    tiles = max(1, _tuning.cdiv(S_max, block_n))
    want = _tuning.cdiv(programs, max(1, B * H_kv))
    return max(1, min(want, tiles, MAX_SPLITS))


def split_layout(B: int, H_kv: int, S_max: int, block_n: int, num_splits: int | None = None,
                 programs: int | None = None) -> tuple[int, int]:
    """``(splits, chunk)`` as launched: ``num_splits`` (or ``choose_splits`` for ``programs``,
    default two per SM), each chunk rounded up to a whole number of ``BLOCK_N`` tiles, and the
    splits recounted from it — so the launch can have fewer splits than asked (32 768 keys in
    33 splits of 64-key tiles: chunks of 1024, 32 splits)."""
    if num_splits is None:
        programs = 2 * _tuning.sm_count() if programs is None else programs
        num_splits = choose_splits(B, H_kv, S_max, block_n, programs)
    splits = max(1, min(num_splits, MAX_SPLITS))
    chunk = _tuning.cdiv(_tuning.cdiv(max(S_max, 1), splits), block_n) * block_n   # a multiple of BLOCK_N
    return max(1, _tuning.cdiv(max(S_max, 1), chunk)), chunk


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, sm_scale: float | None = None,
                     num_splits: int | None = None) -> torch.Tensor:
    """One decoding step of attention: ``q (B, H, D)`` over ``k_cache, v_cache
    (B, H_kv, S_max, D)``, sequence ``b`` seeing its first ``cache_seqlens[b]`` keys
    (int32, or int64, shape ``(B,)``, on q's device; each in ``1..S_max``, the token
    being decoded included). H a multiple of H_kv; D a power of two from 16 to 128;
    fp16, bf16 or fp32; any strides. Returns ``(B, H, D)`` in q's dtype.

    Shapes, dtypes and devices are always checked; the lengths' values where that is
    free (CPU tensors) or with ``INFER_LIB_CHECKS=1`` — on a GPU otherwise a length
    outside ``1..S_max`` makes that sequence's output NaN. ``num_splits`` pins how many
    chunks the keys are cut into (default: from the shapes and the GPU's SM count).
    Captures in a CUDA graph.
    """
    _check_inputs(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits)
    if q.is_cuda and q.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(q.device):
            return decode_attention(q, k_cache, v_cache, cache_seqlens, sm_scale, num_splits=num_splits)
    B, H, D = q.shape
    H_kv, S_max = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if B == 0:
        return out
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)

    def launch(cfg: triton.Config):
        _launch(q, k_cache, v_cache, cache_seqlens, out, sm_scale, num_splits, cfg)

    # Tuned once per (bucketed) shape on a GPU, timing the whole step; the lengths do not matter.
    key = ("decode", _tuning.bucket(B), H_kv, H // H_kv, _tuning.bucket(S_max), D, q.dtype,
           q.device.index)
    cache_bytes = 2 * B * H_kv * S_max * D * q.element_size()
    config = _tuning.DECODE_ATTENTION.choose(
        key, launch, tune=cache_bytes >= _tuning.DECODE_ATTENTION_TUNE_MIN_BYTES,
        element_size=q.element_size(), shape={"D": D})
    launch(config)
    return out


def _launch(q, k_cache, v_cache, cache_seqlens, out, sm_scale: float, num_splits: int | None,
            cfg: triton.Config) -> None:
    """The two kernels with ``cfg``: the split kernel over ``(B · H_kv, splits)`` programs, then
    the combine over ``B · H`` (its partials are scratch, allocated per call)."""
    B, H, D = q.shape
    H_kv, S_max = k_cache.shape[1], k_cache.shape[2]
    group = H // H_kv
    block_n = cfg.kwargs["BLOCK_N"]
    splits, chunk = split_layout(B, H_kv, S_max, block_n, num_splits)
    o_part = torch.empty((B * H * splits, D), device=q.device, dtype=torch.float32)
    m_part = torch.empty((B * H * splits,), device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    fp32 = q.dtype == torch.float32
    _decode_attention_kernel[(B * H_kv, splits)](
        q, k_cache, v_cache, cache_seqlens, o_part, m_part, l_part, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        *k_cache.stride(), *v_cache.stride(),
        H_kv, group, S_max, chunk, splits,
        HEAD_DIM=D, BLOCK_G=max(16, _tuning.bucket(group)), BLOCK_N=block_n,
        UPCAST=device.INTERPRET, DOT_PRECISION="ieee" if (fp32 or device.INTERPRET) else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _decode_combine_kernel[(B * H,)](
        o_part, m_part, l_part, cache_seqlens, out,
        out.stride(0), out.stride(1), out.stride(2),
        H, S_max, chunk, splits,
        HEAD_DIM=D, BLOCK_S=_tuning.bucket(splits), num_warps=4)
