"""``python -m infer_lib.bench [--only NAME ...] [--out FILE] [--smoke]``

Benchmarks every kernel against its PyTorch peers in one run, with the limits
(copy bandwidth, cuBLAS FLOP/s) measured in the same run, and writes one JSON
file: ``provenance``, ``limits`` and ``records`` (the layout is
``infer_lib.bench.core.SCHEMA``, checked by ``infer_lib.bench.core.validate``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from .. import device, measure
from .cases import CASES
from .core import SMOKE_TIMING, TIMING, measure_limits, run_case, validate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer_lib.bench", description=__doc__.split("\n\n")[1])
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(CASES),
                    help=f"benchmark only these kernels (choices: {', '.join(CASES)})")
    ap.add_argument("--out", type=Path, help="output JSON file (default: bench_<gpu>.json here)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes and wall-clock timing: tests the plumbing, measures nothing")
    args = ap.parse_args(argv)

    if not device.HAS_GPU and not args.smoke:
        print("infer_lib.bench: no CUDA GPU on this machine. Timings of Triton's CPU interpreter "
              "say nothing about GPU performance, so this refuses to produce them.\n"
              "  * to test the benchmark plumbing: python -m infer_lib.bench --smoke\n"
              f"  * to see real numbers: the shipped reference {measure.reference_path('bench').name} "
              "in infer_lib/data/", file=sys.stderr)
        return 2

    names = args.only or list(CASES)
    out = args.out or Path(f"bench_{measure.gpu_key()}{'_smoke' if args.smoke else ''}.json")
    prov = {**measure.provenance(), "smoke": args.smoke, "timing": SMOKE_TIMING if args.smoke else TIMING}
    print(f"# {device.describe()}", flush=True)
    limits = measure_limits(args.smoke)
    print(f"# limits: copy {limits['copy_GBps']:.0f} GB/s at {measure.format_bytes(limits['copy_bytes'])}, "
          f"cuBLAS at {limits['matmul_n']}³ {limits['matmul_TFLOPs']} TFLOP/s", flush=True)
    for r in limits["copy"]:
        print(f"#   copy {measure.format_bytes(r['bytes']):>8}: {r['GBps']:9.4g} GB/s", flush=True)
    for r in limits["matmul"]:
        print(f"#   cuBLAS {r['n']}³ {r['dtype']:<9}: {r['TFLOPs']:9.4g} TFLOP/s", flush=True)

    records = []
    for name in names:
        for c in CASES[name](args.smoke):
            r = run_case(c, limits, args.smoke)
            records.append(r)
            peers = "  ".join(f"{p['impl']} {p['value']:.1f} ({r['speedup'][p['impl']]:.2f}x)" for p in r["peers"])
            print(f"{r['kernel']:<12} {r['case']:<22} {r['ours']['value']:9.1f} {r['unit']:<8} "
                  f"{r['fraction_of_limit']:6.1%} of limit   {peers}", flush=True)
        gc.collect()
        if device.HAS_GPU:
            torch.cuda.empty_cache()

    doc = {"provenance": prov, "limits": limits, "records": records}
    validate(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"# wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
