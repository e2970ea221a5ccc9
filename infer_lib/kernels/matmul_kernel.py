"""Tiled matrix multiplication ``c = a @ b`` — the kernel of chapter 3.

Notation: ``a`` is ``(M, K)``, ``b`` is ``(K, N)``, ``c`` is ``(M, N)``;
``c[m, n] = Σ_k a[m, k] · b[k, n]``, ``2·M·N·K`` FLOPs (one multiply and one
add per term).

Why tiles. Computed one output element at a time, every ``c[m, n]`` reads a
whole row of ``a`` and a whole column of ``b`` from HBM: ``2·M·N·K`` element
reads for ``2·M·N·K`` FLOPs, an arithmetic intensity of half a FLOP per
element, hopeless on any GPU. Here each program owns a ``BLOCK_M × BLOCK_N``
tile of ``c`` and walks ``K`` in steps of ``BLOCK_K``: at each step it loads a
``BLOCK_M × BLOCK_K`` slab of ``a`` and a ``BLOCK_K × BLOCK_N`` slab of ``b``
into on-chip memory (shared memory and registers) and multiplies them on the
tensor cores (``tl.dot``), keeping the ``BLOCK_M × BLOCK_N`` partial sums in
registers. Every loaded element of ``a`` is used ``BLOCK_N`` times and every
element of ``b`` ``BLOCK_M`` times, so the whole product reads

    (M/BLOCK_M)·(N/BLOCK_N)·(BLOCK_M·K + K·BLOCK_N) = M·N·K·(1/BLOCK_N + 1/BLOCK_M)

elements instead of ``2·M·N·K``: a 128×256 tile cuts the traffic 171-fold.
Per ``K`` step a tile does ``2·BLOCK_M·BLOCK_N·BLOCK_K`` FLOPs on
``(BLOCK_M + BLOCK_N)·BLOCK_K`` loaded elements, an intensity of
``2·BLOCK_M·BLOCK_N / ((BLOCK_M + BLOCK_N)·bytes)`` FLOP/byte — 85 for
128×256 in bf16. That is below an H100's machine balance (≈ 295 FLOP/byte from
HBM), so tiling alone is not enough: the rest comes from the L2 cache.

Grouped ordering for L2 reuse. Programs that run at the same time should share
their slabs so that most loads hit L2 (50 MB on an H100) instead of HBM.
Numbering tiles row by row, the first wave of programs covers one or two rows
of tiles and needs all of ``b``. We instead number them in groups of
``GROUP_M`` rows of tiles, column by column inside a group, so a wave touches
``GROUP_M`` slabs of ``a`` and a few slabs of ``b`` and reuses each many times
(Triton tutorial 03 draws it).

Precision. Products accumulate in fp32 whatever the input type (fp16/bf16 on
the tensor cores, fp32 too) and are rounded once, at the store, to the output
type (= the input type). fp32 inputs follow PyTorch's
``torch.get_float32_matmul_precision()``: ``"highest"`` (PyTorch's default)
runs exact fp32 (``input_precision="ieee"``, on the CUDA cores, slow), anything
else allows TF32 tensor cores (10-bit mantissa inputs, ~1e-3 relative error),
as ``torch.matmul`` does.

Memory traffic. The minimum is ``(M·K + K·N)`` input elements read once and
``M·N`` output elements written once; the kernel writes ``c`` exactly once and
reads ``a`` and ``b`` as often as the tiling and L2 above allow.

Tails. ``M``, ``N`` and ``K`` need not be multiples of the tile: rows and
columns past the edge are wrapped back into range for the loads (``% M``,
``% N``: valid addresses, results discarded) and masked at the store; the last
``K`` step loads zeros past ``K`` in both ``a`` and ``b``. No padding ever meets
a real value in a product, so NaN and ±inf propagate exactly as in
``torch.matmul`` (``inf·0`` and ``inf − inf`` are NaN, a sum too large for the
output type rounds to ±inf) and a finite result stays finite.

Tuning. Which tile is fastest depends on the GPU and the shape, so on a GPU
the launcher times the configurations listed for the GPU's architecture class
in ``_tuning.py`` (``_tuning.MATMUL``) the first time it sees a shape, and
keeps the fastest for every shape of the same bucket (``M`` rounded up to a
power of two, ``N`` and ``K`` exact); configurations whose pipeline buffers do
not fit the device's shared memory, or whose tiles are far larger than the
problem, are pruned first. Without tuning — in Triton's CPU interpreter, for
problems too small to be worth timing, or when the caller passes ``config=`` —
one fixed configuration runs, so results are deterministic.

References:
- Triton tutorial 03 "Matrix multiplication"
  (https://triton-lang.org/main/getting-started/tutorials/03-matrix-multiplication.html).
- NVIDIA CUTLASS, "Efficient GEMM in CUDA" (the tiling hierarchy: thread block
  tile, warp tile, instruction tile; https://github.com/NVIDIA/cutlass/blob/main/media/docs/cpp/efficient_gemm.md).
- NVIDIA Hopper Tuning Guide (228 KB of shared memory per SM, 227 KB per block;
  https://docs.nvidia.com/cuda/hopper-tuning-guide/index.html) and the Hopper
  whitepaper on wgmma, the warpgroup-wide tensor-core instruction Triton emits
  for ``tl.dot`` on sm_90.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import device
from . import _tuning
from ._checks import check_bf16_supported, check_matmul_operands


def matmul_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch reference: the product computed in fp32, cast back to the input type."""
    return (a.float() @ b.float()).to(a.dtype)


# ----------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------

# M (the number of tokens) is not specialised: Triton would otherwise compile a
# separate kernel for M = 1 and for M a multiple of 16, a recompile as the batch changes.
@triton.jit(do_not_specialize=["M"])
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,           # interpreter only: fp32 operands for tl.dot
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32"; matters for fp32 inputs only
):
    # Grouped ordering: program ids run down GROUP_M rows of tiles, then across,
    # so programs in flight together share slabs of a and b in L2.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # A group never spans more rows of tiles than there are. Without the clamp a
    # huge GROUP_M (2**30, say) overflows GROUP_M * num_pid_n in int32 and whole
    # tiles of c are never written; with it the product is at most the grid size.
    group_m = min(num_pid_m, GROUP_M)
    num_pid_in_group = group_m * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * group_m
    group_size_m = min(num_pid_m - first_pid_m, group_m)  # the last group may be short
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # Rows and columns past the edge wrap around (% M, % N): their loads stay in
    # bounds and their results are dropped by the store mask. Row i of the tile
    # only ever feeds row i of acc, so an inf or NaN pulled into a wrapped row
    # never reaches a stored element. int64 so that offsets into matrices of more
    # than 2**31 elements do not overflow.
    offs_am = ((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M).to(tl.int64)
    offs_bn = ((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak  # (BM, BK)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn  # (BK, BN)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # stays in registers for the whole loop
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        # One slab of a and one of b per step. Past K both slabs load zeros, so the
        # padding adds 0·0 = 0 to the sum. Masking one operand only would be wrong:
        # a padded 0 times an inf or NaN that the other one loaded is NaN.
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if UPCAST:
            # Triton's CPU interpreter returns garbage for tl.dot on bf16 operands
            # (triton 3.7.1, 2026-11-26: https://github.com/triton-lang/triton/issues/11584);
            # in fp32 it is exact. Only the interpreter sets UPCAST.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)  # tensor cores, fp32 accumulation
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # Round once to the output type and write each element of c exactly once.
    offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = (c_ptr + offs_cm.to(tl.int64)[:, None] * stride_cm
              + offs_cn.to(tl.int64)[None, :] * stride_cn)
    mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------
# The launcher
# ----------------------------------------------------------------------------

def _kernel_flags(dtype: torch.dtype) -> dict:
    """Compile-time flags that depend on the machine and the input type."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        precision = "ieee"  # exact fp32, like torch.matmul by default
    else:
        precision = "tf32"  # TF32 tensor cores for fp32; ignored for 16-bit inputs
    return {"UPCAST": device.INTERPRET, "INPUT_PRECISION": precision}


def _grid(M: int, N: int, config: triton.Config) -> tuple[int]:
    return (_tuning.cdiv(M, config.kwargs["BLOCK_M"]) * _tuning.cdiv(N, config.kwargs["BLOCK_N"]),)


def _tuning_key(M: int, N: int, K: int, dtype: torch.dtype, index, precision: str) -> tuple:
    # M is the number of tokens: it changes with every batch, so it is bucketed
    # (powers of two); N and K are a layer's weight shape and stay exact.
    return (_tuning.bucket(M), N, K, dtype, index, precision)


def matmul(a: torch.Tensor, b: torch.Tensor, *,
           config: triton.Config | None = None) -> torch.Tensor:
    """``a @ b`` for 2-D ``a (M, K)`` and ``b (K, N)`` of one dtype (fp16, bf16
    or fp32) on one device; returns ``(M, N)`` in that dtype. Any strides.

    Decode shapes — ``M ≤ 64`` rows, a few tokens against a weight matrix — run
    the split-K kernel of ``matmul_splitk_kernel.py`` instead of the tiled one:
    with so few rows the tiled kernel has too few programs to stream the weights
    at full bandwidth (chapter 3's batch sweep shows it).

    ``config`` pins one ``triton.Config`` of the tiled kernel (keys ``BLOCK_M``, ``BLOCK_N``,
    ``BLOCK_K`` — powers of two, at least 16 — and the integer ``GROUP_M`` ≥ 1,
    plus ``num_warps``, a power of two up to 32, and ``num_stages`` ≥ 1) instead
    of tuning: for experiments with tile sizes and for deterministic runs. A bad
    value raises (``TypeError`` or ``ValueError`` naming it) before anything is
    launched.

    Inputs that require grad raise ``RuntimeError`` while grad mode is on (there
    is no backward pass); call it under ``torch.no_grad()``.
    """
    M, K, N = check_matmul_operands("matmul", a, b)
    if a.is_cuda and a.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one: a kernel
        # on cuda:0 would read cuda:1's memory unordered with cuda:1's stream.
        with torch.cuda.device(a.device):
            return matmul(a, b, config=config)
    check_bf16_supported("matmul", a)
    if config is not None:
        _tuning.check_config("matmul", config, _tuning.MATMUL_BLOCKS, _tuning.MATMUL_COUNTS)
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()  # an empty sum

    if config is None and M <= _tuning.SMALL_M:
        # imported here: matmul_splitk_kernel imports this module
        from .matmul_splitk_kernel import run_tuned
        run_tuned(a, b, c)
        return c

    args = (a, b, c, M, N, K,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1))
    flags = _kernel_flags(a.dtype)

    def launch(cfg: triton.Config):
        return _matmul_kernel[_grid(M, N, cfg)](*args, **cfg.kwargs, **flags,
                                                num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    if config is None:
        # Tuned once per (bucketed) shape on a GPU: the first call times the candidates.
        config = _tuning.MATMUL.choose(
            _tuning_key(M, N, K, a.dtype, a.device.index, flags["INPUT_PRECISION"]), launch,
            tune=M * N * K >= _tuning.MATMUL_TUNE_MIN_WORK,
            element_size=a.element_size(), shape={"M": M, "N": N})
    launch(config)
    return c


def best_config(a: torch.Tensor, b: torch.Tensor) -> triton.Config | None:
    """The configuration the tuner picked for ``a @ b`` (after a call to
    ``matmul(a, b)`` with these shapes and dtype) — a split-K one for ``M ≤ 64`` —
    or None if it has not tuned it (CPU interpreter, small problems, or not called yet)."""
    (M, K), (_, N) = a.shape, b.shape
    if M <= _tuning.SMALL_M:
        from .matmul_splitk_kernel import best_config as splitk_best_config
        return splitk_best_config(a, b)
    key = _tuning_key(M, N, K, a.dtype, a.device.index, _kernel_flags(a.dtype)["INPUT_PRECISION"])
    return _tuning.MATMUL.cache.get(key)
