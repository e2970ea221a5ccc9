"""The benchmark harness: cases, timing, limits, records, and the JSON layout.

A *case* is one kernel at one shape: our implementation, the PyTorch peers it
is compared with, and the bytes and FLOPs it must move and do (formulas in
``cases.py``). Every case is checked for correctness before it is timed, and
every peer is timed in the same run as ours, so ratios compare like with like.

Times are medians in µs from ``triton.testing.do_bench`` (L2 flushed between
repetitions). Under ``--smoke`` the same plumbing runs at tiny sizes on
whatever device there is and times with a wall clock; such files are marked
``"smoke": true`` and mean nothing as performance.
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
    #: tolerances for the pre-timing check of ours against the first peer
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


def timer(smoke: bool) -> Callable[[Callable[[], object]], float]:
    return (lambda fn: measure.wall_us(fn, reps=1)) if smoke else measure.bench_us


def measure_limits(smoke: bool = False, *, copy_bytes: int | None = None, matmul_n: int | None = None,
                   dtypes: tuple[torch.dtype, ...] | None = None) -> dict:
    """The two ceilings, measured now: device-to-device copy and cuBLAS matmul.

    Defaults are the bench's: a 1 GiB copy (far beyond L2) and 8192³ products in
    every dtype of ``device.kernel_dtypes()``; chapters measuring a live roofline
    call this too, so their ceilings are taken the same way.
    """
    time_us = timer(smoke)
    dev = device.DEVICE
    copy_bytes = copy_bytes or (2**16 if smoke else 2**30)
    src = torch.randn(copy_bytes // 4, device=dev)
    copy_us = time_us(lambda: src.clone())
    del src
    n = matmul_n or (64 if smoke else 8192)
    mm = {}
    for dtype in dtypes or device.kernel_dtypes():
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        mm[device.dtype_name(dtype)] = sig(2 * n**3 / time_us(lambda: a @ b) / 1e6)
        del a, b
    return {
        "copy_GBps": sig(2 * copy_bytes / copy_us / 1e3),
        "copy_bytes": copy_bytes,
        "matmul_n": n,
        "matmul_TFLOPs": mm,
        "note": "copy: median of src.clone() counting bytes read + written; matmul: torch.matmul "
                "(cuBLAS) n×n×n on random inputs; fp32 uses PyTorch's default precision",
    }


def _limit_value(limits: dict, which: str) -> float:
    if which == "copy":
        return limits["copy_GBps"]
    kind, _, dtype = which.partition(":")
    if kind == "matmul":
        return limits["matmul_TFLOPs"][dtype]
    raise ValueError(f"unknown limit {which!r}")


def _first_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_case(c: Case, limits: dict, smoke: bool) -> dict:
    """Check ours against the first peer, then time ours and every peer."""
    if c.peers:
        got, want = _first_tensor(c.ours[1]()), _first_tensor(c.peers[0][1]())
        torch.testing.assert_close(got.float(), want.float(), atol=c.atol, rtol=c.rtol,
                                   msg=lambda m: f"{c.kernel} [{c.case}] disagrees with {c.peers[0][0]}: {m}")
    time_us = timer(smoke)
    ours_us = time_us(c.ours[1])
    peers = []
    for impl, fn in c.peers:
        us = time_us(fn)
        peers.append({"impl": impl, "us": sig(us), "value": sig(value(c.unit, c.bytes, c.flops, us))})
    ours_value = value(c.unit, c.bytes, c.flops, ours_us)
    return {
        "kernel": c.kernel,
        "case": c.case,
        "params": c.params,
        "unit": c.unit,
        "bytes": c.bytes,
        "flops": c.flops,
        "ours": {"impl": c.ours[0], "us": sig(ours_us), "value": sig(ours_value),
                 **({"info": c.info()} if c.info else {})},
        "peers": peers,
        "speedup": {p["impl"]: sig(p["us"] / ours_us, 4) for p in peers},
        "limit": c.limit,
        "fraction_of_limit": sig(ours_value / _limit_value(limits, c.limit), 4),
    }


# ----------------------------------------------------------------------------
# The layout, checked by tests on both --smoke output and the shipped files
# ----------------------------------------------------------------------------

PROVENANCE_KEYS = ("gpu", "capability", "driver", "cuda", "torch", "triton", "python", "date")
RECORD_KEYS = ("kernel", "case", "params", "unit", "bytes", "flops", "ours", "peers", "speedup",
               "fraction_of_limit")


def validate(doc: dict) -> None:
    """Raise ValueError naming the first thing that does not follow DESIGN §2's layout."""
    def need(cond: bool, what: str):
        if not cond:
            raise ValueError(f"bench JSON: {what}")

    for top in ("provenance", "limits", "records"):
        need(top in doc, f"missing top-level key {top!r}")
    for k in PROVENANCE_KEYS:
        need(k in doc["provenance"], f"provenance lacks {k!r}")
    lim = doc["limits"]
    need(isinstance(lim.get("copy_GBps"), (int, float)) and lim["copy_GBps"] > 0, "limits.copy_GBps must be > 0")
    need(isinstance(lim.get("matmul_TFLOPs"), dict) and lim["matmul_TFLOPs"], "limits.matmul_TFLOPs must be a dict")
    for dt, v in lim["matmul_TFLOPs"].items():
        need(isinstance(v, (int, float)) and v > 0, f"limits.matmul_TFLOPs[{dt!r}] must be > 0")
    need(isinstance(doc["records"], list) and doc["records"], "records must be a non-empty list")
    for i, r in enumerate(doc["records"]):
        where = f"records[{i}] ({r.get('kernel')}, {r.get('case')})"
        for k in RECORD_KEYS:
            need(k in r, f"{where} lacks {k!r}")
        need(r["unit"] in UNITS, f"{where}: unit {r['unit']!r} not in {UNITS}")
        need(isinstance(r["params"], dict), f"{where}: params must be a dict")
        need(r["bytes"] >= 0 and r["flops"] >= 0, f"{where}: bytes and flops must be ≥ 0")
        for entry in [r["ours"], *r["peers"]]:
            need(set(entry) >= {"impl", "us", "value"}, f"{where}: timing entry {entry} lacks impl/us/value")
            need(entry["us"] > 0 and entry["value"] > 0, f"{where}: {entry['impl']} has a non-positive time or value")
            expect = value(r["unit"], r["bytes"], r["flops"], entry["us"])
            need(abs(expect - entry["value"]) <= 1e-3 * expect,
                 f"{where}: {entry['impl']} value {entry['value']} does not follow from its time ({expect:.3f})")
        need(set(r["speedup"]) == {p["impl"] for p in r["peers"]}, f"{where}: speedup keys must be the peers' impls")
        for p in r["peers"]:
            s = p["us"] / r["ours"]["us"]
            need(abs(r["speedup"][p["impl"]] - s) <= 1e-3 * s, f"{where}: speedup over {p['impl']} is wrong")
        need(r["fraction_of_limit"] > 0, f"{where}: fraction_of_limit must be > 0")
