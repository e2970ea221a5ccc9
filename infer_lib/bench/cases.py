"""Benchmark cases, one generator per kernel name (``--only NAME``).

Each generator takes ``smoke`` (tiny sizes for the CPU plumbing test) and
returns ``Case`` objects: one of our kernels against its PyTorch peers. The
byte and FLOP counts here are the *minimum* a correct implementation must move
and do — the roofline's numbers — not what any particular implementation
happens to do. What PyTorch alone reaches (a copy, cuBLAS) is not a case: it
is the run's limits (``core.measure_limits``).
"""

from __future__ import annotations

import torch

from .. import device
from ..kernels import vector_add
from .attention_cases import flash_attention_cases, softmax_cases
from .core import Case
from .decode_cases import decode_attention_cases
from .fusion_cases import add_rms_norm_cases, rms_norm_cases, swiglu_cases
from .matmul_cases import batch_sweep, int8_matmul_cases, matmul_cases


def _randn(*shape, dtype):
    return torch.randn(*shape, device=device.DEVICE, dtype=dtype)


def vector_add_cases(smoke: bool) -> list[Case]:
    """Elementwise add of two vectors against ``torch.add``: the simplest memory-bound kernel."""
    sizes = (1000, 2**14 + 3) if smoke else (2**20, 2**24, 2**28)
    dtypes = (torch.float32, device.default_dtype()) if device.HAS_GPU else (torch.float32,)
    out = []
    for dtype in dict.fromkeys(dtypes):
        for n in sizes:
            x, y = _randn(n, dtype=dtype), _randn(n, dtype=dtype)
            out.append(Case(
                kernel="vector_add", case=f"n={n} {device.dtype_name(dtype)}", params={"n": n, "dtype": device.dtype_name(dtype)},
                unit="GB/s", bytes=3 * n * dtype.itemsize, flops=n,  # read x, y; write out
                ours=("triton vector_add", lambda x=x, y=y: vector_add(x, y)),
                peers=[("torch.add", lambda x=x, y=y: torch.add(x, y))],
                atol=0, rtol=0 if device.HAS_GPU else 1e-2,
            ))
    return out


#: name → generator; later chapters add their kernels here.
CASES = {
    "vector_add": vector_add_cases,
    "matmul": matmul_cases,
    "matmul_batch_sweep": batch_sweep,
    "softmax": softmax_cases,
    "flash_attention": flash_attention_cases,
    "decode_attention": decode_attention_cases,
    "rms_norm": rms_norm_cases,
    "add_rms_norm": add_rms_norm_cases,
    "swiglu": swiglu_cases,
    "int8_matmul": int8_matmul_cases,
}
