"""Benchmark cases of chapter 8: three fused memory-bound kernels against PyTorch.

Counts are the roofline's minimum (every element read once and written once, the weight
of a norm — one row, from L2 — left out); unit GB/s, held to the copy bandwidth:

* rms_norm: ``2 · rows · d · element_size`` — read ``x``, write the output;
* add_rms_norm: ``4 · rows · d · element_size`` — read ``x`` and ``residual``, write the
  sum ``h`` and its norm;
* swiglu: ``3 · rows · d · element_size`` — read ``gate`` and ``up``, write the output.

Peers: the PyTorch composition a model would write (``F.rms_norm``; ``h = x + r`` then
``F.rms_norm(h)``; ``F.silu(g) * u``) and, on a GPU, ``torch.compile`` of the same
function (Inductor fuses it into one Triton kernel: the fair fused peer). 16384 rows of
4096 and of 8192 columns: 128-256 MiB per operand in 16-bit, far beyond any L2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import device
from ..kernels import add_rms_norm, rms_norm, swiglu   # the launchers (importable without Triton)
from .attention_cases import _half_dtypes
from .core import Case

ROWS = 16384
WIDTHS = (4096, 8192)
EPS = 1e-6


def _shapes(smoke: bool) -> list[tuple[int, int]]:
    return [(4, 64), (3, 96)] if smoke else [(ROWS, d) for d in WIDTHS]


def _peers(name: str, fn, *args) -> list:
    """The eager composition, and on a GPU its ``torch.compile`` with static shapes (never on
    the CPU, where Inductor would compile C++ for minutes for a plumbing test)."""
    peers = [(name, lambda: fn(*args))]
    if device.HAS_GPU:
        # Static shapes: each case compiles its own kernel. With the defaults (bd192a9, H200,
        # 2026-12-02) the norms' peer ran at 0.5-0.65 of copy from its second shape on, most
        # likely recompiled with symbolic sizes (automatic dynamic shapes): an unfair peer.
        compiled = torch.compile(fn, dynamic=False, fullgraph=True)
        peers.append((f"torch.compile({name})", lambda: compiled(*args)))
    return peers


def _rms(x, w):
    return F.rms_norm(x, (x.shape[-1],), w, EPS)


def _add_rms(x, r, w):
    h = x + r
    return h, F.rms_norm(h, (h.shape[-1],), w, EPS)


def _norm_first(x, r, w):
    h, out = _add_rms(x, r, w)
    return out, h


def _silu_mul(g, u):
    return F.silu(g) * u


def _cases(smoke: bool, kernel: str, n_bytes: int, make, flops: int = 4) -> list[Case]:
    """``n_bytes`` and ``flops``: per element of one operand (``flops`` roughly: a square, a sum
    and two products for a norm; far below any GPU's balance point either way)."""
    out = []
    for dtype in _half_dtypes() or [torch.float32]:
        for rows, d in _shapes(smoke):
            ours, peers = make(rows, d, dtype)
            out.append(Case(
                kernel=kernel, case=f"{rows}×{d} {device.dtype_name(dtype)}",
                params={"rows": rows, "cols": d, "dtype": device.dtype_name(dtype)},
                unit="GB/s", bytes=n_bytes * rows * d * dtype.itemsize, flops=flops * rows * d,
                ours=ours, peers=peers, limit="copy", atol=1e-2, rtol=1.6e-2,
            ))
    return out


def _randn(*shape, dtype):
    return torch.randn(*shape, device=device.DEVICE, dtype=dtype)


def rms_norm_cases(smoke: bool) -> list[Case]:
    """RMSNorm of 16384 rows, bf16 and fp16, against ``F.rms_norm`` (eager and compiled)."""
    def make(rows, d, dtype):
        x, w = _randn(rows, d, dtype=dtype), (1 + 0.5 * _randn(d, dtype=torch.float32)).to(dtype)
        return ("triton rms_norm", lambda: rms_norm(x, w, EPS)), _peers("F.rms_norm", _rms, x, w)
    return _cases(smoke, "rms_norm", 2, make)


def add_rms_norm_cases(smoke: bool) -> list[Case]:
    """Residual add + RMSNorm (both returned) against ``h = x + r; F.rms_norm(h)``."""
    def make(rows, d, dtype):
        x, r = _randn(rows, d, dtype=dtype), _randn(rows, d, dtype=dtype)
        w = (1 + 0.5 * _randn(d, dtype=torch.float32)).to(dtype)
        # (out, h): the check compares the first tensor, the norm; every peer still returns
        # (and so writes) h, or a compiled peer would drop that store and move less.
        return (("triton add_rms_norm", lambda: add_rms_norm(x, r, w, EPS)[::-1]),
                _peers("x + r, F.rms_norm", _norm_first, x, r, w))
    return _cases(smoke, "add_rms_norm", 4, make, flops=5)


def swiglu_cases(smoke: bool) -> list[Case]:
    """``silu(gate) · up`` against ``F.silu(gate) * up`` (eager and compiled)."""
    def make(rows, d, dtype):
        g, u = _randn(rows, d, dtype=dtype), _randn(rows, d, dtype=dtype)
        return ("triton swiglu", lambda: swiglu(g, u)), _peers("F.silu(g) * u", _silu_mul, g, u)
    return _cases(smoke, "swiglu", 3, make, flops=5)
