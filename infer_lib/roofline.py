"""Arithmetic intensity, the roofline model and the critical batch size (chapters 2 and 3).

An operation does ``F`` floating-point operations and must move at least ``Q``
bytes between HBM and the chip. Its **arithmetic intensity** is

    I = F / Q    (FLOP/byte)

A GPU with peak throughput ``P`` (FLOP/s) and memory bandwidth ``β`` (B/s)
cannot finish it faster than either resource allows, so the **roofline time**
is

    T = max(F / P, Q / β)

and the best throughput it can reach is the **attainable FLOP/s**

    min(P, I · β)

— a slanted line (memory-bound) meeting a flat one (compute-bound) at the
**machine balance** ``I* = P / β``, the ridge point. An operation with
``I < I*`` is memory-bound: more FLOP/s would not help, fewer bytes would.

**Two compute roofs.** ``P`` depends on which units do the arithmetic. Matrix
products run on the **tensor cores**: ``ceilings(spec, torch.bfloat16)``, a
ridge of a few hundred FLOP/byte on recent GPUs. Elementwise operations and
reductions run on the **CUDA cores** (plain FP32 units; ``exp``, ``erf`` and
friends on the special-function units, slower still), whatever the storage
dtype: ``cuda_core_ceilings(spec)``, a ridge of about 10 to 100 FLOP/byte.
``plot_rooflines`` draws both; ``bound(..., cuda_cores=True)`` uses the second.

Counts used here (``s`` = bytes per element):

* elementwise on ``n`` elements: ``F = f · n`` for ``f`` FLOPs per element,
  ``Q = (inputs + outputs) · n · s``. ``x + y``: ``I = 1 / (3s)``, 1/12 in fp32.
* row-wise reductions such as softmax or RMSNorm on a ``rows × cols`` matrix:
  read once, write once, ``Q = 2 · rows · cols · s`` (``out_cols=1`` for a sum
  that writes one number per row).
* matmul ``(M, K) @ (K, N)``: ``F = 2·M·N·K`` (a multiply and an add per
  term), ``Q = (M·K + K·N) · s_in + M·N · s_out`` — each input read once, the
  output written once. A square ``n³`` product in 16-bit has ``I = n / 3``.
* attention: ``F = 4·B·H·S_q·S_k·D``, halved when causal (``attention_flops``).

**Critical batch size.** A linear layer ``X (B×d) · W (d×d)`` does ``2·B·d²``
FLOPs; for ``B ≪ d`` its bytes are dominated by the weights, ``d² · s_w``.
Compute time ``2·B·d² / P`` equals memory time ``d² · s_w / β`` at

    B* = P · s_w / (2 · β)

which in 16-bit (``s_w = 2``) is ``P / β``, the machine balance. Smaller
batches are memory-bound (time flat in ``B``: the weights must be read
anyway), larger ones compute-bound (time grows with ``B``). Datasheet figures:
A100 40 GB (312 TFLOP/s, 1555 GB/s) ≈ 200, A100 80 GB (2039 GB/s) ≈ 153,
H100 SXM (989.5 TFLOP/s, 3350 GB/s) ≈ 295.

Units: every function takes and returns SI units — FLOPs, bytes, FLOP/s, B/s,
seconds. ``infer_lib.hardware.SPECS`` stores TFLOP/s and GB/s; ``ceilings``
converts. Plots show TFLOP/s.

References: S. Williams, A. Waterman, D. Patterson, "Roofline: an insightful
visual performance model for multicore architectures", CACM 52(4), 2009
(https://doi.org/10.1145/1498765.1498785); H. He, "Making Deep Learning Go
Brrrr From First Principles" (https://horace.io/brrr_intro.html); J. Austin et
al., "How to Scale Your Model", ch. 1 "Rooflines"
(https://jax-ml.github.io/scaling-book/roofline/).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from . import device, hardware, plotting

# ----------------------------------------------------------------------------
# Operations and their arithmetic intensity
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """An operation as the roofline sees it: FLOPs done and minimum bytes moved."""

    name: str
    flops: float
    bytes: float

    def __post_init__(self):
        if not (isinstance(self.flops, numbers.Real) and math.isfinite(self.flops) and self.flops >= 0):
            raise ValueError(f"Op {self.name!r}: flops must be a finite number ≥ 0, got {self.flops!r}")
        if not (isinstance(self.bytes, numbers.Real) and math.isfinite(self.bytes) and self.bytes > 0):
            raise ValueError(f"Op {self.name!r}: bytes must be a finite number > 0 (every operation "
                             f"reads or writes something), got {self.bytes!r}")

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP/byte."""
        return self.flops / self.bytes


#: dtype names accepted besides torch dtypes → bytes per element
_BYTES = {"fp32": 4, "float32": 4, "tf32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2,
          "fp8": 1, "int8": 1}


def bytes_per_element(dtype: torch.dtype | str) -> int:
    """Bytes per element of ``dtype``: a torch dtype or one of the names
    ``fp32``, ``tf32``, ``fp16``, ``bf16``, ``fp8``, ``int8`` (TF32 is stored as fp32)."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if isinstance(dtype, str) and dtype.lower() in _BYTES:
        return _BYTES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}: pass a torch dtype such as torch.bfloat16, "
                     f"or one of {sorted(_BYTES)}")


def _count(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number ≥ 0, got {value!r}")
    return float(value)


def elementwise(n: int, dtype: torch.dtype | str, n_inputs: int = 1, n_outputs: int = 1,
                flops_per_element: float = 1, name: str | None = None) -> Op:
    """An elementwise op on ``n`` elements: each input read once, each output
    written once. ``x + y`` is ``elementwise(n, dtype, n_inputs=2)``; GELU is
    about ``flops_per_element=8`` on one input."""
    n = _count("n", n)
    n_inputs = _count("n_inputs", n_inputs, minimum=0)
    n_outputs = _count("n_outputs", n_outputs, minimum=0)
    if n_inputs + n_outputs == 0:
        raise ValueError("an elementwise op must read or write something: n_inputs + n_outputs ≥ 1")
    f = _nonneg("flops_per_element", flops_per_element)
    s = bytes_per_element(dtype)
    return Op(name or f"elementwise n={n} {device.dtype_name(dtype)}", f * n, (n_inputs + n_outputs) * n * s)


def reduction(rows: int, cols: int, dtype: torch.dtype | str, flops_per_element: float = 5,
              out_cols: int | None = None, name: str | None = None) -> Op:
    """A row-wise op on a ``rows × cols`` matrix that reads it once and writes
    ``rows × out_cols`` (default ``cols``: softmax, RMSNorm; ``out_cols=1``: a
    row sum). ``flops_per_element`` defaults to softmax's ≈ 5 (max, subtract,
    exp, sum, divide); RMSNorm is ≈ 4 (square, sum, scale, weight)."""
    rows, cols = _count("rows", rows), _count("cols", cols)
    out_cols = cols if out_cols is None else _count("out_cols", out_cols)
    f = _nonneg("flops_per_element", flops_per_element)
    s = bytes_per_element(dtype)
    return Op(name or f"reduction {rows}×{cols} {device.dtype_name(dtype)}",
              f * rows * cols, (rows * cols + rows * out_cols) * s)


def matmul(M: int, N: int, K: int, dtype: torch.dtype | str,
           out_dtype: torch.dtype | str | None = None, name: str | None = None) -> Op:
    """``(M, K) @ (K, N)``: ``2·M·N·K`` FLOPs; at least ``(M·K + K·N)`` input
    elements read and ``M·N`` output elements written (``out_dtype`` defaults
    to ``dtype``)."""
    M, N, K = _count("M", M), _count("N", N), _count("K", K)
    s_in = bytes_per_element(dtype)
    s_out = bytes_per_element(dtype if out_dtype is None else out_dtype)
    return Op(name or f"matmul M={M} N={N} K={K} {device.dtype_name(dtype)}",
              2 * M * N * K, (M * K + K * N) * s_in + M * N * s_out)


def attention_flops(B: int, H: int, S_q: int, S_k: int, D: int, causal: bool) -> int:
    """FLOPs of attention ``softmax(Q Kᵀ / √D) V`` for ``B`` sequences of ``H`` query heads,
    as FlashAttention's papers and the benchmark count them: ``4 · B · H · S_q · S_k · D``
    — two matmuls (``Q Kᵀ`` and ``P V``) of ``2 · S_q · S_k · D`` each per head — halved
    (integer division) when ``causal``, for the useful lower triangle (exactly half only
    when ``S_q = S_k``; the convention keeps the half either way). Softmax's exps are not
    counted, and neither are the masked scores a naive version computes and throws away."""
    B, H, S_q, S_k, D = (_count(n, v) for n, v in (("B", B), ("H", H), ("S_q", S_q), ("S_k", S_k), ("D", D)))
    flops = 4 * B * H * S_q * S_k * D
    return flops // 2 if causal else flops


# ----------------------------------------------------------------------------
# The roofline
# ----------------------------------------------------------------------------

def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def roofline_time(op: Op, peak_flops: float, bandwidth: float) -> float:
    """Least time in seconds ``op`` can take: ``max(flops / peak_flops, bytes / bandwidth)``
    (``peak_flops`` in FLOP/s, ``bandwidth`` in B/s)."""
    if not isinstance(op, Op):
        raise TypeError(f"op must be a roofline.Op (e.g. roofline.matmul(...)), got {type(op).__name__}")
    peak_flops, bandwidth = _positive("peak_flops", peak_flops), _positive("bandwidth", bandwidth)
    return max(op.flops / peak_flops, op.bytes / bandwidth)


def attainable_flops(intensity, peak_flops: float, bandwidth: float):
    """``min(peak_flops, intensity · bandwidth)`` in FLOP/s; ``intensity`` (FLOP/byte)
    may be a number or an array (then an array comes back)."""
    peak_flops, bandwidth = _positive("peak_flops", peak_flops), _positive("bandwidth", bandwidth)
    arr = np.asarray(intensity, dtype=float)
    if np.any(~(arr >= 0)):
        raise ValueError(f"intensity must be ≥ 0 FLOP/byte, got {intensity!r}")
    out = np.minimum(peak_flops, arr * bandwidth)
    return float(out) if out.ndim == 0 else out


def ceilings(spec: hardware.GPUSpec, dtype: torch.dtype | str = torch.bfloat16) -> tuple[float, float]:
    """Datasheet ``(peak FLOP/s, bandwidth B/s)`` of ``spec`` for matrix products in ``dtype``."""
    peak = hardware.peak_tflops(spec, dtype)  # raises if the GPU has no such peak
    if not spec.bandwidth_GBps:
        raise ValueError(f"the memory bandwidth of {spec.name} is unknown: measure it with "
                         "infer_lib.measure.copy_bandwidth")
    return peak * 1e12, spec.bandwidth_GBps * 1e9


def cuda_core_ceilings(spec: hardware.GPUSpec) -> tuple[float, float]:
    """Datasheet ``(peak FLOP/s, bandwidth B/s)`` of ``spec``'s **CUDA cores**: the plain
    (non-tensor) FP32 peak and the HBM bandwidth. This is the roof of elementwise operations
    and reductions, which do not run on tensor cores whatever dtype they store (PyTorch computes
    bf16 elementwise math in FP32); transcendental functions (``exp``, ``erf``) run on the
    special-function units, slower still, so the real compute roof of an exp-heavy op is lower.
    Same as ``ceilings(spec, torch.float32)``."""
    return ceilings(spec, torch.float32)


def cuda_core_balance(spec: hardware.GPUSpec) -> float:
    """FP32 CUDA-core peak FLOP/s ÷ bandwidth in FLOP/byte: the ridge under which elementwise
    operations and reductions are memory-bound (≈ 20 on an H100 SXM, 14 on an H200, 101 on an L4)."""
    peak, bw = cuda_core_ceilings(spec)
    return peak / bw


def machine_balance(spec: hardware.GPUSpec, dtype: torch.dtype | str = torch.bfloat16) -> float:
    """Peak FLOP/s ÷ bandwidth in FLOP/byte: the intensity at the ridge of ``spec``'s roofline."""
    peak, bw = ceilings(spec, dtype)
    return peak / bw


def critical_batch_size_from(peak_flops: float, bandwidth: float, bytes_per_weight: float = 2) -> float:
    """Batch size at which ``X (B×d) · W (d×d)`` turns from memory- to compute-bound,
    counting only weight bytes: ``peak_flops · bytes_per_weight / (2 · bandwidth)``."""
    peak_flops, bandwidth = _positive("peak_flops", peak_flops), _positive("bandwidth", bandwidth)
    bytes_per_weight = _positive("bytes_per_weight", bytes_per_weight)
    return peak_flops * bytes_per_weight / (2 * bandwidth)


def critical_batch_size(spec: hardware.GPUSpec, dtype: torch.dtype | str = torch.bfloat16) -> float:
    """Critical batch size of a weight-bound linear layer on ``spec`` with weights
    and math in ``dtype`` (datasheet peaks): ≈ 200 for an A100 40 GB, 295 for an H100 SXM."""
    peak, bw = ceilings(spec, dtype)
    return critical_batch_size_from(peak, bw, bytes_per_element(dtype))


# ----------------------------------------------------------------------------
# Communication: the ring all-reduce (chapter on several GPUs)
# ----------------------------------------------------------------------------

def ring_allreduce_bytes(payload_bytes: float, n: int) -> float:
    """Bytes each of ``n`` ranks sends (and receives) in a ring all-reduce of ``payload_bytes``:
    ``2 · (n − 1) / n · payload``. The ring cuts the payload into ``n`` chunks and passes them
    around twice, ``n − 1`` steps to add up each chunk (reduce-scatter) and ``n − 1`` to hand the
    sums around (all-gather); 0 for one rank."""
    n = _count("n", n)
    return 2 * (n - 1) / n * _nonneg("payload_bytes", payload_bytes)


def ring_allreduce_time(payload_bytes: float, n: int, link_bandwidth: float,
                        latency: float = 0.0) -> float:
    """Seconds of a ring all-reduce of ``payload_bytes`` over ``n`` ranks: ``2 · (n − 1)``
    steps, each moving one chunk (``payload / n``) over every rank's outgoing link at
    ``link_bandwidth`` (B/s in **one direction**: half of the bidirectional NVLink and PCIe
    totals that ``hardware.SPECS`` quotes) and paying ``latency`` seconds::

        2 · (n − 1) · (latency + payload / (n · link_bandwidth))

    At decode batch sizes the payload is small (``B · d`` numbers) and the latency term
    dominates; at large payloads the time is ``2 · (n − 1) / n · payload / link_bandwidth``:
    one payload's time for 2 ranks, 1.75 for 8, tending to 2 as ``n`` grows. 0 for one rank."""
    n = _count("n", n)
    if n == 1:
        return 0.0
    link_bandwidth = _positive("link_bandwidth", link_bandwidth)
    latency = _nonneg("latency", latency)
    return 2 * (n - 1) * (latency + _nonneg("payload_bytes", payload_bytes) / (n * link_bandwidth))


def bound(op: Op, spec: hardware.GPUSpec, dtype: torch.dtype | str = torch.bfloat16, *,
          cuda_cores: bool = False) -> str:
    """``"memory"`` if ``op``'s intensity is below ``spec``'s machine balance for
    ``dtype`` (tensor cores), or with ``cuda_cores=True`` below the CUDA-core balance
    (``cuda_core_balance``: elementwise ops, reductions; ``dtype`` is then ignored), else
    ``"compute"`` (exactly at the ridge both are; we say compute)."""
    if not isinstance(op, Op):
        raise TypeError(f"op must be a roofline.Op (e.g. roofline.matmul(...)), got {type(op).__name__}")
    balance = cuda_core_balance(spec) if cuda_cores else machine_balance(spec, dtype)
    return "compute" if op.intensity >= balance else "memory"


# ----------------------------------------------------------------------------
# Plots: ceilings on log-log axes, measured points on them
# ----------------------------------------------------------------------------

XLABEL = "arithmetic intensity (FLOP/byte)"
YLABEL = "performance (TFLOP/s)"


def figure(title: str = "Roofline", **kw):
    """An empty roofline figure: log-log axes labelled with their units."""
    fig, ax = plotting.figure(title, xlabel=XLABEL, ylabel=YLABEL, logx=True, logy=True, **kw)
    ax.set_xscale("log", base=2)
    return fig, ax


def plot_roofline(ax, peak_flops: float, bandwidth: float, *, label: str, source: plotting.Source,
                  color=None, intensity_range: tuple[float, float] = (2**-4, 2**12),
                  annotate_ridge: bool = True, linestyle: str | None = None):
    """Draw the roofline ``min(peak_flops, I · bandwidth)`` (FLOP/s and B/s in,
    TFLOP/s on the axis) over ``intensity_range`` FLOP/byte, on log-log axes,
    and mark the ridge point. ``source`` says where the ceilings come from
    (``plotting.datasheet(...)`` or, for measured ones, ``plotting.live()``).
    ``linestyle`` overrides the source's (``plot_rooflines`` draws the tensor-core roof solid, the CUDA-core roof dashed).
    Returns the line."""
    peak_flops, bandwidth = _positive("peak_flops", peak_flops), _positive("bandwidth", bandwidth)
    lo, hi = (_positive("intensity_range[0]", intensity_range[0]),
              _positive("intensity_range[1]", intensity_range[1]))
    if lo >= hi:
        raise ValueError(f"intensity_range must be (low, high) with low < high, got {intensity_range}")
    ridge = peak_flops / bandwidth
    xs = np.geomspace(lo, hi, 256)
    if lo < ridge < hi:
        xs = np.sort(np.append(xs, ridge))  # the corner exactly
    ys = attainable_flops(xs, peak_flops, bandwidth) / 1e12
    style = {} if linestyle is None else {"linestyle": linestyle}
    (line,) = plotting.series(ax, xs, ys, label=label, source=source, color=color, marker=None, **style)
    if annotate_ridge and lo < ridge < hi:
        ax.plot([ridge], [peak_flops / 1e12], marker="o", markersize=3, color=line.get_color())
        ax.annotate(f"{ridge:.0f} FLOP/B", (ridge, peak_flops / 1e12), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if not ax.get_xlabel():
        ax.set_xlabel(XLABEL)
    if not ax.get_ylabel():
        ax.set_ylabel(YLABEL)
    return line


def plot_rooflines(ax, spec: hardware.GPUSpec, dtype: torch.dtype | str = torch.bfloat16, *,
                   source: plotting.Source | None = None, color=None,
                   intensity_range: tuple[float, float] = (2**-4, 2**12), label: str | None = None):
    """Draw ``spec``'s two datasheet roofs on one plot: the tensor-core roof for ``dtype``
    (matmuls live under it; solid) and the FP32 CUDA-core roof (elementwise ops and reductions
    live under it; dashed), sharing the memory slope. Both in ``color``; legend entries
    "<label>, <dtype> tensor cores" and "<label>, FP32 CUDA cores" (``label`` defaults to
    ``spec.name``). Returns ``(tensor_core_line, cuda_core_line)``."""
    source = plotting.datasheet() if source is None else source
    name = spec.name if label is None else label
    dt = device.dtype_name(dtype) if isinstance(dtype, torch.dtype) else str(dtype)
    tensor = plot_roofline(ax, *ceilings(spec, dtype), label=f"{name}, {dt} tensor cores", source=source,
                           color=color, intensity_range=intensity_range, linestyle="-")
    cuda = plot_roofline(ax, *cuda_core_ceilings(spec), label=f"{name}, FP32 CUDA cores", source=source,
                         color=tensor.get_color(), intensity_range=intensity_range, linestyle="--")
    return tensor, cuda


def place(ax, op: Op, time_s: float, *, label: str, source: plotting.Source | None = None,
          color=None, marker: str = "o", **kw) -> float:
    """Mark a measured ``op`` that took ``time_s`` seconds at ``(op.intensity,
    op.flops / time_s)`` on a roofline plot; returns the achieved FLOP/s.
    How far the point sits below the ceiling is the fraction of the roof reached."""
    if not isinstance(op, Op):
        raise TypeError(f"op must be a roofline.Op (e.g. roofline.matmul(...)), got {type(op).__name__}")
    time_s = _positive("time_s", time_s)
    if op.flops == 0:
        raise ValueError(f"{op.name} does no FLOPs: its intensity is 0, off a log-log roofline; "
                         "compare its bandwidth (bytes / time) with the copy bandwidth instead")
    achieved = op.flops / time_s
    text = label + (source.suffix if source is not None else "")
    ax.plot([op.intensity], [achieved / 1e12], linestyle="none", marker=marker, color=color,
            label=text, **kw)
    return achieved


__all__ = ["Op", "bytes_per_element", "elementwise", "reduction", "matmul", "roofline_time",
           "ring_allreduce_bytes", "ring_allreduce_time",
           "attainable_flops", "ceilings", "cuda_core_ceilings", "cuda_core_balance", "machine_balance", "critical_batch_size",
           "critical_batch_size_from", "bound", "figure", "plot_roofline", "plot_rooflines", "place"]
