"""FlashAttention forward: ``softmax(Q Kᵀ · sm_scale) V`` without writing the scores to HBM.

Math: ``q (B, H, S_q, D)``, ``k, v (B, H_kv, S_k, D)``, query head
``h`` reads key/value head ``h // (H // H_kv)`` (GQA; MQA is ``H_kv = 1``).
``sm_scale`` defaults to ``1/√D``. With ``causal=True`` query ``i`` sees keys
``j ≤ i + S_k − S_q`` (aligned bottom-right, as FlashAttention does; SDPA's
``is_causal`` when ``S_q = S_k``). A query that sees no key returns zeros.
The fp32 reference is ``flash_attention_ref`` below.

Algorithm (FlashAttention-2, Dao 2023). One program owns a tile of
``BLOCK_M`` queries of one (batch, head) and keeps it on chip. It streams the
keys and values in tiles of ``BLOCK_N`` through SRAM and, for each tile,

    s     = q kᵀ · sm_scale                     (BLOCK_M, BLOCK_N), on chip only
    m_new = max(m, rowmax(s))                   running row maximum
    p     = exp(s − m_new)
    l     = l · exp(m − m_new) + rowsum(p)      running softmax denominator
    acc   = acc · exp(m − m_new) + p v          running, un-normalised output
    m     = m_new

and writes ``acc / l`` once at the end. This is the online softmax of
``softmax_kernel.py`` applied to attention: the ``S_q × S_k`` score matrix exists only
tile by tile, in registers. ``exp`` is computed as ``exp2`` with
``sm_scale · log2(e)`` folded into one multiply (``exp(x) = 2^(x·log2 e)``;
``ex2`` is the GPU's native instruction). ``m``, ``l`` and ``acc`` are fp32; the
two matmuls run on the tensor cores with 16-bit operands and fp32 accumulation.

Causal masking skips work instead of masking it: a query tile stops at the last
key its last row may see (keys beyond it are never loaded), and only the key
tiles that straddle the diagonal — or the end of the sequence — are masked
element by element. All other tiles run a mask-free loop.

The grid is one-dimensional: ``B · H · ⌈S_q / BLOCK_M⌉`` programs, the query
tiles of one (batch, head) numbered consecutively. CUDA allows 2³¹ − 1 programs
along the first grid dimension but only 65 535 along the other two, and a decode
batch has ``B · H = 2048 · 32 = 65 536`` heads.

NaN and ±inf behave as in ``torch.nn.functional.scaled_dot_product_attention``
(its math backend, which defines the operation), through IEEE arithmetic on
the running ``m`` and ``l``:

* a NaN in a query, or in a key it sees, makes that query's output NaN; a NaN
  in a value it sees makes that column of its output NaN;
* a score of ``+inf`` (an infinite key) makes the query's output NaN
  (``exp(inf − inf)``); a score of ``−inf`` gives that key probability 0;
* a query whose every visible score is ``−inf`` returns zeros (SDPA's
  ``_safe_softmax``, PyTorch ≥ 2.5), and so does a query that sees no key.

Where this differs from SDPA, on purpose: **a key that the causal mask hides
from a query does not reach it**. SDPA's math backend adds the mask to the
scores as ``−inf`` (NaN + −inf = NaN) and multiplies the hidden keys' zero
probabilities by ``v`` (0 · NaN = NaN), so a NaN or inf anywhere in ``k`` or ``v``
spreads to every query. Here hidden keys beyond a query tile's last visible key
are never even loaded. One residue: a NaN or ±inf in the *value* of a hidden key
inside a diagonal tile that a later query of the same tile sees still reaches
the query as NaN (p = 0 there, and 0 · NaN = NaN in ``p v``) — never as a wrong
finite number. Removing it would cost tile-sized work in every diagonal tile.

Memory traffic: reads q once, k and v once per query tile (from L2 when the
tiles of one head run together, from HBM otherwise), writes the output once;
nothing of size ``S_q × S_k`` ever touches HBM. Naive attention writes and
reads the score matrix several times (``infer_lib.reference.naive_attention``).

References: T. Dao et al., "FlashAttention" (2022), https://arxiv.org/abs/2205.14135;
T. Dao, "FlashAttention-2" (2023), https://arxiv.org/abs/2307.08691; Triton
tutorial 06 "Fused attention"
(https://triton-lang.org/main/getting-started/tutorials/06-fused-attention.html).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import device
from ..reference import attention_ref
from . import _tuning
from ._checks import check_bf16_supported, check_heads, check_same, check_sm_scale, check_tensor

#: log2(e): exp(x) = exp2(x · LOG2E)
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
#: CUDA's limit on the first grid dimension (the others stop at ``_tuning.MAX_GRID_YZ``)
MAX_PROGRAMS = 2**31 - 1


def flash_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        sm_scale: float | None = None) -> torch.Tensor:
    """What ``flash_attention`` computes, in plain PyTorch (fp32 inside, cast back to q's dtype).

    ``infer_lib.reference.attention_ref``: the bottom-right causal mask, GQA by
    indexing, zeros for a query that sees no key, and NaN/±inf as in the module
    docstring — SDPA's math backend applied to the keys each query sees.
    """
    return attention_ref(q, k, v, causal=causal, sm_scale=sm_scale)


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                    offs_m, offs_n, start, end, qk_scale, S_k, diag,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, IS_CAUSAL: tl.constexpr,
                    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # Key tiles [start, end) in steps of BLOCK_N. MASKED tiles check the end of
    # the sequence and the causal diagonal; the others need no mask at all.
    k_ptrs += start * stride_kn
    v_ptrs += start * stride_vn
    for start_n in range(start, end, BLOCK_N):
        cols = start_n + offs_n                                   # key positions (BLOCK_N,)
        if MASKED:
            # Keys from `end` on (past S_k, or past the tile's last visible key)
            # read as 0: a NaN stored there must not reach p v as 0 · NaN.
            k = tl.load(k_ptrs, mask=cols[:, None] < end, other=0.0)
        else:
            k = tl.load(k_ptrs)                                   # (BLOCK_N, D), SRAM
        if UPCAST:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
        if MASKED:
            visible = cols[None, :] < S_k
            if IS_CAUSAL:
                visible = visible & (cols[None, :] <= offs_m[:, None] + diag)
            s = tl.where(visible, s, float("-inf"))
        # Online softmax in base 2: scores scaled by sm_scale·log2(e) (> 0, so
        # the max of the scaled scores is the scaled max).
        # m starts at the most negative finite float, not -inf: a row whose
        # scores so far are all -inf (masked, or from an infinite key) keeps
        # that finite m, so p and alpha are exp2(-inf) = 0 and exp2(0) = 1
        # rather than exp2(-inf - (-inf)) = NaN, with no test in the loop.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])                # (BLOCK_M, BLOCK_N)
        alpha = tl.exp2(m_i - m_new)                              # rescales the old l and acc
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASKED:
            v = tl.load(v_ptrs, mask=cols[:, None] < end, other=0.0)
        else:
            v = tl.load(v_ptrs)                                   # (BLOCK_N, D)
        if UPCAST:
            acc = tl.dot(p, v.to(tl.float32), acc, input_precision=DOT_PRECISION)
        else:
            # p rounded to v's 16-bit type: tensor-core operands, fp32 accumulate
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


# S_q and S_k are not specialised: Triton would otherwise compile a separate
# kernel for a length of 1, and ptxas crashes (SIGSEGV) on that variant
# (triton 3.6, H100, seen 2026-11-26 with S_q = 33, S_k = 1).
@triton.jit(do_not_specialize=["S_q", "S_k"])
def _flash_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, GROUP, S_q, S_k,
    HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Grid: B·H·⌈S_q/BLOCK_M⌉ programs along one dimension. Consecutive programs
    # take consecutive query tiles of one (batch, head), so the K/V tiles they all
    # read come from L2 after the first. With causal masking the last query tiles
    # of a head do the most work: they run first (a shorter tail).
    n_tiles_m = tl.cdiv(S_q, BLOCK_M)
    pid = tl.program_id(0)
    pid_bh = pid // n_tiles_m
    pid_m = pid % n_tiles_m
    if IS_CAUSAL:
        pid_m = n_tiles_m - 1 - pid_m
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP                        # GQA/MQA: shared K/V head, not a copy

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = (q_ptr + off_b * stride_qb + off_h * stride_qh
              + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd)
    k_ptrs = (k_ptr + off_b * stride_kb + off_hkv * stride_kh
              + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd)
    v_ptrs = (v_ptr + off_b * stride_vb + off_hkv * stride_vh
              + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd)

    # The q tile stays in registers for the whole loop: read once from HBM.
    q = tl.load(q_ptrs, mask=offs_m[:, None] < S_q, other=0.0)   # (BLOCK_M, D)
    if UPCAST:
        # The interpreter's tl.dot returns garbage for bf16 operands (triton
        # 3.7.1, 2026-11-26, https://github.com/triton-lang/triton/issues/11584):
        # on the CPU, run both matmuls in fp32.
        q = q.to(tl.float32)
    # running max (base-2 units), from -FLT_MAX: every finite score is >= it, so it
    # only stays there while a row has seen nothing but -inf (see the loop)
    m_i = tl.full([BLOCK_M], -3.4028234663852886e38, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)                         # running sum
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)               # running output

    if IS_CAUSAL:
        diag = S_k - S_q                  # query i sees keys j <= i + diag (bottom-right)
        first_row = pid_m * BLOCK_M
        # keys [0, full_end) are visible to every row of the tile: no mask needed
        full_end = tl.minimum(tl.maximum(first_row + diag + 1, 0), S_k)
        full_end = (full_end // BLOCK_N) * BLOCK_N
        # keys at or beyond `end` are visible to no row of the tile: never loaded
        end = tl.minimum(tl.maximum(first_row + BLOCK_M + diag, 0), S_k)
    else:
        diag = 0
        full_end = (S_k // BLOCK_N) * BLOCK_N
        end = S_k
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                    offs_m, offs_n, 0, full_end, qk_scale, S_k, diag,
                                    BLOCK_N, False, IS_CAUSAL, UPCAST, DOT_PRECISION)
    # the diagonal tiles and the ragged last tile: masked element by element
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                                    offs_m, offs_n, full_end, end, qk_scale, S_k, diag,
                                    BLOCK_N, True, IS_CAUSAL, UPCAST, DOT_PRECISION)

    # Normalise once. l = 0 where every visible score was -inf: acc is 0 there
    # too (or NaN from a NaN value, as in SDPA), and 0 / 1 gives zeros.
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if IS_CAUSAL:
        # A query that sees no key (S_q > S_k) returns zeros by definition. Its
        # acc may hold NaN from a value it does not see (p = 0 in a diagonal tile,
        # and 0 · NaN = NaN), so set it rather than trust l = 0. Per row: free.
        acc = tl.where((offs_m + diag >= 0)[:, None], acc, 0.0)
    o_ptrs = (o_ptr + off_b * stride_ob + off_h * stride_oh
              + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < S_q)  # written once


def _check_inputs(q, k, v, sm_scale) -> None:
    op = "flash_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(op, name, t)
    check_same(op, q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            layout = "(B, H, S_q, D)" if name == "q" else "(B, H_kv, S_k, D)"
            raise ValueError(f"{op}: {name} must be 4-D {layout}, got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k has shape {tuple(k.shape)} but v has shape {tuple(v.shape)}; "
                         "they must match (B, H_kv, S_k, D)")
    B, H, _, D = q.shape
    if k.shape[0] != B:
        raise ValueError(f"{op}: q has batch B={B} but k and v have B={k.shape[0]}")
    if k.shape[3] != D:
        raise ValueError(f"{op}: q has head dim D={D} but k and v have D={k.shape[3]}")
    check_heads(op, q, k, "k and v", SUPPORTED_HEAD_DIMS)
    check_bf16_supported(op, q)
    check_sm_scale(op, sm_scale)


def _grid(B: int, H: int, S_q: int, block_m: int) -> tuple[int]:
    """One program per (batch, head, query tile), all along the first grid dimension."""
    programs = B * H * _tuning.cdiv(S_q, block_m)
    if programs > MAX_PROGRAMS:
        raise ValueError(f"flash_attention: B·H·⌈S_q/BLOCK_M⌉ = {B}·{H}·⌈{S_q}/{block_m}⌉ = {programs} "
                         f"programs exceed CUDA's grid limit of 2**31 − 1; split the batch")
    return (programs,)


def _tuning_key(q: torch.Tensor, S_k: int, causal: bool) -> tuple:
    # Prompt lengths change with every request: bucketed to powers of two.
    B, H, S_q, D = q.shape
    return (_tuning.bucket(S_q), _tuning.bucket(S_k), D, bool(causal), q.dtype, q.device.index)


def _launch(q, k, v, out, causal: bool, sm_scale: float, config: triton.Config | None = None):
    """Run the kernel with ``config``, or with the tuned (large 16-bit problems on a GPU) or
    fixed configuration when it is None. Returns what Triton's launch returns (on a GPU the
    compiled kernel, whose ``n_regs`` and ``n_spills`` ``tools/tune_attention.py`` prints)."""
    B, H, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    fp32 = q.dtype == torch.float32
    args = (q, k, v, out, sm_scale * LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            H, H // H_kv, S_q, S_k)
    meta = dict(HEAD_DIM=D, IS_CAUSAL=bool(causal), UPCAST=device.INTERPRET,
                # fp32 inputs: exact fp32 products, not TF32 (ignored for 16-bit operands)
                DOT_PRECISION="ieee" if (fp32 or device.INTERPRET) else "tf32")

    def run(cfg: triton.Config):
        grid = _grid(B, H, S_q, cfg.kwargs["BLOCK_M"])
        return _flash_attention_kernel[grid](*args, **meta, **cfg.kwargs,
                                             num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    if config is None:
        configs = _tuning.FLASH_ATTENTION_FP32 if fp32 else _tuning.FLASH_ATTENTION
        config = configs.choose(_tuning_key(q, S_k, causal), run,
                                tune=not fp32 and S_q * S_k >= _tuning.FLASH_ATTENTION_TUNE_MIN_SCORES,
                                element_size=q.element_size(), shape={"D": D})
    return run(config)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    sm_scale: float | None = None) -> torch.Tensor:
    """Attention ``softmax(q kᵀ · sm_scale) v`` with the FlashAttention-2 forward kernel.

    q (B, H, S_q, D); k, v (B, H_kv, S_k, D) with H a multiple of H_kv; D a power
    of two from 16 to 128; fp16, bf16 or fp32; any strides. ``causal`` masks
    bottom-right (query i sees keys j ≤ i + S_k − S_q); a query that sees no key
    returns zeros. ``sm_scale`` (a finite positive number) defaults to 1/√D.
    NaN and ±inf propagate as in SDPA (module docstring). Returns (B, H, S_q, D)
    in q's dtype.
    """
    _check_inputs(q, k, v, sm_scale)
    if q.is_cuda and q.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(q.device):
            return flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    B, H, S_q, D = q.shape
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    out = torch.empty((B, H, S_q, D), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if k.shape[2] == 0:   # no keys at all: every query sees nothing
        return out.zero_()
    _launch(q, k, v, out, causal, sm_scale)
    return out
