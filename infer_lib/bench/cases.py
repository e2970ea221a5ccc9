"""Benchmark cases, one generator per kernel name (``--only NAME``).

Each generator takes ``smoke`` (tiny sizes for the CPU plumbing test) and
returns ``Case`` objects. The byte and FLOP counts here are the *minimum* a
correct implementation must move and do — the roofline's numbers — not what
any particular implementation happens to do.
"""

from __future__ import annotations

import torch

from .. import device
from ..kernels import vector_add
from .attention_cases import flash_attention_cases, softmax_cases
from .core import Case
from .matmul_cases import batch_sweep, matmul_cases


def _randn(*shape, dtype):
    return torch.randn(*shape, device=device.DEVICE, dtype=dtype)


def _human(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def copy_cases(smoke: bool) -> list[Case]:
    """Device-to-device copy: the bandwidth every memory-bound kernel is held to."""
    sizes = (2**12, 2**16) if smoke else (2**26, 2**28, 2**30, 2**32)
    out = []
    for nbytes in sizes:
        src = _randn(nbytes // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        out.append(Case(
            kernel="copy", case=_human(nbytes), params={"bytes": nbytes, "dtype": "float32"},
            unit="GB/s", bytes=2 * nbytes, flops=0,  # read once + written once
            ours=("torch copy_ (device to device)", lambda s=src, d=dst: d.copy_(s)),
        ))
    return out


def cublas_cases(smoke: bool) -> list[Case]:
    """cuBLAS through torch.matmul: the FLOP/s every compute-bound kernel is held to."""
    sizes = (32, 64) if smoke else (1024, 4096, 8192)
    out = []
    for dtype in device.kernel_dtypes():
        for n in sizes:
            a, b = _randn(n, n, dtype=dtype), _randn(n, n, dtype=dtype)
            out.append(Case(
                kernel="cublas", case=f"{n}³ {device.dtype_name(dtype)}", params={"M": n, "N": n, "K": n, "dtype": device.dtype_name(dtype)},
                unit="TFLOP/s", bytes=3 * n * n * dtype.itemsize, flops=2 * n**3,
                ours=("torch.matmul (cuBLAS)", lambda a=a, b=b: a @ b), limit=f"matmul:{device.dtype_name(dtype)}",
            ))
    return out


def vector_add_cases(smoke: bool) -> list[Case]:
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
    "copy": copy_cases,
    "cublas": cublas_cases,
    "vector_add": vector_add_cases,
    "matmul": matmul_cases,
    "matmul_batch_sweep": batch_sweep,
    "softmax": softmax_cases,
    "flash_attention": flash_attention_cases,
}
