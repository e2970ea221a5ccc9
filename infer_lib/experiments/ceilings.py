"""How close a real GPU gets to its datasheet: the two ceilings of chapter 1, swept over sizes.

* copy bandwidth against buffer size — ``measure.copy_bandwidth`` at each of the
  profile's ``copy_sizes``, from a few KiB (fixed costs) through L2-sized buffers
  (L2 bandwidth: the copies are replayed with L2 left warm) to GiB buffers (HBM);
* cuBLAS FLOP/s against matrix size — ``measure.matmul_flops`` at each of the
  profile's ``matmul_sizes``, in bf16 (where the GPU has it), fp16 and fp32.

Both functions are the ones the benchmark takes its limits from, so the sweeps and
the limits measure the same thing. Without a GPU nothing is measured and chapter 1
shows the shipped files ``infer_lib/data/copy_bandwidth_<gpu>.json`` and
``matmul_flops_<gpu>.json``, written by

    python -m infer_lib.experiments.ceilings --out-dir DIR [--profile gpu-large]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import device, hardware, measure

COPY_TIMING = "CUDA-graph replays, L2 not flushed, median"
MATMUL_TIMING = "triton.testing.do_bench, L2 flushed, median"

#: copy_bandwidth_<gpu>.json: one record per buffer size
COPY_SCHEMA = measure.Schema(
    "copy bandwidth file",
    keys=("timing", "records"),
    records=(measure.Records("records", numbers=("bytes", "us", "GBps")),),
)
#: matmul_flops_<gpu>.json: records by dtype name, one per matrix size
MATMUL_SCHEMA = measure.Schema(
    "matmul FLOP/s file",
    keys=("timing", "float32_matmul_precision", "records"),
    records=(measure.Records("records.*", numbers=("n", "us", "TFLOPs")),),
)


def matmul_dtypes() -> list[torch.dtype]:
    """The dtypes of the matmul sweep: bf16 where the GPU has it, fp16, fp32."""
    return ([torch.bfloat16] if device.supports_bf16() else []) + [torch.float16, torch.float32]


def copy_file(sizes) -> dict:
    """The payload of ``copy_bandwidth_<gpu>.json``: ``measure.copy_bandwidth`` at each size (GPU only)."""
    measure._require_gpu("ceilings.copy_file")
    return {"provenance": measure.provenance(), "timing": COPY_TIMING,
            "records": [measure.copy_bandwidth(n) for n in sizes]}


def matmul_file(sizes, dtypes=None) -> dict:
    """The payload of ``matmul_flops_<gpu>.json``: ``measure.matmul_flops`` at each size, for each dtype
    (GPU only). The records sit under their dtype's name, so each drops its own ``dtype`` field."""
    measure._require_gpu("ceilings.matmul_file")
    records = {}
    for dtype in dtypes or matmul_dtypes():
        records[device.dtype_name(dtype)] = [
            {k: v for k, v in measure.matmul_flops(n, dtype).items() if k != "dtype"} for n in sizes]
    return {"provenance": measure.provenance(), "timing": MATMUL_TIMING,
            "float32_matmul_precision": torch.get_float32_matmul_precision(), "records": records}


def run(profile: device.Profile | None = None) -> dict[str, dict]:
    """Both sweeps at ``profile``'s sizes (default: this machine's), as the payloads of the two files,
    by topic (GPU only)."""
    measure._require_gpu("ceilings.run")
    prof = profile or device.profile()
    return {"copy_bandwidth": copy_file(prof.copy_sizes), "matmul_flops": matmul_file(prof.matmul_sizes)}


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.ceilings --out-dir DIR [--profile NAME]``: both sweeps at the
    profile's sizes, written as ``DIR/copy_bandwidth_<gpu>.json`` and ``DIR/matmul_flops_<gpu>.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m infer_lib.experiments.ceilings",
        description="Measure this GPU's copy bandwidth and matmul FLOP/s against size (chapter 1) and "
                    "write copy_bandwidth_<gpu>.json and matmul_flops_<gpu>.json.",
    )
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="folder for copy_bandwidth_<gpu>.json and matmul_flops_<gpu>.json")
    parser.add_argument("--profile", choices=sorted(device.PROFILES),
                        help="problem sizes (default: infer_lib.device.profile(); 'cpu' = tiny, for tests)")
    args = parser.parse_args(argv)
    if not device.HAS_GPU:
        parser.exit(2, "python -m infer_lib.experiments.ceilings needs a CUDA GPU: timings of the CPU "
                       "say nothing about GPU bandwidth or FLOP/s. The shipped reference "
                       "measurements are in infer_lib/data/.\n")
    prof = device.PROFILES[args.profile] if args.profile else device.profile()
    gpu = measure.gpu_key()
    spec = hardware.detect()

    payloads = run(prof)
    copy, flops = payloads["copy_bandwidth"], payloads["matmul_flops"]
    measure.validate(copy, COPY_SCHEMA)
    measure.validate(flops, MATMUL_SCHEMA)
    copy_path = measure.save(copy, args.out_dir / f"copy_bandwidth_{gpu}.json")
    flops_path = measure.save(flops, args.out_dir / f"matmul_flops_{gpu}.json")

    # One line per sweep: the best measured against the datasheet, where the table has it.
    best_copy = max(r["GBps"] for r in copy["records"])
    peak_bw = f" of {spec.bandwidth_GBps:.0f} GB/s peak" if spec and spec.bandwidth_GBps else ""
    print(f"{spec.name if spec else gpu}: copy up to {best_copy:.0f} GB/s{peak_bw} -> {copy_path}")
    for name, records in flops["records"].items():
        best = max(r["TFLOPs"] for r in records)
        try:
            peak = f" of {hardware.peak_tflops(spec, name):.0f} peak" if spec else ""
        except ValueError:
            peak = ""
        print(f"  matmul {name}: up to {best:.0f} TFLOP/s{peak}")
    print(f"  -> {flops_path}")


if __name__ == "__main__":
    main()
