"""Benchmark cases of chapter 3: the tiled Triton matmul against cuBLAS, and the
batch sweep of a linear layer ``X (B×d) @ W (d×d)``.

Counts are the roofline's minimum: ``2·M·N·K`` FLOPs; ``(M·K + K·N + M·N)``
elements moved (each input read once, the output written once). Both
generators are registered in ``cases.CASES`` as ``matmul`` and
``matmul_batch_sweep``.

Correctness before timing: ours is compared with ``torch.matmul`` (cuBLAS),
both accumulating in fp32 and rounding to 16 bits at the end, so most elements
agree to an ulp; cuBLAS may split K and reduce partial sums in 16 bits
(PyTorch allows it by default), which adds a few ulps of partial sums of size
~√K. The tolerance is therefore relative to the typical output size: √K for
N(0, 1) inputs, 1 in the batch sweep, whose weights are scaled by 1/√d. A
missing K slab (an error of ~√BLOCK_K in those units of √K) still fails it.
"""

from __future__ import annotations

import math

import torch

from .. import device
from ..kernels import matmul   # the launcher (importable without Triton)
from .core import Case

#: dtype → (atol per unit of typical output size, rtol) for ours against cuBLAS
_TOL = {torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3), torch.float32: (1e-3, 1e-3)}


def _dtypes() -> list[torch.dtype]:
    # bf16 needs sm_80 (a T4 has none); the limits are measured for kernel_dtypes() only.
    return [dt for dt in (torch.bfloat16, torch.float16) if dt in device.kernel_dtypes()]


def _mm_case(kernel: str, label: str, params: dict, M: int, N: int, K: int, dtype: torch.dtype,
             a: torch.Tensor, b: torch.Tensor, out_scale: float) -> Case:
    """``out_scale``: the typical size of an output element (√K for N(0, 1) inputs)."""
    from ..kernels.matmul_kernel import best_config   # needs Triton: imported where a case is built
    s = dtype.itemsize
    atol, rtol = _TOL[dtype]
    return Case(
        kernel=kernel, case=label, params=params, unit="TFLOP/s",
        bytes=(M * K + K * N + M * N) * s,  # a and b read once, c written once
        flops=2 * M * N * K,
        ours=("triton matmul", lambda a=a, b=b: matmul(a, b)),
        peers=[("torch.matmul (cuBLAS)", lambda a=a, b=b: torch.matmul(a, b))],
        limit=f"matmul:{device.dtype_name(dtype)}",
        atol=atol * out_scale, rtol=rtol,
        info=lambda a=a, b=b: {"config": str(best_config(a, b) or "fixed default (not autotuned)")},
    )


def matmul_cases(smoke: bool, *, sizes: tuple[int, ...] | None = None,
                 dtypes: tuple[torch.dtype, ...] | None = None, skinny: bool = True) -> list[Case]:
    """Ours vs cuBLAS at n³ for n = 1024, 4096, 8192 and the decode-like
    ``M = 16, N = K = 8192`` (one token for each of 16 sequences through an
    8192-wide layer); tiny sizes under ``smoke``. Chapter 3 passes its own
    ``sizes``/``dtypes`` (and ``skinny=False``) to measure a reader's GPU."""
    n_cubed = sizes or ((32, 64) if smoke else (1024, 4096, 8192))
    thin = (16, 64, 64) if smoke else (16, 8192, 8192)
    out = []
    for dtype in dtypes or _dtypes():
        shapes = [(n, n, n) for n in n_cubed] + ([thin] if skinny else [])
        for M, N, K in shapes:
            a = torch.randn(M, K, device=device.DEVICE, dtype=dtype)
            b = torch.randn(K, N, device=device.DEVICE, dtype=dtype)
            label = f"{M}³ {device.dtype_name(dtype)}" if M == N == K else f"M={M} N={N} K={K} {device.dtype_name(dtype)}"
            out.append(_mm_case("matmul", label, {"M": M, "N": N, "K": K, "dtype": device.dtype_name(dtype)},
                                M, N, K, dtype, a, b, out_scale=math.sqrt(K)))
    return out


def batch_sweep(smoke: bool, *, d: int | None = None, batches: tuple[int, ...] | None = None,
                dtype: torch.dtype | None = None) -> list[Case]:
    """Chapter 3's measurement: ``X (B×d) @ W (d×d)`` at ``d = 8192`` for
    ``B = 1, 2, 4, …, 4096`` (smoke: ``d = 64``, ``B = 1, 8, 64``), ours vs
    cuBLAS, in bf16 (fp16 where there is no bf16). The time stays flat while the
    weights dominate the traffic and grows linearly once the product is
    compute-bound; the knee is the critical batch size
    (``infer_lib.roofline.critical_batch_size``). The chapter passes ``d``,
    ``batches`` and ``dtype`` to run the same sweep on a reader's GPU."""
    d = d or (64 if smoke else 8192)
    batches = batches or ((1, 8, 64) if smoke else tuple(2**i for i in range(13)))  # 1 … 4096
    dtype = dtype or (torch.bfloat16 if device.supports_bf16() else torch.float16)
    # (d, d), shared by every B; scaled by 1/√d like a trained layer's weights, so outputs are ~N(0, 1)
    W = torch.randn(d, d, device=device.DEVICE, dtype=dtype) / math.sqrt(d)
    out = []
    for B in batches:
        X = torch.randn(B, d, device=device.DEVICE, dtype=dtype)  # (B, d)
        out.append(_mm_case("matmul_batch_sweep", f"B={B} d={d} {device.dtype_name(dtype)}",
                            {"B": B, "d": d, "dtype": device.dtype_name(dtype)}, B, d, d, dtype, X, W, out_scale=1.0))
    return out


def int8_matmul_cases(smoke: bool) -> list[Case]:
    """Int8 weight-only matmul on decode shapes: ``a (M, K)`` in bf16 (fp16 without bf16) times
    int8 weights ``(K, N)`` with one fp32 scale per column, ``K = N = 8192`` (smoke: 64), for
    ``M`` = 1, 16, 64 tokens. GB/s on the bytes it must move: the int8 weights and the scales
    once, ``a`` read and ``c`` written once. Peers: cuBLAS on the same weights in 16 bit (what
    int8 is meant to beat: twice the weight bytes) and PyTorch's eager int8 path, which writes
    and reads back a dequantised 16-bit copy of the weights before its matmul. Ours is checked
    against both before timing (the 16-bit copy rounds each weight once: a relative error of
    ~2⁻⁸ per weight, ~√K · 2⁻⁸ on an output of size ~√K)."""
    from ..kernels import int8_matmul, quantize_int8
    from ..kernels.int8_matmul_kernel import best_config   # needs Triton: imported where built

    K = N = 64 if smoke else 8192
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    w_q, scales = quantize_int8(torch.randn(K, N, device=device.DEVICE, dtype=dtype))
    w16 = (w_q.float() * scales).to(dtype)                       # the same weights in 16 bit
    out = []
    for M in ((1, 16) if smoke else (1, 16, 64)):
        a = torch.randn(M, K, device=device.DEVICE, dtype=dtype)
        s = dtype.itemsize
        out.append(Case(
            kernel="int8_matmul", case=f"M={M} N={N} K={K} int8 weights, {device.dtype_name(dtype)}",
            params={"M": M, "N": N, "K": K, "dtype": device.dtype_name(dtype), "weights": "int8"},
            unit="GB/s",
            bytes=K * N + 4 * N + (M * K + M * N) * s,   # int8 weights and scales once, a and c once
            flops=2 * M * N * K,
            ours=("triton int8_matmul", lambda a=a: int8_matmul(a, w_q, scales)),
            peers=[("torch.matmul, 16-bit weights (cuBLAS)", lambda a=a: torch.matmul(a, w16)),
                   ("torch eager: dequantise, then matmul",
                    lambda a=a: torch.matmul(a, w_q.to(dtype) * scales.to(dtype)))],
            atol=3e-2 * math.sqrt(K), rtol=3e-2,
            info=lambda a=a: {"config": str(best_config(a, w_q) or "fixed default (not autotuned)")},
        ))
    return out
