"""Where the time of a GPU operation goes: the measurements of chapter 2.

Time goes to three places (H. He, "Making Deep Learning Go Brrrr From First
Principles", 2022):

* **compute** — arithmetic on the SMs; a large matmul spends its time there
  (``matmul_sweep``: time tracks FLOPs);
* **memory** — moving bytes between HBM and the SMs; an elementwise op or a
  row-wise reduction spends its time there (``elementwise_sweep``: time
  tracks bytes);
* **overhead** — everything else: the Python interpreter, PyTorch's
  dispatcher, the CPU launching each kernel, communication, disk. A tiny op
  spends all its time there (``launch_overhead``: eager launches against a
  CUDA graph and against one batched launch).

``representative_ops`` times a handful of the ops a transformer runs, each
with its ``roofline.Op`` (FLOPs and minimum bytes), to place on the roofline;
``profile_table`` shows where a small MLP block's time goes in
``torch.profiler``'s table. The measured roofline's ceilings (copy bandwidth,
cuBLAS FLOP/s) are ``measure.copy_bandwidth`` and ``measure.matmul_flops``, as in
the bench. Problem sizes per profile: ``device.Profile.bottlenecks``.

Everything here times a GPU: without one each function raises RuntimeError
(timings of the CPU say nothing about GPU performance) and the chapter shows
the shipped measurement ``infer_lib/data/bottlenecks_<gpu>.json`` instead,
written by

    python -m infer_lib.experiments.bottlenecks --out-dir DIR [--dtype bfloat16] [--profile gpu-large]

Times are medians from ``triton.testing.do_bench`` with the L2 cache flushed
between repetitions (``measure.bench_us``), in µs, unless a field's name says
otherwise (``*_wall_us``: host clock).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import device, measure, roofline

#: The elementwise op of the sweep. GELU, not ``x * 2 + 1``: eager PyTorch runs
#: GELU as one kernel that reads x once and writes y once (2 · n · s bytes), an
#: activation a transformer really runs; ``x * 2 + 1`` would be two kernels with an
#: intermediate tensor written to HBM and read back — the traffic that fusion
#: removes (chapter 8), which would blur the bytes this sweep counts.
ELEMENTWISE_OP = "torch.nn.functional.gelu"

#: FLOPs per element the roofline counts for each elementwise or row-wise op.
#: Estimates (exact GELU evaluates erf, whose cost depends on the math library);
#: each gives an intensity of a few FLOP/byte at most, dozens of times below any
#: GPU's machine balance, so the bound does not depend on the exact count.
FLOPS_PER_ELEMENT = {
    "add": 1,          # x + y
    "gelu": 8,         # 0.5 · x · (1 + erf(x / √2)), erf counted as a few FLOPs
    "silu": 4,         # x / (1 + exp(−x)): negate, exp, add, divide
    "softmax": 5,      # max, subtract, exp, sum, divide
    "layer_norm": 7,   # mean, subtract, square, sum, normalise, weight, bias
    "rms_norm": 4,     # square, sum, normalise, weight
    "row_sum": 1,      # one add per element
}

def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    return device.default_dtype() if dtype is None else dtype


def _randn(*shape, dtype):
    return torch.randn(*shape, device=device.DEVICE, dtype=dtype)


# ----------------------------------------------------------------------------
# Memory: an elementwise op whose time tracks bytes
# ----------------------------------------------------------------------------

def elementwise_sweep(sizes, dtype: torch.dtype | None = None) -> list[dict]:
    """Time ``F.gelu(x)`` on ``n`` elements for each ``n`` in ``sizes``.

    Bytes moved: x read once, y written once, ``2 · n · s``. Returns one record
    per size: ``{n, bytes, us, GBps}``. Small sizes measure the fixed cost of a
    launch; large ones the HBM bandwidth.
    """
    measure._require_gpu("elementwise_sweep")
    dtype = _dtype(dtype)
    records = []
    for n in sizes:
        op = roofline.elementwise(int(n), dtype, n_inputs=1, n_outputs=1,
                                  flops_per_element=FLOPS_PER_ELEMENT["gelu"])
        x = _randn(int(n), dtype=dtype)
        us = measure.bench_us(lambda: F.gelu(x))
        records.append({"n": int(n), "bytes": int(op.bytes), "us": measure.sig(us),
                        "GBps": measure.sig(op.bytes / us / 1e3)})
        del x
    return records


# ----------------------------------------------------------------------------
# Compute: a matmul whose time tracks FLOPs
# ----------------------------------------------------------------------------

def matmul_sweep(sizes, dtype: torch.dtype | None = None) -> list[dict]:
    """``measure.matmul_flops`` (cuBLAS on square ``n × n`` matrices) for each ``n`` in ``sizes``,
    with the roofline's counts: ``2·n³`` FLOPs, at least ``3·n²·s`` bytes (read a and b, write c).
    Returns ``{n, flops, bytes, us, TFLOPs}`` per size."""
    measure._require_gpu("matmul_sweep")
    dtype = _dtype(dtype)
    records = []
    for n in sizes:
        op = roofline.matmul(int(n), int(n), int(n), dtype)
        r = measure.matmul_flops(int(n), dtype)
        records.append({"n": r["n"], "flops": int(op.flops), "bytes": int(op.bytes), "us": r["us"],
                        "TFLOPs": r["TFLOPs"]})
    return records


# ----------------------------------------------------------------------------
# Overhead: a tiny op that is all launch cost
# ----------------------------------------------------------------------------

def _wall_us_per_call(fn, calls: int) -> float:
    """Host-clock µs per call of ``fn`` over ``calls`` back-to-back calls, one sync at the end.

    The GPU runs the calls asynchronously; when each kernel is shorter than the
    CPU's cost of launching it, the GPU waits for the CPU and this measures the
    launch path (Python, the dispatcher, the CUDA driver)."""
    for _ in range(min(calls, 20)):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / calls


def launch_overhead(dtype: torch.dtype | None = None, *, numel: int = 1024, n_ops: int = 100,
                    calls: int = 2000) -> dict:
    """A tiny ``torch.add(x, y, out=z)`` on ``numel`` elements, timed four ways.

    All figures are µs *per op*:

    * ``eager_wall_us`` — host clock over ``calls`` eager calls with one sync at
      the end: what a Python loop of tiny ops costs;
    * ``kernel_us`` — ``do_bench`` GPU time of one such add: the kernel alone,
      with its fixed cost to start and drain but no CPU in the way;
    * ``graph_us`` — ``n_ops`` adds captured in one ``torch.cuda.CUDAGraph``,
      replay time (``do_bench``) ÷ ``n_ops``: the CPU launches the whole graph
      once; ``graph_wall_us`` is the same on the host clock;
    * ``batched_us`` — the same work as one add over ``n_ops × numel`` elements
      (``do_bench``) ÷ ``n_ops``: one launch instead of ``n_ops``.

    ``bytes`` is one tiny add's traffic (two inputs read, one output written).
    """
    measure._require_gpu("launch_overhead")
    dtype = _dtype(dtype)
    x, y = _randn(numel, dtype=dtype), _randn(numel, dtype=dtype)
    z = torch.empty_like(x)

    def tiny():
        torch.add(x, y, out=z)

    eager_wall = _wall_us_per_call(tiny, calls)
    kernel = measure.bench_us(tiny)

    # Capture n_ops tiny adds in one CUDA graph (warm up on a side stream first,
    # as the CUDA-graphs documentation asks).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            tiny()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n_ops):
            tiny()
    graph_us = measure.bench_us(graph.replay) / n_ops
    graph_wall = _wall_us_per_call(graph.replay, max(1, calls // n_ops)) / n_ops

    # The same work batched into one launch.
    xb, yb = _randn(n_ops * numel, dtype=dtype), _randn(n_ops * numel, dtype=dtype)
    zb = torch.empty_like(xb)
    batched_total = measure.bench_us(lambda: torch.add(xb, yb, out=zb))

    op = roofline.elementwise(numel, dtype, n_inputs=2, n_outputs=1, flops_per_element=1)
    return {
        "op": "torch.add(x, y, out=z)",
        "numel": int(numel),
        "bytes": int(op.bytes),
        "n_ops": int(n_ops),
        "eager_wall_us": measure.sig(eager_wall),
        "kernel_us": measure.sig(kernel),
        "graph_us": measure.sig(graph_us),
        "graph_wall_us": measure.sig(graph_wall),
        "batched_us": measure.sig(batched_total / n_ops),
        "batched_total_us": measure.sig(batched_total),
    }


# ----------------------------------------------------------------------------
# Representative ops of a transformer, for the roofline
# ----------------------------------------------------------------------------

def _op_cases(dtype: torch.dtype, rows: int, cols: int, d: int, small_batch: int):
    """(kind, roofline.Op, make) for each representative op; ``make()`` allocates
    the inputs and returns the function to time."""
    fpe = FLOPS_PER_ELEMENT
    n = rows * cols
    shape = f"{rows}×{cols}"

    def unary(fn):
        def make():
            x = _randn(rows, cols, dtype=dtype)
            return lambda: fn(x)
        return make

    def add():
        x, y = _randn(rows, cols, dtype=dtype), _randn(rows, cols, dtype=dtype)
        return lambda: x + y

    def norm(kind):
        def make():
            x = _randn(rows, cols, dtype=dtype)
            w, b = _randn(cols, dtype=dtype), _randn(cols, dtype=dtype)
            if kind == "layer_norm":
                return lambda: F.layer_norm(x, (cols,), w, b)
            return lambda: F.rms_norm(x, (cols,), w, eps=1e-6)
        return make

    def mm(M, N, K):
        def make():
            a, b = _randn(M, K, dtype=dtype), _randn(K, N, dtype=dtype)
            return lambda: a @ b
        return make

    ew = roofline.elementwise
    red = roofline.reduction
    return [
        ("elementwise", ew(n, dtype, n_inputs=2, flops_per_element=fpe["add"],
                           name=f"add {shape}"), add),
        ("elementwise", ew(n, dtype, flops_per_element=fpe["gelu"], name=f"gelu {shape}"),
         unary(F.gelu)),
        ("elementwise", ew(n, dtype, flops_per_element=fpe["silu"], name=f"silu {shape}"),
         unary(F.silu)),
        ("reduction", red(rows, cols, dtype, fpe["softmax"], name=f"softmax {shape}"),
         unary(lambda x: torch.softmax(x, dim=-1))),
        ("reduction", red(rows, cols, dtype, fpe["layer_norm"], name=f"layer_norm {shape}"),
         norm("layer_norm")),
        ("reduction", red(rows, cols, dtype, fpe["rms_norm"], name=f"rms_norm {shape}"),
         norm("rms_norm")),
        ("reduction", red(rows, cols, dtype, fpe["row_sum"], out_cols=1, name=f"row sum {shape}"),
         unary(lambda x: x.sum(dim=-1))),
        ("matmul", roofline.matmul(small_batch, d, d, dtype, name=f"matmul {small_batch}×{d}×{d}"),
         mm(small_batch, d, d)),
        ("matmul", roofline.matmul(d, d, d, dtype, name=f"matmul {d}×{d}×{d}"), mm(d, d, d)),
    ]


def representative_ops(dtype: torch.dtype | None = None, *, rows: int = 8192, cols: int = 4096,
                       d: int = 8192, small_batch: int = 16) -> list[dict]:
    """Time ops a transformer runs and give each its FLOPs and minimum bytes.

    Elementwise (add, GELU, SiLU) and row-wise (softmax, LayerNorm, RMSNorm, a
    row sum) ops on a ``rows × cols`` activation; a decode-like matmul
    ``(small_batch, d) @ (d, d)`` and a square ``d³`` one. Norm weights and
    biases (``cols`` elements) are left out of the bytes: they are negligible.
    Returns ``{name, kind, flops, bytes, us}`` per op; ``as_op`` turns one back
    into a ``roofline.Op``.
    """
    measure._require_gpu("representative_ops")
    dtype = _dtype(dtype)
    records = []
    for kind, op, make in _op_cases(dtype, rows, cols, d, small_batch):
        fn = make()
        us = measure.bench_us(fn)
        records.append({"name": op.name, "kind": kind, "flops": int(op.flops), "bytes": int(op.bytes),
                        "us": measure.sig(us)})
        del fn
    return records


def as_op(record: dict) -> roofline.Op:
    """The ``roofline.Op`` of a record from ``representative_ops`` (or a measurement file)."""
    return roofline.Op(record["name"], record["flops"], record["bytes"])


# ----------------------------------------------------------------------------
# torch.profiler: where a small MLP block's time goes
# ----------------------------------------------------------------------------

def _mlp_block(tokens: int, d: int, dtype: torch.dtype, dev):
    """linear (d → 4d) → GELU → linear (4d → d) → softmax over the last dim."""
    def param(*shape):
        return torch.randn(*shape, device=dev, dtype=dtype) / math.sqrt(shape[-1])

    x = param(tokens, d)
    w1, b1, w2, b2 = param(4 * d, d), param(4 * d), param(d, 4 * d), param(d)

    @torch.no_grad()
    def block():
        h = F.linear(x, w1, b1)       # (T, 4d)
        h = F.gelu(h)                  # (T, 4d): read once, written once
        y = F.linear(h, w2, b2)       # (T, d)
        return torch.softmax(y, dim=-1)

    return block


def _profile(block, activities, sort_by: str, iters: int, row_limit: int, sync) -> str:
    from torch.profiler import profile

    # Kineto (the profiler's backend) prints "USDT: ... profiler_start/stop" lines to stderr,
    # which would clutter a notebook's output; level 6 silences its log. Set KINETO_LOG_LEVEL
    # yourself to see it (torch 2.13, 2026-11-26).
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    block()          # warm-up: cuBLAS picks its kernels, the allocator fills its cache
    sync()
    with profile(activities=activities) as prof:
        for _ in range(iters):
            block()
        sync()
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)


PROFILE_ITERS = 5


def profile_table(dtype: torch.dtype | None = None, *, tokens: int = 4096, d: int = 4096,
                  iters: int = PROFILE_ITERS, row_limit: int = 12) -> str:
    """``torch.profiler``'s table (CPU and CUDA activity, sorted by total CUDA time) for
    ``iters`` runs of a small MLP block — linear → GELU → linear → softmax — on
    ``tokens × d`` activations."""
    measure._require_gpu("profile_table")
    from torch.profiler import ProfilerActivity

    block = _mlp_block(tokens, d, _dtype(dtype), device.DEVICE)
    return _profile(block, [ProfilerActivity.CPU, ProfilerActivity.CUDA], "cuda_time_total",
                    iters, row_limit, torch.cuda.synchronize)


def cpu_profile_table(*, tokens: int = 64, d: int = 128, iters: int = 5, row_limit: int = 12) -> str:
    """The same MLP block profiled **on the CPU**, in fp32, sorted by CPU time.

    Only to show how to read ``torch.profiler``'s table on a machine without a
    GPU: CPU times say nothing about a GPU's."""
    from torch.profiler import ProfilerActivity

    block = _mlp_block(tokens, d, torch.float32, torch.device("cpu"))
    return _profile(block, [ProfilerActivity.CPU], "cpu_time_total", iters, row_limit, lambda: None)


_TIME_UNITS = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}


def _parse_cell(text: str):
    """A cell of the profiler's table as a number: times in µs, percentages as numbers."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    if text.endswith("%"):
        return float(text[:-1])
    for unit in ("ns", "us", "µs", "ms", "s"):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * _TIME_UNITS[unit]
            except ValueError:
                break
    return text


def parse_profile_table(table: str) -> dict[str, dict]:
    """The rows of ``key_averages().table(...)`` as ``{name: {column: value}}``, times in µs.

    Columns are separated by two or more spaces; names the profiler shortened end in
    ``...``. For reading a table back (the shipped one is a string), e.g.
    ``parse_profile_table(t)["aten::gelu"]["Self CUDA"]``."""
    import re

    lines = [ln for ln in table.splitlines() if ln.strip() and not set(ln.strip()) <= {"-", " "}]
    header = next((ln for ln in lines if "Name" in ln.split()), None)
    if header is None:
        raise ValueError("not a torch.profiler table: no header line with a 'Name' column")
    columns = re.split(r"\s{2,}", header.strip())
    rows = {}
    for ln in lines[lines.index(header) + 1:]:
        cells = re.split(r"\s{2,}", ln.strip())
        if len(cells) != len(columns):
            continue   # the totals under the table
        rows[cells[0]] = {c: _parse_cell(v) for c, v in zip(columns[1:], cells[1:])}
    return rows


# ----------------------------------------------------------------------------
# The measurement file
# ----------------------------------------------------------------------------

LAUNCH_KEYS = ("numel", "bytes", "n_ops", "eager_wall_us", "kernel_us", "graph_us", "graph_wall_us",
               "batched_us")

#: bottlenecks_<gpu>.json
SCHEMA = measure.Schema(
    "bottlenecks file",
    keys=("dtype", "elementwise", "matmul", "launch_overhead", "ops", "profile_table"),
    numbers=tuple(f"launch_overhead.{k}" for k in LAUNCH_KEYS),
    records=(
        measure.Records("elementwise", numbers=("n", "bytes", "us", "GBps")),
        measure.Records("matmul", numbers=("n", "flops", "bytes", "us", "TFLOPs")),
        measure.Records("ops", numbers=("flops", "bytes", "us"), keys=("name", "kind")),
    ),
)


def validate(doc: dict) -> None:
    """Raise ValueError naming the first thing in a ``bottlenecks_<gpu>.json`` that is off:
    ``SCHEMA``, a known dtype, named ops and a non-empty profiler table."""
    measure.validate(doc, SCHEMA)

    def need(cond, what):
        if not cond:
            raise ValueError(f"{SCHEMA.name}: {what}")

    need(doc["dtype"] in device.DTYPES, f"dtype {doc['dtype']!r} is not one of {sorted(device.DTYPES)}")
    for i, r in enumerate(doc["ops"]):
        need(isinstance(r["name"], str) and r["name"], f"ops[{i}] lacks a name")
    need(isinstance(doc["profile_table"], str) and doc["profile_table"].strip(),
         "profile_table must be a non-empty string")


def run(dtype: torch.dtype | None = None, profile: device.Profile | None = None) -> dict:
    """Every measurement of the chapter at ``profile``'s sizes, as the file's payload."""
    measure._require_gpu("bottlenecks.run")
    dtype = _dtype(dtype)
    prof = profile or device.profile()
    sz = prof.bottlenecks
    return {
        "provenance": measure.provenance(),
        "dtype": device.dtype_name(dtype),
        "profile": prof.name,
        "timing": "triton.testing.do_bench, L2 flushed, median (µs); *_wall_us: host clock, "
                  "sync at the end",
        "elementwise_op": ELEMENTWISE_OP,
        "elementwise": elementwise_sweep(sz.elementwise, dtype),
        "matmul": matmul_sweep(prof.matmul_sizes, dtype),
        "launch_overhead": launch_overhead(dtype, numel=sz.launch_numel, n_ops=sz.launch_ops),
        "flops_per_element": dict(FLOPS_PER_ELEMENT),
        "ops": representative_ops(dtype, rows=sz.rows, cols=sz.cols, d=sz.d, small_batch=sz.small_batch),
        "profile_block": {"tokens": sz.mlp_tokens, "d": sz.mlp_d, "iters": PROFILE_ITERS,
                          "layers": "linear (d → 4d) → GELU → linear (4d → d) → softmax"},
        "profile_table": profile_table(dtype, tokens=sz.mlp_tokens, d=sz.mlp_d, iters=PROFILE_ITERS),
    }


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.bottlenecks --out-dir DIR``: measure and write ``DIR/bottlenecks_<gpu>.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m infer_lib.experiments.bottlenecks",
        description="Measure where time goes on this GPU (chapter 2) and write bottlenecks_<gpu>.json.",
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for bottlenecks_<gpu>.json")
    parser.add_argument("--dtype", choices=sorted(device.DTYPES),
                        help="dtype of every op (default: infer_lib.device.default_dtype())")
    parser.add_argument("--profile", choices=sorted(device.PROFILES),
                        help="problem sizes (default: infer_lib.device.profile(); 'cpu' = tiny, for tests)")
    args = parser.parse_args(argv)
    if not device.HAS_GPU:
        parser.exit(2, "python -m infer_lib.experiments.bottlenecks needs a CUDA GPU: timings of the CPU say "
                       "nothing about GPU performance. The shipped reference measurement is "
                       "infer_lib/data/bottlenecks_h100_sxm.json.\n")
    dtype = device.DTYPES[args.dtype] if args.dtype else device.default_dtype()
    prof = device.PROFILES[args.profile] if args.profile else device.profile()
    t0 = time.perf_counter()
    payload = run(dtype, prof)
    validate(payload)
    path = measure.save(payload, args.out_dir / f"bottlenecks_{measure.gpu_key()}.json")

    big = max(payload["elementwise"], key=lambda r: r["n"])
    top = max(payload["matmul"], key=lambda r: r["TFLOPs"])
    lo = payload["launch_overhead"]
    print(f"{payload['provenance']['gpu']}, {payload['dtype']}, {time.perf_counter() - t0:.0f} s:")
    print(f"  gelu on {big['n']:,} elements: {big['GBps']:.0f} GB/s")
    print(f"  matmul: up to {top['TFLOPs']:.0f} TFLOP/s (n = {top['n']})")
    print(f"  tiny add: eager {lo['eager_wall_us']:.2f} µs, kernel {lo['kernel_us']:.2f} µs, "
          f"CUDA graph {lo['graph_us']:.2f} µs, batched {lo['batched_us']:.4f} µs per op")
    print(f"  -> {path}")


if __name__ == "__main__":
    main()
