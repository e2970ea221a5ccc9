"""What the tensor cores buy: cuBLAS matmul throughput by precision (chapter on CUDA and fusion).

Square ``n × n @ n × n`` products through ``torch.matmul`` at a few sizes, in

* ``fp32`` — float32 on the plain CUDA cores (``torch.backends.cuda.matmul.allow_tf32 = False``);
* ``tf32`` — the same float32 tensors with TF32 allowed: the tensor cores round the inputs
  to a 10-bit mantissa and accumulate in fp32;
* ``fp16`` and ``bf16`` (where the GPU has bf16, ``device.supports_bf16()``) — the 16-bit
  tensor-core paths.

Each time is GPU time, the median of CUDA-graph replays (``measure.bench_us_hot``), and
each record carries the spec table's dense peak for its precision
(``hardware.peak_tflops``; TF32 has its own field) and the fraction of it reached. The
TF32 flag is restored afterwards, whatever happens.

    python -m infer_lib.experiments.tensor_cores --out-dir DIR

writes ``DIR/tensor_cores_<gpu>.json``. ``run(smoke=True)`` runs the plumbing on any
machine at tiny sizes with a wall clock: never a measurement.
"""

from __future__ import annotations

import torch

from .. import device, hardware, measure
from . import model_cli

TIMING = ("GPU time: median of CUDA-graph replays (measure.bench_us_hot) of one torch.matmul into a "
          "preallocated output, L2 left warm")
SMOKE_TIMING = "wall clock of one call (smoke run on the CPU): plumbing only, not a measurement"
SIZES = (1024, 2048, 4096, 8192)
SMOKE_SIZES = (16, 32)

#: precision name → (torch dtype, allow_tf32, key of hardware.peak_tflops)
PRECISIONS = {
    "fp32": (torch.float32, False, torch.float32),
    "tf32": (torch.float32, True, "tf32"),
    "fp16": (torch.float16, False, torch.float16),
    "bf16": (torch.bfloat16, False, torch.bfloat16),
}

#: tensor_cores_<gpu>.json: records by precision name, one per matrix size. ``peak_TFLOPs``
#: and ``fraction_of_peak`` are None where the spec table has no peak (a GPU not in it, or
#: the smoke run); ``validate`` demands them on a measured file of a GPU in the table.
SCHEMA = measure.Schema(
    "tensor cores file",
    keys=("timing", "params", "params.sizes", "params.precisions", "records"),
    records=(measure.Records("records.*", numbers=("n", "us", "TFLOPs"),
                             keys=("precision", "dtype", "allow_tf32", "peak_TFLOPs", "fraction_of_peak")),),
)


def validate(doc: dict) -> None:
    """``measure.validate`` against ``SCHEMA``, and: every precision's records are its own, and a
    measured (not smoke) file of a GPU in the spec table has a peak and a fraction in every record."""
    measure.validate(doc, SCHEMA)
    smoke = bool(doc["provenance"].get("smoke"))
    known = doc["provenance"].get("gpu_key") in hardware.SPECS
    for name, records in doc["records"].items():
        if name not in PRECISIONS:
            raise ValueError(f"tensor cores file: unknown precision {name!r} (have {sorted(PRECISIONS)})")
        for i, r in enumerate(records):
            where = f"records.{name}[{i}]"
            if r["precision"] != name or r["allow_tf32"] != PRECISIONS[name][1]:
                raise ValueError(f"tensor cores file: {where} is not a {name} record")
            if not smoke and known:
                for field in ("peak_TFLOPs", "fraction_of_peak"):
                    if not measure.is_positive(r[field]):
                        raise ValueError(f"tensor cores file: {where}.{field} must be a finite number > 0, "
                                         f"got {r[field]!r}")


def precisions() -> tuple[str, ...]:
    """The precisions this machine runs: bf16 only where the GPU has it."""
    return tuple(p for p in PRECISIONS if p != "bf16" or device.supports_bf16())


def peak(spec: hardware.GPUSpec | None, precision: str) -> float | None:
    """The spec table's dense peak TFLOP/s of ``precision``, or None where there is none."""
    if spec is None:
        return None
    try:
        return hardware.peak_tflops(spec, PRECISIONS[precision][2])
    except ValueError:
        return None


def matmul_record(n: int, precision: str, *, spec: hardware.GPUSpec | None = None,
                  smoke: bool = False) -> dict:
    """One ``n × n @ n × n`` product in ``precision``: ``{precision, dtype, allow_tf32, n, us,
    TFLOPs, peak_TFLOPs, fraction_of_peak}`` (2·n³ FLOPs; the TF32 flag set for the capture and
    the replays, and restored)."""
    if not smoke:
        measure._require_gpu("tensor_cores.matmul_record")
    dtype, tf32, _ = PRECISIONS[precision]
    a = torch.randn(n, n, dtype=dtype, device=device.DEVICE)
    b = torch.randn(n, n, dtype=dtype, device=device.DEVICE)
    c = torch.empty(n, n, dtype=dtype, device=device.DEVICE)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        fn = lambda: torch.matmul(a, b, out=c)  # noqa: E731  (out=: no allocation in the graph)
        us = measure.timer(smoke)(fn)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    tflops = 2 * n**3 / us / 1e6
    top = peak(spec, precision)
    return {"precision": precision, "dtype": device.dtype_name(dtype), "allow_tf32": tf32, "n": int(n),
            "us": measure.sig(us), "TFLOPs": measure.sig(tflops),
            "peak_TFLOPs": top, "fraction_of_peak": measure.sig(tflops / top, 4) if top else None}


def run(preset: str | None = None, *, sizes=SIZES, smoke: bool = False) -> dict:
    """The payload of ``tensor_cores_<gpu>.json`` (GPU only, or ``smoke``: tiny sizes, wall clock,
    no peaks). ``preset`` is ignored (the command line's ``--preset`` is for model experiments)."""
    if not smoke:
        measure._require_gpu("tensor_cores.run")
    if smoke:
        sizes = SMOKE_SIZES
    spec = None if smoke else hardware.detect()
    names = precisions()
    records = {p: [matmul_record(n, p, spec=spec, smoke=smoke) for n in sizes] for p in names}
    doc = {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"sizes": [int(n) for n in sizes], "precisions": list(names),
                       "flops": "2 n^3 per product", "spec": spec.key if spec else None},
            "records": records}
    validate(doc)
    return doc


def _report(doc: dict) -> None:
    for name, records in doc["records"].items():
        for r in records:
            frac = f"{r['fraction_of_peak']:.2f} of {r['peak_TFLOPs']:g}" if r["peak_TFLOPs"] else "no peak"
            print(f"{name:>4} n={r['n']:<5} {r['us']:10.1f} us {r['TFLOPs']:8.1f} TFLOP/s ({frac})")


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.tensor_cores --out-dir DIR``."""
    model_cli(argv, topic="tensor_cores", run=run, schema=SCHEMA, report=_report,
              description="Time cuBLAS matmuls in fp32 (CUDA cores), TF32, fp16 and bf16 against the "
                          "spec table's dense peaks",
              why_gpu="CPU timings say nothing about a GPU's tensor cores.")


if __name__ == "__main__":
    main()
