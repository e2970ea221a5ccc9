"""Int8 weight-only matrix multiplication for decoding: ``c = a @ (w_q · scales)``.

Notation as in ``matmul_kernel.py``: ``a (M, K)`` holds the activations of ``M``
tokens (fp16, bf16 or fp32), the weight ``w (K, N)`` is stored as ``w_q (K, N)``
int8 and one fp32 scale per output column, ``scales (N,)``, and

    c[m, n] = Σ_k a[m, k] · (w_q[k, n] · s[n]) = s[n] · Σ_k a[m, k] · w_q[k, n].

The scale of a column is a common factor of its whole sum, so the kernel sums
``a · w_q`` (the int8 values converted to ``a``'s type in registers: exact, fp16
and bf16 hold every integer up to ±256) in fp32 and multiplies each accumulated
output element by its column's scale once, at the end — not each weight as it
is loaded.

Why this helps. A decoding step multiplies a few tokens (``M`` = 1 to 64) by
every weight matrix of the model: at most ``M`` FLOPs per byte of a 16-bit
weight, far below any GPU's balance, so the time is the time to stream the
weights from HBM (``matmul_splitk_kernel.py`` says why and how). Stored in int8
they are half the bytes: ``K·N`` bytes of ``w_q`` plus ``4·N`` of scales instead
of ``2·K·N`` in bf16 — 64 MiB + 32 KiB instead of 128 MiB for ``K = N = 8192`` —
so a memory-bound step can take about half the time. Only the weights are
quantised; activations stay in 16-bit ("weight-only", W8A16), and the arithmetic
is the usual 16-bit ``tl.dot`` with fp32 accumulation.

Quantisation (``quantize_int8``): symmetric and per output channel. Each column
``n`` (the weights that produce output feature ``n``) gets ``s[n] = max_k
|w[k, n]| / 127`` and ``w_q = round(w / s)``, so the largest weight of a column
maps to ±127 and every weight comes back to within ``s[n] / 2`` of itself.
Per column rather than one scale for the whole matrix, because columns differ
in range: with one scale a column of small weights would use only a few of the
255 levels. Symmetric (no zero point) because weights are centred on zero, and
a zero point would add a term ``z[n] · Σ_k a[m, k]`` to every output. A column
of zeros gets the scale 1 (any positive number would do: its ``w_q`` is 0); a
NaN or ±inf weight is refused, since it would become its column's scale and
turn every weight of that column into NaN or 0.

Structure: the split-K kernel's. The grid is (column tiles, K slices, row tiles);
program ``(n, s, m)`` streams a disjoint ``K_SPLIT × BLOCK_N`` slab of ``w_q``
(``BLOCK_K`` rows a step, ``num_stages`` steps in flight), so the whole grid reads
every weight once. Its fp32 partial product is added to the others of its tile
in one launch: every program writes its partial, increments the tile's counter
(acquire-release), and the one that brings it to ``SPLIT_K`` sums the partials
in slice order (deterministic), scales, writes ``c`` in ``a``'s dtype and resets
the counter. Without a split (``SPLIT_K = 1``) a program scales and writes its
own tile. ``M`` larger than a row tile runs more row tiles, each streaming the
weights again (correct for any ``M``; the configurations are chosen for
``M ≤ 64``, where the weights dominate).

Memory traffic: ``w_q`` read once (``K·N`` bytes, the whole cost at decode
shapes), ``scales`` (``4·N`` bytes) once from HBM and again from L2 by each
row tile and slice, ``a`` once per column tile (``M·K`` elements, from L2 after
the first), ``c`` written once, and with a split the fp32 partials
(``SPLIT_K·M·N``) written and read once, from L2. No dequantised copy of the
weights is ever written: ``a @ (w_q.to(bf16) * scales)`` in PyTorch would write
and read one (``2·K·N`` bytes each way), more than the bf16 product it was
meant to beat.

The tiles: ``BLOCK_M`` rows (at least 16, what ``tl.dot`` needs; rows past ``M``
wrap back into range with ``% M`` and are dropped at the store), ``BLOCK_N``
columns, ``BLOCK_K`` deep steps. Which ones, and how many slices, is
``_tuning.INT8_MATMUL``'s choice: on a GPU the launcher times the candidates of
the GPU's architecture class once per bucketed shape; the interpreter runs one
fixed configuration.

NaN and ±inf in ``a`` propagate as in ``torch.matmul`` of the dequantised matrix
(``int8_matmul_ref``): padding past ``K`` loads zeros in both operands, and rows
and columns past the edge wrap back into range and are dropped at the store, as
in ``matmul``. One difference of range, not of kind: products are summed
before the scale is applied, so a sum of ``|a|·127`` beyond the fp32 range (only
bf16 or fp32 inputs above about ``3·10^36 / K`` can get there) is ±inf where
the reference, scaling first, may stay finite. Scales are checked where reading
them is free (CPU tensors, or with ``INFER_LIB_CHECKS=1``; on a GPU the check
would cost a host synchronisation every step and cannot run inside a CUDA
graph); otherwise a scale that is not a finite positive number makes its
column NaN — never a plausible answer.

References:
- T. Dettmers, M. Lewis, Y. Belkada, L. Zettlemoyer, "LLM.int8(): 8-bit Matrix
  Multiplication for Transformers at Scale" (2022), https://arxiv.org/abs/2208.07339
  — vector-wise int8 quantisation of weights and activations, and the outlier
  features of large models' activations that make quantising activations hard
  and weights alone the simple, safe case.
- PyTorch gpt-fast, ``quantize.py`` (``WeightOnlyInt8QuantHandler``,
  ``WeightOnlyInt8Linear``): per-channel symmetric int8 weights, the product
  taken in the activations' dtype and multiplied by the scales afterwards;
  https://github.com/pytorch-labs/gpt-fast.
- A. Hoque, L. Wright, C.-C. Yang, M. Srivatsa, R. Ganti, "Accelerating a
  Triton Fused Kernel for W4A16 Quantized Inference with SplitK Work
  Decomposition" (2024), https://arxiv.org/abs/2402.00025 — the split-K
  decomposition of a dequantising Triton kernel for skinny (decode) products.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_bf16_supported, check_int8_matmul_operands, check_int8_scale_values, check_tensor
from .matmul_kernel import _kernel_flags
from .matmul_splitk_kernel import _tile_counters


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a weight ``w (K, N)`` (fp16, bf16 or fp32) to int8, symmetrically per output
    column: returns ``(w_q, scales)``, ``w_q (K, N)`` int8 in ``[-127, 127]`` and ``scales (N,)``
    fp32 with ``scales[n] = max_k |w[k, n]| / 127``, so that ``|w - w_q · scales| ≤ scales / 2``.
    A column of zeros gets the scale 1 (its ``w_q`` is 0). Plain PyTorch, on ``w``'s device:
    it runs once per model. NaN and ±inf are refused (they would poison a column's scale)."""
    check_tensor("quantize_int8", "w", w, ndim=2, any_device=True)
    finite = w.isfinite()
    if not bool(finite.all()):
        k, n = (~finite).nonzero()[0].tolist()
        raise ValueError(f"quantize_int8: w holds {int((~finite).sum())} non-finite value(s) (NaN or ±inf), "
                         f"the first at w[{k}, {n}] = {w[k, n].item()}; it would become the scale of column "
                         f"{n} (its largest |w| / 127) and every weight of that column would dequantise to "
                         "NaN or 0 — fix or drop such weights before quantising")
    w32 = w.detach().float()
    amax = w32.abs().amax(dim=0) if w.shape[0] > 0 else w32.new_zeros(w.shape[1])
    # 0 for a column of zeros (or one so tiny that amax / 127 underflows): any positive
    # scale gives w_q = 0 there, and 1 keeps every scale a finite positive number.
    scales = amax / 127
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    w_q = torch.round(w32 / scales).clamp_(-127, 127).to(torch.int8)
    return w_q, scales


def int8_matmul_ref(a: torch.Tensor, w_q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference: the weights dequantised in fp32 (``w_q · scales``, column by
    column), the product in fp32, cast back to ``a``'s dtype."""
    return (a.float() @ (w_q.float() * scales)).to(a.dtype)


# ----------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------

# M is the number of tokens: not specialised, so a new batch size does not recompile.
# K_SPLIT is (a multiple of BLOCK_K, so Triton knows each slice's start is aligned
# to 16 and can vectorise the loads along K; matmul_splitk_kernel.py measured why).
@triton.jit(do_not_specialize=["M"])
def _int8_matmul_kernel(
    a_ptr, w_ptr, scale_ptr, c_ptr, partial_ptr, count_ptr,
    M, N, K, K_SPLIT,
    stride_am, stride_ak,
    stride_wk, stride_wn,
    stride_s,
    stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    UPCAST: tl.constexpr,           # interpreter only: fp32 operands for tl.dot
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32"; matters for fp32 activations only
):
    # Grid: (column tiles, K slices, row tiles). Programs of one column tile run
    # side by side, so they share the slab of a in L2.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = (offs_m % M).to(tl.int64)                   # wrapped: loads stay in bounds
    offs_wn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_k * K_SPLIT                             # this program's slice of K
    k_end = tl.minimum(k_start + K_SPLIT, K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + (k_start + offs_k)[None, :].to(tl.int64) * stride_ak
    w_ptrs = w_ptr + (k_start + offs_k)[:, None].to(tl.int64) * stride_wk + offs_wn[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        # w_q streams from HBM exactly once over the whole grid, one byte a weight: the cost.
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_end - k, other=0.0)   # (BLOCK_M, BLOCK_K)
        w = tl.load(w_ptrs, mask=offs_k[:, None] < k_end - k, other=0)     # (BLOCK_K, BLOCK_N) int8
        if UPCAST:
            # Triton's CPU interpreter returns garbage for tl.dot on bf16 operands
            # (triton 3.7.1, 2026-11-26: https://github.com/triton-lang/triton/issues/11584).
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        else:
            w = w.to(a_ptr.dtype.element_ty)   # dequantised in registers: exact, |w_q| ≤ 127
        acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk

    # One scale per column, applied once to the summed tile. A scale that is not a finite
    # positive number (unchecked on a GPU without INFER_LIB_CHECKS=1) makes its column NaN.
    s = tl.load(scale_ptr + offs_wn * stride_s)                               # (BLOCK_N,) fp32
    s = tl.where((s > 0) & (s < float("inf")), s, float("nan"))

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n.to(tl.int64)[None, :] * stride_cn
    if SPLIT_K == 1:
        tl.store(c_ptrs, (acc * s[None, :]).to(c_ptr.dtype.element_ty), mask=mask)
    else:
        # Partials are (SPLIT_K, M, N) fp32, contiguous.
        tile = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]          # (BLOCK_M, BLOCK_N)
        tl.store(partial_ptr + pid_k.to(tl.int64) * M * N + tile, acc, mask=mask)
        # acq_rel: our partial is visible to whoever sees the count, and we see theirs.
        counter = count_ptr + pid_m * tl.num_programs(0) + pid_n
        done = tl.atomic_add(counter, 1, sem="acq_rel")
        if done == SPLIT_K - 1:
            # The last program of this tile: add the partials in slice order (deterministic).
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for i in range(SPLIT_K):
                total += tl.load(partial_ptr + i * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(c_ptrs, (total * s[None, :]).to(c_ptr.dtype.element_ty), mask=mask)  # c written once
            tl.atomic_xchg(counter, 0)                                       # ready for the next call


# ----------------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------------

def _tuning_key(M: int, N: int, K: int, dtype: torch.dtype, index, precision: str) -> tuple:
    return ("int8", _tuning.bucket(M), N, K, dtype, index, precision)


def _launch(a: torch.Tensor, w_q: torch.Tensor, scales: torch.Tensor, c: torch.Tensor,
            cfg: triton.Config) -> None:
    """Run the kernel with ``cfg`` on checked, non-empty operands, writing ``c``."""
    (M, K), N = a.shape, w_q.shape[1]
    bm, bn, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
    split = max(1, min(cfg.kwargs["SPLIT_K"], _tuning.cdiv(K, bk), _tuning.MAX_GRID_YZ))   # no empty slices
    k_split = _tuning.cdiv(_tuning.cdiv(K, split), bk) * bk              # a multiple of BLOCK_K
    split = _tuning.cdiv(K, k_split)
    flags = _kernel_flags(a.dtype)
    # The row tiles are the grid's third dimension (at most MAX_GRID_YZ): more rows than
    # that many tiles hold run as several launches, one after the other on the stream.
    rows = _tuning.MAX_GRID_YZ * bm
    for r in range(0, M, rows):
        a_r, c_r = a[r:r + rows], c[r:r + rows]
        m = a_r.shape[0]
        grid = (_tuning.cdiv(N, bn), split, _tuning.cdiv(m, bm))
        partial = torch.empty((split, m, N), device=a.device, dtype=torch.float32) if split > 1 else c_r
        counters = _tile_counters(a.device, grid[0] * grid[2])
        _int8_matmul_kernel[grid](
            a_r, w_q, scales, c_r, partial, counters, m, N, K, k_split,
            a_r.stride(0), a_r.stride(1), w_q.stride(0), w_q.stride(1), scales.stride(0),
            c_r.stride(0), c_r.stride(1),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, **flags,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def best_config(a: torch.Tensor, w_q: torch.Tensor) -> triton.Config | None:
    """The configuration the tuner picked for ``int8_matmul(a, w_q, ...)`` with these shapes and
    dtype, or None if it has not tuned it (CPU interpreter, small problems, or not called yet)."""
    (M, K), (_, N) = a.shape, w_q.shape
    key = _tuning_key(M, N, K, a.dtype, a.device.index, _kernel_flags(a.dtype)["INPUT_PRECISION"])
    return _tuning.INT8_MATMUL.cache.get(key)


def int8_matmul(a: torch.Tensor, w_q: torch.Tensor, scales: torch.Tensor, *,
                config: triton.Config | None = None) -> torch.Tensor:
    """``a @ (w_q · scales)`` for ``a (M, K)`` (fp16, bf16 or fp32), ``w_q (K, N)`` int8 and
    ``scales (N,)`` fp32 — what ``quantize_int8(w)`` returns — on one device; any strides.
    Returns ``(M, N)`` in ``a``'s dtype. Made for decode shapes (``M ≤ 64``: the int8 weights
    are streamed once, half the bytes of bf16 ones); correct for any ``M``.

    Shapes, dtypes and devices are always checked; the scales' values (finite, positive)
    where that is free (CPU tensors) or with ``INFER_LIB_CHECKS=1`` — on a GPU otherwise a
    bad scale makes its column NaN. ``config`` pins a ``triton.Config`` with ``BLOCK_M``,
    ``BLOCK_N``, ``BLOCK_K`` (powers of two, at least 16) and ``SPLIT_K`` (≥ 1), plus
    ``num_warps`` and ``num_stages``. Launches on one stream at a time per device (the tile
    counters are shared with ``matmul_splitk``). Inputs that require grad raise while grad mode
    is on; call it under ``torch.no_grad()``.
    """
    M, K, N = check_int8_matmul_operands("int8_matmul", a, w_q, scales)
    if a.is_cuda and a.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(a.device):
            return int8_matmul(a, w_q, scales, config=config)
    check_bf16_supported("int8_matmul", a)
    if config is not None:
        _tuning.check_config("int8_matmul", config, _tuning.INT8_BLOCKS, _tuning.INT8_COUNTS)
    check_int8_scale_values("int8_matmul", scales)
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()  # an empty sum
    if config is None:
        config = _tuning.INT8_MATMUL.choose(
            _tuning_key(M, N, K, a.dtype, a.device.index, _kernel_flags(a.dtype)["INPUT_PRECISION"]),
            lambda cfg: _launch(a, w_q, scales, c, cfg),
            tune=M * N * K >= _tuning.MATMUL_TUNE_MIN_WORK,
            element_size=a.element_size(), shape={"M": M, "N": N, "K": K})
    _launch(a, w_q, scales, c, config)
    return c
