"""The benchmark harness: cases, timing, limits, records, and the JSON layout.

A *case* is one of our kernels at one shape: our implementation, the PyTorch
peers it is compared with, and the bytes and FLOPs it must move and do
(formulas in ``cases.py``). Every case is checked for correctness against every
peer before it is timed, and every peer is timed in the same run as ours, so
ratios compare like with like.

The *limits* are what no kernel can beat on this GPU: the copy bandwidth
(``measure.copy_bandwidth``) and cuBLAS's FLOP/s (``measure.matmul_flops``),
measured once per run — the ceilings at 1 GiB and 8192³, and short sweeps
around them. Each record says which limit it is held to and what fraction of
it ours reaches.

Times (``us``) are GPU times: medians in µs of the operation replayed from a
CUDA graph (``measure.bench_us_hot``, ``triton.testing.do_bench_cudagraph``),
ours and every peer alike. A graph replays the kernels without the Python that
launched them, which is how a decoding step runs in a serving engine, and the
only way to see a 30 µs decode-shaped kernel at all on a host whose Python
launch path costs as much (``TIMING`` says it in every file's provenance). The
eager time of the same call is kept beside it as ``eager_us``: ``triton.testing.do_bench``,
which flushes the L2 before each call; the host queues the call while the flush
runs, so its launch shows only where it takes longer than the flush (tens of µs). Every case but the 1024³ matmul
moves far more than the L2 holds, so the warm L2 of graph replays changes
little; the copy limit is timed the same way. Under ``--smoke`` the same
plumbing runs at tiny sizes on whatever device there is and times with a wall
clock; such files are marked ``"smoke": true`` and mean nothing as performance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import device, measure
from ..measure import sig

UNITS = ("GB/s", "TFLOP/s")


@dataclass
class Case:
    kernel: str
    case: str
    params: dict
    unit: str
    bytes: int
    flops: int
    ours: tuple[str, Callable[[], object]]
    peers: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    #: which limit the case is measured against: "copy" or "matmul:<dtype>"
    limit: str = "copy"
    #: tolerances for the pre-timing check of ours against every peer
    atol: float = 1e-2
    rtol: float = 1e-2
    #: after timing: what our implementation chose (e.g. the autotuner's tile), kept in the record
    info: Callable[[], dict] | None = None


def value(unit: str, nbytes: int, flops: int, us: float) -> float:
    """GB/s (1e9 bytes per second) or TFLOP/s from a time in µs."""
    if unit == "GB/s":
        return nbytes / us / 1e3
    if unit == "TFLOP/s":
        return flops / us / 1e6
    raise ValueError(f"unknown unit {unit!r}; use one of {UNITS}")


#: How ``us`` was timed, recorded in every bench file's provenance.
TIMING = ("us: GPU time, median of CUDA-graph replays (triton.testing.do_bench_cudagraph, L2 warm), "
          "launch excluded; eager_us: one eager call right after an L2 flush (triton.testing.do_bench "
          "median), whose host launch shows only where it outlasts the flush")
SMOKE_TIMING = "wall clock of one call (--smoke): plumbing only, not a measurement"


#: the limits' sweeps around their ceilings (the ceilings are 1 GiB and 8192³)
LIMIT_COPY_SIZES = (2**26, 2**28, measure.COPY_LIMIT_BYTES, 2**32)   # 64 MiB … 4 GiB
LIMIT_MATMUL_SIZES = (1024, 4096, measure.MATMUL_LIMIT_N)
#: the same under --smoke, the last of each being its ceiling
SMOKE_COPY_SIZES = (2**12, 2**16)
SMOKE_MATMUL_SIZES = (32, 64)


def measure_limits(smoke: bool = False, *, dtypes: tuple[torch.dtype, ...] | None = None,
                   sweeps: bool = True) -> dict:
    """The limits block: the two ceilings, measured now, with ``measure.copy_bandwidth`` and
    ``measure.matmul_flops``.

    ``copy_GBps``: a 1 GiB copy, far beyond L2. ``matmul_TFLOPs[dtype]``: cuBLAS at 8192³,
    in every dtype of ``dtypes`` (default ``device.kernel_dtypes()``). With ``sweeps`` (the
    bench), ``copy`` and ``matmul`` hold the measurements at every size of
    ``LIMIT_COPY_SIZES`` and ``LIMIT_MATMUL_SIZES``, the ceilings among them; without (a
    chapter that only needs the ceilings), only the ceilings are measured.
    """
    copy_bytes = SMOKE_COPY_SIZES[-1] if smoke else measure.COPY_LIMIT_BYTES
    n = SMOKE_MATMUL_SIZES[-1] if smoke else measure.MATMUL_LIMIT_N
    copy_sizes = (SMOKE_COPY_SIZES if smoke else LIMIT_COPY_SIZES) if sweeps else (copy_bytes,)
    matmul_sizes = (SMOKE_MATMUL_SIZES if smoke else LIMIT_MATMUL_SIZES) if sweeps else (n,)
    copy = [measure.copy_bandwidth(size, smoke=smoke) for size in copy_sizes]
    mm = [measure.matmul_flops(size, dtype, smoke=smoke)
          for dtype in dtypes or device.kernel_dtypes() for size in matmul_sizes]
    limits = {
        "copy_GBps": next(r["GBps"] for r in copy if r["bytes"] == copy_bytes),
        "copy_bytes": copy_bytes,
        "matmul_n": n,
        "matmul_TFLOPs": {r["dtype"]: r["TFLOPs"] for r in mm if r["n"] == n},
        "note": "copy: measure.copy_bandwidth, torch.mul(src, 1, out=dst) replayed from a CUDA graph "
                "(median, L2 warm), counting bytes read + written; matmul: measure.matmul_flops, "
                "torch.matmul (cuBLAS) n×n×n on random inputs (do_bench median, L2 flushed); fp32 uses "
                "PyTorch's default precision",
    }
    if sweeps:
        limits |= {"copy": copy, "matmul": mm}
    return limits


def limit_value(limits: dict, which: str) -> float:
    """The limit a record names: ``"copy"`` → ``copy_GBps``, ``"matmul:<dtype>"`` → ``matmul_TFLOPs[dtype]``."""
    kind, _, dtype = which.partition(":")
    if which == "copy" and "copy_GBps" in limits:
        return limits["copy_GBps"]
    if kind == "matmul" and dtype in limits.get("matmul_TFLOPs", {}):
        return limits["matmul_TFLOPs"][dtype]
    have = ["copy"] + [f"matmul:{d}" for d in limits.get("matmul_TFLOPs", {})]
    raise ValueError(f"no limit {which!r}: the limits are {', '.join(have)}")


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_case(c: Case, limits: dict, smoke: bool) -> dict:
    """Check ours against every peer (``c.atol``, ``c.rtol``), then time ours and every peer.

    Raises AssertionError naming the first peer that disagrees; a peer that returns a
    tuple or list is compared on its first element."""
    limit = limit_value(limits, c.limit)   # an unknown limit fails before anything runs
    if c.peers:
        got = _first_tensor(c.ours[1]()).float()
        for impl, fn in c.peers:
            want = _first_tensor(fn()).float()
            torch.testing.assert_close(got, want, atol=c.atol, rtol=c.rtol,
                                       msg=lambda m, impl=impl: f"{c.kernel} [{c.case}] disagrees with {impl}: {m}")
            del want
        del got
    time_us, eager_us = measure.timer(smoke), measure.timer(smoke, hot=False)
    ours_us = time_us(c.ours[1])
    ours_eager = eager_us(c.ours[1])
    peers = []
    for impl, fn in c.peers:
        us = time_us(fn)
        peers.append({"impl": impl, "us": sig(us), "value": sig(value(c.unit, c.bytes, c.flops, us)),
                      "eager_us": sig(eager_us(fn))})
    ours_value = value(c.unit, c.bytes, c.flops, ours_us)
    return {
        "kernel": c.kernel,
        "case": c.case,
        "params": c.params,
        "unit": c.unit,
        "bytes": c.bytes,
        "flops": c.flops,
        "ours": {"impl": c.ours[0], "us": sig(ours_us), "value": sig(ours_value), "eager_us": sig(ours_eager),
                 **({"info": c.info()} if c.info else {})},
        "peers": peers,
        "speedup": {p["impl"]: sig(p["us"] / ours_us, 4) for p in peers},
        "limit": c.limit,
        "fraction_of_limit": sig(ours_value / limit, 4),
    }


# ----------------------------------------------------------------------------
# The layout, checked by tests on both --smoke output and the shipped files
# ----------------------------------------------------------------------------

RECORD_KEYS = ("kernel", "case", "params", "unit", "bytes", "flops", "ours", "peers", "speedup", "limit",
               "fraction_of_limit")

SCHEMA = measure.Schema(
    "bench file",
    provenance=(*measure.PROVENANCE_KEYS, "timing"),
    keys=("limits", "records"),
    numbers=("limits.copy_GBps", "limits.copy_bytes", "limits.matmul_n", "limits.matmul_TFLOPs.*"),
    records=(
        measure.Records("limits.copy", numbers=("bytes", "us", "GBps")),
        measure.Records("limits.matmul", numbers=("n", "us", "TFLOPs"), keys=("dtype",)),
        measure.Records("records", keys=RECORD_KEYS,
                        numbers=("ours.us", "ours.value", "peers.*.us", "peers.*.value", "fraction_of_limit")),
    ),
)

#: relative tolerance of quantities recomputed from the rounded ones in the file
_REL = 1e-3


def validate(doc: dict) -> None:
    """Raise ValueError naming the first thing that does not follow the bench file's layout:
    ``SCHEMA`` (``measure.validate``), and what follows from the numbers — each value from its
    time, each speedup from the two times, each ``fraction_of_limit`` from ours and the limit
    the record names."""
    measure.validate(doc, SCHEMA)

    def need(cond: bool, what: str):
        if not cond:
            raise ValueError(f"{SCHEMA.name}: {what}")

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= _REL * abs(b)

    lim = doc["limits"]
    for i, r in enumerate(lim["copy"]):
        need(close(r["GBps"], 2 * r["bytes"] / r["us"] / 1e3), f"limits.copy[{i}]: GBps does not follow from its time")
    for i, r in enumerate(lim["matmul"]):
        need(close(r["TFLOPs"], 2 * r["n"] ** 3 / r["us"] / 1e6),
             f"limits.matmul[{i}]: TFLOPs does not follow from its time")
    for i, r in enumerate(doc["records"]):
        where = f"records[{i}] ({r['kernel']}, {r['case']})"
        need(r["unit"] in UNITS, f"{where}: unit {r['unit']!r} not in {UNITS}")
        need(isinstance(r["params"], dict), f"{where}: params must be a dict")
        need(r["bytes"] >= 0 and r["flops"] >= 0, f"{where}: bytes and flops must be ≥ 0")
        for entry in [r["ours"], *r["peers"]]:
            need("impl" in entry, f"{where}: timing entry {entry} lacks impl")
            expect = value(r["unit"], r["bytes"], r["flops"], entry["us"])
            need(close(entry["value"], expect),
                 f"{where}: {entry['impl']} value {entry['value']} does not follow from its time ({expect:.3f})")
        need(set(r["speedup"]) == {p["impl"] for p in r["peers"]}, f"{where}: speedup keys must be the peers' impls")
        for p in r["peers"]:
            need(close(r["speedup"][p["impl"]], p["us"] / r["ours"]["us"]), f"{where}: speedup over {p['impl']} is wrong")
        try:
            limit = limit_value(lim, r["limit"])
        except ValueError as err:
            raise ValueError(f"{SCHEMA.name}: {where}: {err}") from None
        need(close(r["fraction_of_limit"], r["ours"]["value"] / limit),
             f"{where}: fraction_of_limit {r['fraction_of_limit']} is not ours ({r['ours']['value']}) "
             f"÷ the {r['limit']} limit ({limit}) = {r['ours']['value'] / limit:.4g}")
