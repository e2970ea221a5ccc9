"""Timing, the two ceilings and measurement files: how every number in the course is taken and stored.

* ``bench_us`` — median time of a GPU function in µs with L2 flushed between
  repetitions (``triton.testing.do_bench``): what a kernel costs when its
  inputs come from HBM.
* ``bench_us_hot`` — median time *without* flushing L2 (CUDA-graph replays,
  ``triton.testing.do_bench_cudagraph``): buffers that fit in L2 show L2's
  bandwidth, which is what the bandwidth-vs-size sweep of chapter 1 is about.
* ``copy_bandwidth`` and ``matmul_flops`` — the two ceilings every kernel is
  held to: what a plain copy moves and what cuBLAS computes. Each is measured
  here and nowhere else; the benchmark's limits, the chapters' ceilings and
  ``python -m infer_lib.experiments.ceilings`` all call them.
* ``provenance`` — the block every measurement file carries (GPU, capability,
  driver, CUDA, torch, triton, Python, date, the code's commit).
* ``validate`` — one checker for every measurement file, driven by a small
  declarative ``Schema`` that each file's module writes down.
* ``save`` / ``load_reference`` — measurement files ``<topic>_<gpu>.json`` in
  ``infer_lib/data/`` (package data, so a Colab install has them).
* ``format_bytes`` — 4 KiB, 1 MiB, 2 GiB: how sizes are written in labels.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from . import device, hardware

#: The GPU whose measurements the chapters lead with.
REFERENCE_GPU = "h100_sxm"
#: Every GPU whose measurement files ship in ``infer_lib/data`` (each topic, one file per GPU).
SHIPPED_GPUS = ("h100_sxm", "h200")


def _require_gpu(what: str) -> None:
    if not device.HAS_GPU:
        raise RuntimeError(
            f"{what} needs a CUDA GPU: timings of the CPU interpreter say nothing about GPU "
            "performance. Use the shipped reference data (infer_lib.measure.load_reference) instead."
        )


def bench_us(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median runtime of ``fn`` in microseconds, L2 flushed before every repetition."""
    _require_gpu("bench_us")
    from triton.testing import do_bench

    return 1e3 * do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def bench_us_hot(fn: Callable[[], object], rep_ms: int = 50) -> float:
    """Median runtime of ``fn`` in microseconds, replayed from a CUDA graph with L2 left warm."""
    _require_gpu("bench_us_hot")
    from triton.testing import do_bench_cudagraph

    return 1e3 * do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")


def timer(smoke: bool, *, hot: bool = True) -> Callable[[Callable[[], object]], float]:
    """The timer of a measurement: GPU time from CUDA-graph replays (``bench_us_hot``), or with
    ``hot=False`` the eager call after an L2 flush (``bench_us``); under ``smoke`` (the plumbing
    on any machine) a wall clock of one call, never reported as performance."""
    if smoke:
        return lambda fn: wall_us(fn, reps=1)
    return bench_us_hot if hot else bench_us


def wall_us(fn: Callable[[], object], reps: int = 3) -> float:
    """Median wall-clock time in µs; only for plumbing tests on the CPU, never reported as performance."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device.HAS_GPU:
            torch.cuda.synchronize()
        times.append(1e6 * (time.perf_counter() - t0))
    times.sort()
    return times[len(times) // 2]


def sig(x: float, digits: int = 5) -> float:
    """Round to significant digits: compact measurement files, and tiny smoke-run values stay > 0."""
    return float(f"{x:.{digits}g}")


# ----------------------------------------------------------------------------
# The two ceilings: copy bandwidth and cuBLAS FLOP/s
# ----------------------------------------------------------------------------

#: buffer size of the copy-bandwidth ceiling: 1 GiB, far beyond any GPU's L2
COPY_LIMIT_BYTES = 2**30
#: matrix size of the matmul ceiling: 8192³, large enough for cuBLAS to reach its best
MATMUL_LIMIT_N = 8192


def copy_bandwidth(nbytes: int = COPY_LIMIT_BYTES, dtype: torch.dtype = torch.float32, *,
                   smoke: bool = False) -> dict:
    """Device-to-device copy bandwidth for a buffer of ``nbytes`` bytes: ``{bytes, us, GBps}``.

    Times ``torch.mul(src, 1, out=dst)`` — one read and one write per element, by an
    ordinary elementwise kernel on the SMs, as every memory-bound kernel of the course
    moves its bytes — replayed from a CUDA graph with L2 left warm
    (``bench_us_hot``: median). Buffers smaller than the L2 therefore show L2's
    bandwidth; at the default 1 GiB it is HBM's. ``GBps`` counts bytes read plus
    bytes written, ``2 · bytes``.

    Why this operation: on an H200 (2026-12-01, torch 2.11, triton 3.6) a 1 GiB copy
    moved 4212 GB/s as ``src.clone()`` (``do_bench``, L2 flushed), 4244 as
    ``dst.copy_(src)`` (``do_bench``) and 4256 as this ``mul`` in a CUDA graph, but
    only 2769 as ``dst.copy_(src)`` captured in a CUDA graph: captured, ``copy_``
    becomes a memcpy node instead of a kernel node, and the driver runs memcpy nodes
    its own way (on the copy engines rather than the SMs, as far as we can tell),
    which is not how a kernel moves memory. So never ``copy_`` in a graph.

    ``smoke=True`` runs the same operation on whatever device there is and times it
    with a wall clock: a plumbing test, never a measurement.
    """
    if not smoke:
        _require_gpu("copy_bandwidth")
    itemsize = dtype.itemsize
    numel = int(nbytes) // itemsize
    if numel < 1:
        raise ValueError(f"a buffer of {nbytes} bytes holds no {dtype} element ({itemsize} bytes)")
    src = torch.randn(numel, dtype=dtype, device=device.DEVICE)
    dst = torch.empty_like(src)

    def copy():
        # reads src once, writes dst once; not dst.copy_(src) (see above)
        torch.mul(src, 1, out=dst)

    us = wall_us(copy, reps=1) if smoke else bench_us_hot(copy)
    del src, dst  # sweeps climb to GiB buffers: free each before the next
    size = numel * itemsize
    return {"bytes": size, "us": sig(us), "GBps": sig(2 * size / us / 1e3)}


def matmul_flops(n: int = MATMUL_LIMIT_N, dtype: torch.dtype | str | None = None, *,
                 smoke: bool = False) -> dict:
    """FLOP/s of cuBLAS through ``torch.matmul`` on random square n×n @ n×n matrices:
    ``{n, dtype, us, TFLOPs}``.

    ``2·n³`` FLOPs per product, timed with ``bench_us`` (``triton.testing.do_bench``:
    median, L2 flushed). ``dtype`` defaults to ``device.default_dtype()``. float32 runs
    on the plain FP32 units unless ``torch.backends.cuda.matmul.allow_tf32`` is on.
    ``smoke=True``: the same product on whatever device there is, wall clock, tiny
    ``n``: a plumbing test, never a measurement.
    """
    if not smoke:
        _require_gpu("matmul_flops")
    dtype = device.default_dtype() if dtype is None else device.dtype_from_name(dtype)
    a = torch.randn(n, n, dtype=dtype, device=device.DEVICE)
    b = torch.randn(n, n, dtype=dtype, device=device.DEVICE)
    us = wall_us(lambda: torch.matmul(a, b), reps=1) if smoke else bench_us(lambda: torch.matmul(a, b))
    del a, b
    return {"n": int(n), "dtype": device.dtype_name(dtype), "us": sig(us), "TFLOPs": sig(2 * n**3 / us / 1e6)}


def _driver_and_cuda() -> tuple[str | None, str | None]:
    driver = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0:
            driver = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return driver, torch.version.cuda


def commit() -> str | None:
    """The commit of the code that measures: ``INFER_LIB_COMMIT`` if set (the GPU check sets it,
    because the GPU machine gets a copy of the tree without ``.git``), else ``git rev-parse HEAD``
    of the repository this package sits in, else None (e.g. a pip install)."""
    if os.environ.get("INFER_LIB_COMMIT"):
        return os.environ["INFER_LIB_COMMIT"]
    package = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    # Only the repository whose top level holds this package: not some repository that
    # happens to contain a virtual environment with infer_lib installed in it.
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != package.parent:
        return None
    return lines[1]


def provenance() -> dict:
    """Where and when a measurement was taken, and with which code (``commit``)."""
    driver, cuda = _driver_and_cuda() if device.HAS_GPU else (None, None)
    cap = device.capability()
    return {
        "gpu": device.gpu_name() or "none (CPU)",
        "gpu_key": gpu_key(),
        "capability": f"{cap[0]}.{cap[1]}" if cap else None,
        "driver": driver,
        "cuda": cuda,
        "torch": torch.__version__,
        "triton": device.triton_version(),
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "interpreted": device.INTERPRET,
        "commit": commit(),
    }


def gpu_key() -> str:
    """Key of this GPU in ``infer_lib.hardware.SPECS`` (e.g. ``h100_sxm``), a slug of its name
    for GPUs not in the table, or ``cpu``."""
    if not device.HAS_GPU:
        return "cpu"
    spec = hardware.detect()
    if spec is not None and spec.key in hardware.SPECS:
        return spec.key
    return re.sub(r"[^a-z0-9]+", "_", (device.gpu_name() or "gpu").lower()).strip("_")


def label(prov: dict) -> str:
    """Short legend label for a provenance block, e.g. ``NVIDIA H100 80GB HBM3, 2026-11-26``."""
    return f"{prov['gpu']}, {prov['date']}"


def long_label(prov: dict) -> str:
    return (f"{prov['gpu']} (sm_{(prov.get('capability') or '?').replace('.', '')}), measured "
            f"{prov['date']} with torch {prov['torch']}, triton {prov['triton']}")


def format_bytes(nbytes: float) -> str:
    """``4096`` → ``"4 KiB"``, ``3 * 2**30`` → ``"3 GiB"``: sizes in binary units, as labels write them."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


# ----------------------------------------------------------------------------
# Measurement files: one checker, a schema per file
# ----------------------------------------------------------------------------

#: what every provenance block holds (``provenance()`` writes these and ``commit``,
#: which files measured before 2026-12-01 lack)
PROVENANCE_KEYS = ("gpu", "gpu_key", "capability", "driver", "cuda", "torch", "triton", "python", "date",
                   "interpreted")


@dataclass(frozen=True)
class Records:
    """A list of records in a measurement file, at ``path``.

    Paths are dotted keys; ``*`` stands for every value of a dict (``"records.*"``: a dict of
    record lists, one per dtype). The list must hold at least one record; every record must
    have the ``numbers`` (finite numbers > 0) and the ``keys`` (anything). Fields may be dotted
    paths too (``"ours.us"``, ``"peers.*.us"``).
    """

    path: str
    numbers: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    #: the path may be missing altogether (its records are checked when it is there)
    optional: bool = False


@dataclass(frozen=True)
class Schema:
    """What a measurement file must hold; ``validate`` checks a document against it.

    ``name`` starts every error message. ``keys``: dotted paths that must exist.
    ``numbers``: dotted paths to finite numbers > 0 (``*`` allowed: every one of them,
    at least one). ``records``: the file's record lists. The provenance block must
    have ``provenance`` (default ``PROVENANCE_KEYS``).
    """

    name: str
    keys: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    records: tuple[Records, ...] = ()
    provenance: tuple[str, ...] = PROVENANCE_KEYS


class _Missing(Exception):
    pass


def _resolve(node, path: str, where: str = "") -> list[tuple[str, object]]:
    """Every ``(location, value)`` that the dotted ``path`` reaches from ``node``."""
    if not path:
        return [(where, node)]
    head, _, rest = path.partition(".")
    if head == "*":
        if isinstance(node, dict):
            items = [(f"{where}.{k}" if where else str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(node)]
        else:
            raise _Missing(f"{where or 'the document'} must be a dict or a list")
        return [hit for loc, v in items for hit in _resolve(v, rest, loc)]
    if not isinstance(node, dict):
        raise _Missing(f"{where or 'the document'} must be a dict")
    if head not in node:
        raise _Missing(f"{where} lacks {head!r}" if where else f"missing top-level key {head!r}")
    return _resolve(node[head], rest, f"{where}.{head}" if where else head)


def is_positive(x) -> bool:
    """A finite number > 0 (not a bool): what every time, size and rate in a file must be."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def validate(doc: dict, schema: Schema) -> None:
    """Raise ValueError naming the first thing in ``doc`` that ``schema`` does not allow."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"{schema.name}: {what}")

    def resolve(node, path: str, where: str = "") -> list[tuple[str, object]]:
        try:
            return _resolve(node, path, where)
        except _Missing as missing:
            raise ValueError(f"{schema.name}: {missing}") from None

    need(isinstance(doc, dict), "the document must be a JSON object")
    for key in ("provenance", *(k for k in schema.keys if "." not in k)):
        need(key in doc, f"missing top-level key {key!r}")
    need(isinstance(doc["provenance"], dict), "provenance must be a dict")
    for key in schema.provenance:
        need(key in doc["provenance"], f"provenance lacks {key!r}")
    for path in schema.keys:
        resolve(doc, path)
    for path in schema.numbers:
        hits = resolve(doc, path)
        need(bool(hits), f"{path} is empty")
        for where, value in hits:
            need(is_positive(value), f"{where} must be a finite number > 0, got {value!r}")
    for spec in schema.records:
        try:
            lists = _resolve(doc, spec.path)
        except _Missing as missing:
            need(spec.optional, str(missing))
            continue
        need(bool(lists), f"{spec.path} is empty")
        for where, records in lists:
            need(isinstance(records, list) and records, f"{where} must be a non-empty list")
            for i, record in enumerate(records):
                loc = f"{where}[{i}]"
                need(isinstance(record, dict), f"{loc} must be a dict")
                for field in spec.keys:
                    resolve(record, field, loc)
                for field in spec.numbers:
                    for at, value in resolve(record, field, loc):
                        need(is_positive(value), f"{at} must be a finite number > 0, got {value!r}")


def data_dir() -> Path:
    return Path(str(resources.files("infer_lib") / "data"))


def reference_path(topic: str, gpu: str = REFERENCE_GPU) -> Path:
    return data_dir() / f"{topic}_{gpu}.json"


def load_reference(topic: str, gpu: str = REFERENCE_GPU) -> dict:
    """Load a shipped measurement file, e.g. ``load_reference("bench")``."""
    path = reference_path(topic, gpu)
    if not path.exists():
        have = sorted(p.stem for p in data_dir().glob("*.json"))
        raise FileNotFoundError(f"no measurement file {path.name} in infer_lib/data (have: {have})")
    return json.loads(path.read_text())


def load_references(topic: str) -> dict[str, dict]:
    """Every shipped measurement file of ``topic``, ``{gpu_key: document}`` in the order of
    ``SHIPPED_GPUS`` (the reference GPU first): what a chapter plots to show more than one card.
    A GPU measured before the topic existed has no file and is left out (the H100 has none for
    chapters 5-6); a topic with no file at all is an error."""
    docs = {gpu: load_reference(topic, gpu) for gpu in SHIPPED_GPUS if reference_path(topic, gpu).exists()}
    if not docs:
        load_reference(topic)           # raises, naming the files there are
    return docs


def save(payload: dict, path: str | Path) -> Path:
    """Write a measurement file; ``payload`` gets a ``provenance`` block if it lacks one."""
    payload = {"provenance": provenance(), **payload} if "provenance" not in payload else payload
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
