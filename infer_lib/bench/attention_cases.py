"""Benchmark cases of chapter 4: the fused softmax and the FlashAttention forward.

Counts are the roofline's minimum, not what an implementation happens to do:

* softmax: ``2 · rows · width · element_size`` bytes — every element read once
  and written once; unit GB/s, held to the copy bandwidth. (Three or so FLOPs
  per element, far below any GPU's balance point.)
* attention: ``roofline.attention_flops`` — ``4 · B · H · S_q · S_k · D`` FLOPs
  for the two matmuls (``Q Kᵀ`` and ``P V``), halved with causal masking (only
  the lower triangle is needed; ``S_q = S_k`` here). Bytes: q, k, v read once
  and the output written once. Unit TFLOP/s, held to cuBLAS's matmul rate in
  the same dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import device, roofline
from ..kernels import flash_attention, softmax   # the launchers (importable without Triton)
from ..reference import naive_attention
from .core import Case

SOFTMAX_WIDTHS = (1024, 4096, 16384, 32768)
#: (B, H, S, D) of the FlashAttention cases: Llama-like heads (D = 128, and D = 64) at S = 4096
ATTENTION_SHAPES = ((4, 32, 4096, 128), (8, 16, 4096, 64))
#: ≥ 256 MB of input per softmax case: far beyond the 50 MB L2 of an H100
SOFTMAX_BYTES = 2**28


def _half_dtypes() -> list[torch.dtype]:
    # bf16 needs sm_80 (a T4 has none); the limits are measured for kernel_dtypes() only.
    return [dt for dt in (torch.float16, torch.bfloat16) if dt in device.kernel_dtypes()]


def softmax_cases(smoke: bool) -> list[Case]:
    """Row softmax at widths 1k–32k, fp16 and bf16, against ``torch.softmax``."""
    out = []
    for dtype in _half_dtypes():
        esize = dtype.itemsize
        for width in ((1024, 4096) if smoke else SOFTMAX_WIDTHS):
            rows = 4 if smoke else SOFTMAX_BYTES // (width * esize)
            x = torch.randn(rows, width, device=device.DEVICE, dtype=dtype)
            out.append(Case(
                kernel="softmax", case=f"{rows}×{width} {device.dtype_name(dtype)}",
                params={"rows": rows, "width": width, "dtype": device.dtype_name(dtype)},
                unit="GB/s", bytes=2 * rows * width * esize,   # read once, written once
                flops=3 * rows * width,                          # max, exp, sum (÷ folded in)
                ours=("triton softmax", lambda x=x: softmax(x)),
                peers=[("torch.softmax", lambda x=x: torch.softmax(x, dim=-1))],
                limit="copy", atol=1e-3, rtol=1e-2,
            ))
    return out


def _naive_fits(B: int, H: int, S_q: int, S_k: int, esize: int) -> bool:
    """Naive attention keeps ~4 score matrices alive at its peak (scores, scaled, masked, softmax)."""
    if not device.HAS_GPU:
        return True
    free, _ = torch.cuda.mem_get_info()
    return 4 * B * H * S_q * S_k * esize < 0.8 * free


def flash_attention_cases(smoke: bool) -> list[Case]:
    """FlashAttention forward, bf16, causal and not, against SDPA (and naive PyTorch where it fits)."""
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    esize = dtype.itemsize
    shapes = ((1, 2, 96, 32), (2, 2, 64, 16)) if smoke else ATTENTION_SHAPES
    smallest = min(shapes, key=lambda s: s[0] * s[1] * s[2] ** 2 * s[3])
    out = []
    for B, H, S, D in shapes:
        q, k, v = (torch.randn(B, H, S, D, device=device.DEVICE, dtype=dtype) for _ in range(3))
        for causal in (False, True):
            peers = [("SDPA", lambda q=q, k=k, v=v, c=causal: F.scaled_dot_product_attention(q, k, v, is_causal=c))]
            if (B, H, S, D) == smallest and _naive_fits(B, H, S, S, esize):
                peers.append(("naive PyTorch", lambda q=q, k=k, v=v, c=causal: naive_attention(q, k, v, causal=c)))
            out.append(Case(
                kernel="flash_attention",
                case=f"B{B} H{H} S{S} D{D} {'causal' if causal else 'full'}",
                params={"B": B, "H": H, "H_kv": H, "S_q": S, "S_k": S, "D": D, "causal": causal,
                        "dtype": device.dtype_name(dtype)},
                unit="TFLOP/s",
                bytes=4 * B * H * S * D * esize,   # q, k, v read once; output written once
                flops=roofline.attention_flops(B, H, S, S, D, causal),
                ours=("triton flash_attention", lambda q=q, k=k, v=v, c=causal: flash_attention(q, k, v, causal=c)),
                peers=peers,
                limit=f"matmul:{device.dtype_name(dtype)}", atol=2e-2, rtol=2e-2,
            ))
    return out
