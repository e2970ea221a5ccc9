"""Timing and measurement files: how every number in the course is taken and stored.

* ``bench_us`` — median time of a GPU function in µs with L2 flushed between
  repetitions (``triton.testing.do_bench``): what a kernel costs when its
  inputs come from HBM.
* ``bench_us_hot`` — median time *without* flushing L2 (CUDA-graph replays,
  ``triton.testing.do_bench_cudagraph``): buffers that fit in L2 show L2's
  bandwidth, which is what the bandwidth-vs-size sweep of chapter 1 is about.
* ``provenance`` — the block every measurement file carries (GPU, capability,
  driver, CUDA, torch, triton, Python, date).
* ``save`` / ``load_reference`` — measurement files ``<topic>_<gpu>.json`` in
  ``infer_lib/data/`` (package data, so a Colab install has them).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from . import device

#: The GPU whose measurements ship with the course.
REFERENCE_GPU = "h100_sxm"


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


def provenance() -> dict:
    """Where and when a measurement was taken."""
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
    }


def gpu_key() -> str:
    """Key of this GPU in ``infer_lib.hardware.SPECS`` (e.g. ``h100_sxm``), a slug of its name
    for GPUs not in the table, or ``cpu``."""
    if not device.HAS_GPU:
        return "cpu"
    from . import hardware

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


def save(payload: dict, path: str | Path) -> Path:
    """Write a measurement file; ``payload`` gets a ``provenance`` block if it lacks one."""
    payload = {"provenance": provenance(), **payload} if "provenance" not in payload else payload
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
