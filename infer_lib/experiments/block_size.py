"""How the block size changes a kernel's time: the CUDA vector add of ``infer_lib.cuda_kernels``
launched with 8 to 1024 threads per block (chapter on CUDA and fusion).

``out = x + y`` over ``n`` float32 elements moves ``3 · 4 · n`` bytes (two reads, one write)
whatever the launch; only how the threads are grouped changes. An SM holds at most 32 resident
blocks (compute capability 8.0 to 9.0) and 64 warps: blocks of 8 or 16 threads fill only a
quarter or a half of a warp each, and 32 of them leave most of the SM's warp slots empty, so
too few loads are in flight to cover HBM's latency. From 128 threads a block on, the SM can
be full and the kernel streams near the copy bandwidth.

Each record: ``threads_per_block``, ``blocks`` (the grid), ``us`` (GPU time of the eager
launch after an L2 flush, ``measure.bench_us``: numba-cuda launches on the legacy default
stream, which a CUDA graph cannot capture, so ``n`` is large enough that the launch cost hides
behind the kernel), ``GBps`` and ``fraction_of_copy``. Beside them, ``triton``: the Triton
``vector_add`` of ``infer_lib.kernels`` on the same arrays, timed alike — one program per
block of data, its threads the compiler's business.

    python -m infer_lib.experiments.block_size --out-dir DIR

writes ``DIR/block_size_<gpu>.json``. ``run(smoke=True)`` runs the plumbing on any machine, in
Numba's CUDA simulator on a CPU (a few hundred elements, a wall clock): never a measurement.

References: CUDA C++ Programming Guide, "Compute Capabilities" (maximum resident blocks and
warps per SM), https://docs.nvidia.com/cuda/cuda-c-programming-guide/; the CUDA Best
Practices Guide, "Execution Configuration Optimizations" (occupancy, threads per block).
"""

from __future__ import annotations

import torch

from .. import device, measure
from . import model_cli

TIMING = ("GPU time: median of eager launches after an L2 flush (measure.bench_us; a numba-cuda "
          "launch cannot be captured in a CUDA graph), n large enough to hide the launch")
SMOKE_TIMING = "wall clock of one call (smoke run, Numba's CUDA simulator on a CPU): plumbing only"
N = 1 << 26                          # 64 Mi float32 elements: 256 MiB per array, 768 MiB moved
SMOKE_N = 200
THREADS = (8, 16, 32, 64, 128, 256, 512, 1024)
SMOKE_THREADS = (32, 64)

SCHEMA = measure.Schema(
    "block size file",
    keys=("timing", "params", "params.n", "copy_GBps", "records", "triton"),
    numbers=("copy_GBps", "params.n"),
    records=(measure.Records("records", numbers=("threads_per_block", "blocks", "us", "GBps",
                                                 "fraction_of_copy")),),
)


def nbytes(n: int) -> int:
    """Bytes a vector add of ``n`` float32 elements must move: read x and y, write out."""
    return 3 * 4 * n


def _record(us: float, n: int, copy_GBps: float) -> dict:
    gbps = nbytes(n) / us / 1e3
    return {"us": measure.sig(us), "GBps": measure.sig(gbps),
            "fraction_of_copy": measure.sig(gbps / copy_GBps, 4)}


def run(preset: str | None = None, *, n: int = N, threads=THREADS, smoke: bool = False) -> dict:
    """The payload of ``block_size_<gpu>.json`` (GPU only, or ``smoke``). ``preset`` is ignored
    (the command line's ``--preset`` is for model experiments)."""
    from numba import cuda

    from .. import cuda_kernels
    from ..kernels import vector_add

    if not smoke:
        measure._require_gpu("block_size.run")
    if smoke:
        n, threads = SMOKE_N, SMOKE_THREADS
    dev = device.DEVICE if device.HAS_GPU else "cpu"
    x, y = (torch.randn(n, device=dev) for _ in range(2))
    out = torch.empty(n, device=dev)
    want = x + y
    if device.HAS_GPU:       # views of the CUDA tensors: no copies, no synchronisation per launch
        d_x, d_y, d_out = (cuda.as_cuda_array(t, sync=False) for t in (x, y, out))
    else:                    # the simulator's device arrays are NumPy arrays underneath
        d_x, d_y, d_out = (cuda.to_device(t.numpy()) for t in (x, y, out))
    timer = measure.timer(smoke, hot=False)
    copy_GBps = 1.0 if smoke else measure.copy_bandwidth()["GBps"]
    records = []
    for tpb in threads:
        out.fill_(float("nan"))
        if not device.HAS_GPU:
            d_out.copy_to_device(out.numpy())
        launch = lambda: cuda_kernels.launch_vector_add(d_x, d_y, d_out, tpb)  # noqa: E731
        launch()
        got = out if device.HAS_GPU else torch.from_numpy(d_out.copy_to_host())
        torch.testing.assert_close(got, want)   # the launch computed the sum before it is timed
        records.append({"threads_per_block": int(tpb), "blocks": (n + tpb - 1) // tpb,
                        **_record(timer(launch), n, copy_GBps)})
    torch.testing.assert_close(vector_add(x, y), want)
    triton = _record(timer(lambda: vector_add(x, y)), n, copy_GBps)
    return {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"n": int(n), "dtype": "float32", "bytes": nbytes(n),
                       "kernel": "infer_lib.cuda_kernels vector_add (numba-cuda)"},
            "copy_GBps": copy_GBps, "records": records, "triton": triton}


def _report(doc: dict) -> None:
    print(f"vector add of {doc['params']['n']:,} float32 (copy {doc['copy_GBps']:.0f} GB/s)")
    for r in doc["records"]:
        print(f"  {r['threads_per_block']:5d} threads/block {r['blocks']:10,d} blocks {r['us']:9.1f} us "
              f"{r['GBps']:7.0f} GB/s ({r['fraction_of_copy']:.2f} of copy)")
    t = doc["triton"]
    print(f"  Triton vector_add: {t['us']:9.1f} us {t['GBps']:7.0f} GB/s ({t['fraction_of_copy']:.2f} of copy)")


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.block_size --out-dir DIR``."""
    model_cli(argv, topic="block_size", run=run, schema=SCHEMA, report=_report,
              description="Time the numba-cuda vector add with 8 to 1024 threads per block, and "
                          "the Triton one",
              why_gpu="the simulator runs one Python thread per CUDA thread: its times say "
                      "nothing about a GPU.")


if __name__ == "__main__":
    main()
