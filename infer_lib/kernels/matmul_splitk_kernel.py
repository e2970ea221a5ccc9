"""Split-K matrix multiplication for decode shapes: ``c = a @ b`` with few rows in ``a``.

Notation as in ``matmul_kernel.py``: ``a (M, K)``, ``b (K, N)``, ``c (M, N)``,
``2·M·N·K`` FLOPs. Here ``M`` is small — the tokens of one decoding step, 1 to
64 — and ``b`` is a weight matrix, ``K·N`` elements (128 MiB for
``K = N = 8192`` in bf16).

Why a second kernel. With ``M ≤ 64`` the product does ``2·M`` FLOPs per weight
element read, an arithmetic intensity of at most ``M`` FLOP/byte in 16-bit, far
below any GPU's balance (≈ 206 FLOP/byte on an H200): the time is the time to
stream ``b`` from HBM, and the only goal is to read every weight once at the
full bandwidth. The tiled kernel of chapter 3 splits the work over ``N`` only:
``N / BLOCK_N`` programs (128 for ``N = 8192``, ``BLOCK_N = 64``), each walking
the whole of ``K`` — fewer programs than an H200 has SMs (132), each with one
long dependent loop, so too few bytes are in flight to cover HBM's latency.

Split-K. Cut ``K`` into ``SPLIT_K`` slices as well: program ``(n, s)`` computes
the partial product of column tile ``n`` over slice ``s``, so ``SPLIT_K`` times
more programs stream disjoint parts of ``b`` at once. The partial sums
(fp32, ``SPLIT_K × M × N``: 256 KB for ``M = 1, N = 8192, SPLIT_K = 8``,
negligible next to the weights) are added in one launch: every program writes
its partial, then increments a per-tile counter (an atomic with acquire-release
ordering, so its writes are visible to whoever sees the count); the program
that brings the counter to ``SPLIT_K`` is the last of its tile, reads the
``SPLIT_K`` partials in a fixed order — the same sum, bit for bit, on every run
— writes ``c`` once in the output type and resets the counter for the next
call. No second kernel, no zeroing of ``c``, and nothing that stops a CUDA graph
from capturing it.

Memory traffic: ``b`` read once (``K·N`` elements, the whole cost), ``a`` read
once per column tile (``M·K`` elements, from L2 after the first), ``c`` written
once, the partials written once and read once (from L2).

The tiles: ``BLOCK_M`` rows (at least 16, what ``tl.dot`` needs; rows past
``M`` wrap back into range with ``% M`` and are dropped at the store),
``BLOCK_N`` columns, ``BLOCK_K`` deep steps through the slice with
``num_stages`` of them in flight (Triton's software pipeline copies the next
slabs of ``b`` into shared memory while the tensor cores multiply this one).

References: NVIDIA CUTLASS "split-K" and "stream-K" GEMM (the semaphore-ordered
reduction; https://github.com/NVIDIA/cutlass/blob/main/media/docs/cpp/efficient_gemm.md);
M. Osama et al., "Stream-K: Work-centric Parallel Decomposition for Dense
Matrix-Matrix Multiplication on the GPU" (2023), https://arxiv.org/abs/2301.03598.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _tuning
from ._checks import check_bf16_supported, check_matmul_operands
from .matmul_kernel import _kernel_flags, matmul_ref

#: The reference is the one of ``matmul``: the product in fp32, cast back.
matmul_splitk_ref = matmul_ref


# M is the number of tokens: not specialised, so a new batch size does not
# recompile the kernel. K_SPLIT is (Triton's default specialisation tells the
# compiler it is a multiple of 16, as it always is: a multiple of BLOCK_K); without
# that each slice's start is of unknown alignment and the loads of `a` along K
# cannot be vectorised — at M = 64 the kernel ran at half the speed (H200, 2026-12-02).
@triton.jit(do_not_specialize=["M"])
def _matmul_splitk_kernel(
    a_ptr, b_ptr, c_ptr, partial_ptr, count_ptr,
    M, N, K, K_SPLIT,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    UPCAST: tl.constexpr,           # interpreter only: fp32 operands for tl.dot
    INPUT_PRECISION: tl.constexpr,  # "ieee" or "tf32"; matters for fp32 inputs only
):
    # Grid: (column tiles, K slices, row tiles). Programs of one column tile run
    # side by side, so they share the slab of a in L2.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = (offs_m % M).to(tl.int64)                   # wrapped: loads stay in bounds
    offs_bn = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_k * K_SPLIT                             # this program's slice of K
    k_end = tl.minimum(k_start + K_SPLIT, K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + (k_start + offs_k)[None, :].to(tl.int64) * stride_ak
    b_ptrs = b_ptr + (k_start + offs_k)[:, None].to(tl.int64) * stride_bk + offs_bn[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        # b streams from HBM exactly once over the whole grid: the cost of the product.
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_end - k, other=0.0)   # (BLOCK_M, BLOCK_K)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_end - k, other=0.0)   # (BLOCK_K, BLOCK_N)
        if UPCAST:
            # Triton's CPU interpreter returns garbage for tl.dot on bf16 operands
            # (triton 3.7.1, 2026-11-26: https://github.com/triton-lang/triton/issues/11584).
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n.to(tl.int64)[None, :] * stride_cn
    if SPLIT_K == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)
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
            for s in range(SPLIT_K):
                total += tl.load(partial_ptr + s * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=mask)    # c written once
            tl.atomic_xchg(counter, 0)                                       # ready for the next call


#: device -> int32 tile counters, all zero between calls (the last program of a tile resets its own).
_counters: dict[torch.device, torch.Tensor] = {}


def _tile_counters(dev: torch.device, n: int) -> torch.Tensor:
    counters = _counters.get(dev)
    if counters is None or counters.numel() < n:
        counters = torch.zeros(max(n, 1024), dtype=torch.int32, device=dev)
        _counters[dev] = counters
    return counters


def _tuning_key(M: int, N: int, K: int, dtype: torch.dtype, index, precision: str) -> tuple:
    return ("splitk", _tuning.bucket(M), N, K, dtype, index, precision)


def _launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: triton.Config):
    """Run the kernel with ``cfg`` on checked, non-empty operands, writing ``c``."""
    (M, K), N = a.shape, b.shape[1]
    bm, bn, bk = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"]
    split = max(1, min(cfg.kwargs["SPLIT_K"], _tuning.cdiv(K, bk)))    # no empty slices
    k_split = _tuning.cdiv(_tuning.cdiv(K, split), bk) * bk              # a multiple of BLOCK_K
    split = _tuning.cdiv(K, k_split)
    grid = (_tuning.cdiv(N, bn), split, _tuning.cdiv(M, bm))
    partial = torch.empty((split, M, N), device=a.device, dtype=torch.float32) if split > 1 else c
    counters = _tile_counters(a.device, grid[0] * grid[2])
    return _matmul_splitk_kernel[grid](
        a, b, c, partial, counters, M, N, K, k_split,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, **_kernel_flags(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def run_tuned(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> None:
    """``c = a @ b`` with the tuned (or, for small problems and in the interpreter, the fixed)
    configuration, on operands already checked and non-empty. ``matmul`` calls this for
    ``M ≤ SMALL_M``."""
    (M, K), N = a.shape, b.shape[1]
    config = _tuning.SPLITK_MATMUL.choose(
        _tuning_key(M, N, K, a.dtype, a.device.index, _kernel_flags(a.dtype)["INPUT_PRECISION"]),
        lambda cfg: _launch(a, b, c, cfg),
        tune=M * N * K >= _tuning.MATMUL_TUNE_MIN_WORK,
        element_size=a.element_size(), shape={"M": M, "N": N, "K": K})
    _launch(a, b, c, config)


def best_config(a: torch.Tensor, b: torch.Tensor) -> triton.Config | None:
    """The configuration the tuner picked for ``a @ b`` on this path, or None if it has not
    tuned it (CPU interpreter, small problems, or not called yet)."""
    (M, K), (_, N) = a.shape, b.shape
    key = _tuning_key(M, N, K, a.dtype, a.device.index, _kernel_flags(a.dtype)["INPUT_PRECISION"])
    return _tuning.SPLITK_MATMUL.cache.get(key)


def matmul_splitk(a: torch.Tensor, b: torch.Tensor, *, config: triton.Config | None = None) -> torch.Tensor:
    """``a @ b`` with the split-K kernel: for ``a (M, K)`` with few rows (decode shapes)
    and ``b (K, N)`` of the same dtype (fp16, bf16 or fp32) on one device; any strides.
    ``matmul`` runs this kernel itself when ``M ≤ 64``; call it directly to pin a
    configuration or to use it for larger ``M``.

    ``config`` pins a ``triton.Config`` with ``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``
    (powers of two, at least 16) and ``SPLIT_K`` (≥ 1), plus ``num_warps`` and
    ``num_stages``. Launches on one stream at a time per device: the tile counters
    are shared.
    """
    M, K, N = check_matmul_operands("matmul_splitk", a, b)
    if a.is_cuda and a.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(a.device):
            return matmul_splitk(a, b, config=config)
    check_bf16_supported("matmul_splitk", a)
    if config is not None:
        _tuning.check_config("matmul_splitk", config, _tuning.SPLITK_BLOCKS, _tuning.SPLITK_COUNTS)
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()  # an empty sum
    if config is None:
        run_tuned(a, b, c)
    else:
        _launch(a, b, c, config)
    return c
