"""How long an all-reduce takes, from 4 KB to 1 GB, against the ring model (chapter "beyond one GPU").

Tensor parallelism (``infer_lib.parallel``) pays ``2L + 1`` all-reduces of ``B·d`` numbers
every decode step: a few KB to a few hundred KB, where latency rules, not bandwidth. This
experiment times ``torch.distributed.all_reduce`` — the call ``RowParallelLinear`` makes, on
the process group of ``infer_lib.parallel.init`` (NCCL on GPUs) — on bf16 tensors of every
power-of-two size from 4 KiB to 1 GiB, and reports, per size (nccl-tests' definitions,
https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md):

* ``us``: the time of one all-reduce (below);
* ``algbw_GBps``: algorithm bandwidth, ``bytes / time``;
* ``busbw_GBps``: bus bandwidth, ``algbw · 2(N − 1)/N``: what each rank's link carries in a
  ring all-reduce (``roofline.ring_allreduce_bytes``), comparable across ``N`` and with the
  link's speed (0 for one rank, which sends nothing);
* ``model_us``: the ring model, ``roofline.ring_allreduce_time(bytes, N, link)`` with no
  latency term, for ``link`` = **half** the spec table's NVLink figure (``hardware.SPECS``
  quotes the bidirectional total, so one direction gets half: 450 GB/s on an H100 SXM or
  H200), None where the GPU is not in the table or has no NVLink. NCCL may choose other
  algorithms than a ring (trees; NVLink SHARP is switched off here, below), so the model is
  a yardstick, not a prediction of what NCCL does.

Timing (GPU): every rank runs the same fixed schedule, so the collectives stay paired. Each
repetition is a barrier, a GPU spin (``torch.cuda._sleep``) during which the host queues
``inner`` back-to-back all-reduces (more for small sizes), and CUDA events around those
``inner``; a rank's time is the median over repetitions of ``elapsed / inner``, and the file
keeps the slowest rank's (a collective ends when its last rank does). Warm-up calls first.

The topology goes into the provenance (``nvidia-smi topo -m``: which GPU pairs talk over
NVLink, ``NV18``, and which over PCIe), with ``N`` and the NCCL version.

    torchrun --nproc-per-node N -m infer_lib.experiments.allreduce --out-dir DIR [--smoke]

Rank 0 writes ``DIR/allreduce_<gpu>x<N>.json``. ``--smoke`` (``run(smoke=True)``) runs the
plumbing on CPUs with gloo at a few small sizes and a wall clock: never a measurement.

NVLink multicast (NVLS) is kept off in every process: ``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1`` are set (unless already
set) when this module is imported, before ``torch.distributed`` starts.
"""

from __future__ import annotations

import os

# Multicast objects (NVLink SHARP / NVLS) can take a shared host's GPUs out of service: keep
# them off in every process, before torch.distributed (and NCCL) initialise.
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from .. import device, hardware, measure, parallel, roofline  # noqa: E402

NO_MULTICAST_ENV = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")
BUSBW_REFERENCE = "https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md"

TIMING = ("GPU time of one all-reduce: per repetition a barrier, a GPU spin while the host queues "
          "`inner` back-to-back all-reduces, CUDA events around them; each rank's median over "
          "repetitions of elapsed/inner, the slowest rank's kept")
SMOKE_TIMING = "wall clock (smoke run, gloo on CPUs): plumbing only, not a measurement"
SIZES = tuple(2**k for k in range(12, 31))           # 4 KiB … 1 GiB
SMOKE_SIZES = (4096, 65536, 1 << 20)
WARMUP = 5
SPIN_CYCLES = 2_000_000                                # ~1 ms at ~2 GHz: time for the host to queue

SCHEMA = measure.Schema(
    "allreduce file",
    keys=("timing", "params", "params.world_size", "params.dtype", "records"),
    numbers=("params.world_size",),
    records=(measure.Records("records", keys=("busbw_GBps", "model_us", "inner", "reps"),
                             numbers=("bytes", "us", "algbw_GBps")),),
    provenance=(*measure.PROVENANCE_KEYS, "world_size", "backend", "topology"),
)


# -- shared with tp_decode: the torchrun command, the provenance of a group -----------------------

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def cli(argv, *, topic: str, description: str, why_gpu: str, add_arguments=None) -> argparse.Namespace:
    """Parse ``--out-dir DIR [--smoke]`` (and ``add_arguments(parser)``'s); refuse, exiting
    with status 2, outside torchrun (naming the command) or without a GPU unless ``--smoke``."""
    command = f"torchrun --nproc-per-node N -m infer_lib.experiments.{topic}"
    parser = argparse.ArgumentParser(prog=command, description=description)
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for the file rank 0 writes")
    parser.add_argument("--smoke", action="store_true",
                        help="gloo on CPUs at tiny sizes, wall clock: tests the plumbing, measures nothing")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    missing = [name for name in TORCHRUN_VARS[:2] if name not in os.environ]
    if missing:
        parser.exit(2, f"{topic} runs one process per GPU: start it with\n    {command} --out-dir DIR\n"
                       f"({', '.join(missing)} not set: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, "
                       "MASTER_ADDR and MASTER_PORT)\n")
    if not device.HAS_GPU and not args.smoke:
        parser.exit(2, f"{command} needs CUDA GPUs: {why_gpu} (--smoke runs the plumbing on CPUs)\n")
    return args


def topology() -> str | None:
    """``nvidia-smi topo -m``: how the GPUs are linked (None where it is not there)."""
    try:
        out = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def group_provenance(info: parallel.RankInfo, smoke: bool) -> dict:
    """``measure.provenance()`` plus the group: ``world_size``, ``backend``, the NCCL version, the
    topology (GPU runs only) and the multicast switches the processes ran with."""
    nccl = None
    if info.backend == "nccl":
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:       # noqa: BLE001 — a version string is nice to have, never needed
            nccl = None
    return {**measure.provenance(), "smoke": smoke, "world_size": info.world_size, "backend": info.backend,
            "nccl": nccl, "topology": topology() if device.HAS_GPU and not smoke else None,
            "env": {name: os.environ.get(name) for name in NO_MULTICAST_ENV}}


def max_over_ranks(value: float, info: parallel.RankInfo) -> float:
    """The largest ``value`` of any rank (one all-reduce on the group's device)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def out_path(out_dir: Path, topic: str, world_size: int) -> Path:
    return Path(out_dir) / f"{topic}_{measure.gpu_key()}x{world_size}.json"


# -- the measurement -------------------------------------------------------------------------------


def link_GBps_per_direction() -> float | None:
    """Half the spec table's bidirectional NVLink figure of this GPU; None if unknown."""
    spec = hardware.detect() if device.HAS_GPU else None
    if spec is None or spec.nvlink_GBps is None:
        return None
    return spec.nvlink_GBps / 2


def bus_bandwidth(algbw: float, n: int) -> float:
    """nccl-tests' bus bandwidth of an all-reduce over ``n`` ranks: ``algbw · 2(n − 1)/n``."""
    return algbw * 2 * (n - 1) / n


def schedule(nbytes: int, smoke: bool) -> tuple[int, int]:
    """``(inner, reps)`` for a size: the same on every rank (it depends on the size only)."""
    if smoke:
        return 2, 3
    if nbytes <= 1 << 20:
        return 20, 30
    if nbytes <= 64 << 20:
        return 5, 20
    return 1, 15


def _time_gpu(x: torch.Tensor, inner: int, reps: int, info: parallel.RankInfo) -> float:
    times = []
    for _ in range(reps):
        dist.barrier(device_ids=[info.device.index])
        torch.cuda._sleep(SPIN_CYCLES)                    # the host queues the all-reduces meanwhile
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            dist.all_reduce(x)
        end.record()
        end.synchronize()
        times.append(1e3 * start.elapsed_time(end) / inner)
    return statistics.median(times)


def _time_wall(x: torch.Tensor, inner: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(inner):
            dist.all_reduce(x)
        times.append(1e6 * (time.perf_counter() - t0) / inner)
    return statistics.median(times)


def time_allreduce(nbytes: int, dtype: torch.dtype, info: parallel.RankInfo, *, smoke: bool = False) -> dict:
    """One record: an all-reduce of ``nbytes`` bytes of ``dtype`` over the group."""
    N = info.world_size
    x = torch.ones(nbytes // dtype.itemsize, dtype=dtype, device=info.device)
    inner, reps = schedule(nbytes, smoke)
    for _ in range(1 if smoke else WARMUP):
        dist.all_reduce(x)
        x.fill_(1)                                        # no overflow over the repetitions
    us = _time_wall(x, inner, reps) if smoke else _time_gpu(x, inner, reps, info)
    us = max_over_ranks(us, info)
    del x
    algbw = nbytes / us / 1e3
    link = link_GBps_per_direction()
    model_us = None if link is None or smoke else roofline.ring_allreduce_time(nbytes, N, link * 1e9) * 1e6
    return {"bytes": int(nbytes), "us": measure.sig(us), "algbw_GBps": measure.sig(algbw),
            "busbw_GBps": measure.sig(bus_bandwidth(algbw, N)),
            "model_us": None if model_us is None else measure.sig(model_us), "inner": inner, "reps": reps}


def comm_dtype(info: parallel.RankInfo) -> torch.dtype:
    """bf16; fp32 on gloo where this torch's gloo cannot sum bf16 (asked once, the same on every rank)."""
    if info.backend == "nccl":
        return torch.bfloat16
    try:
        dist.all_reduce(torch.ones(2, dtype=torch.bfloat16))
        return torch.bfloat16
    except (RuntimeError, ValueError):
        return torch.float32


def run(sizes=SIZES, *, smoke: bool = False, timeout_s: float | None = None) -> dict:
    """The payload of ``allreduce_<gpu>x<N>.json``, on every rank (rank 0 saves it). Joins the
    group of ``parallel.init`` (NCCL on GPUs; gloo under ``smoke``) if none is running."""
    if not smoke:
        measure._require_gpu("allreduce.run")
    if smoke:
        sizes = SMOKE_SIZES
    kwargs = {} if timeout_s is None else {"timeout": timeout_s}
    info = parallel.init(backend="gloo" if smoke else None, **kwargs)
    dtype = comm_dtype(info)
    records = [time_allreduce(int(n), dtype, info, smoke=smoke) for n in sizes]
    link = link_GBps_per_direction()
    return {"provenance": group_provenance(info, smoke),
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"world_size": info.world_size, "dtype": device.dtype_name(dtype),
                       "op": "torch.distributed.all_reduce (sum), process group of infer_lib.parallel.init",
                       "link_GBps_per_direction": None if smoke else link,
                       "link": ("half the spec table's bidirectional NVLink figure (hardware.SPECS)"
                                if link is not None and not smoke else None),
                       "busbw": f"algbw · 2(N − 1)/N ({BUSBW_REFERENCE})",
                       "model": "roofline.ring_allreduce_time(bytes, N, link), latency 0"},
            "records": records}


def _report(doc: dict) -> None:
    if doc["provenance"].get("smoke"):
        print(f"SMOKE RUN — {doc['timing']}")
    p = doc["params"]
    print(f"all-reduce over N={p['world_size']} ({doc['provenance']['backend']}, {p['dtype']})")
    for r in doc["records"]:
        model = "" if r["model_us"] is None else f"  ring model {r['model_us']:10.1f} us"
        print(f"  {measure.format_bytes(r['bytes']):>8} {r['us']:10.1f} us  algbw {r['algbw_GBps']:8.2f} GB/s  "
              f"busbw {r['busbw_GBps']:8.2f} GB/s{model}")


def run_and_write(measure_fn, out_dir: Path, topic: str, schema, report) -> None:
    """Every rank runs ``measure_fn()`` (its collectives must pair up); rank 0 validates the
    document against ``schema``, writes ``<topic>_<gpu>x<N>.json`` in ``out_dir`` and reports it;
    the process group is shut down whatever happens."""
    try:
        doc = measure_fn()
        if dist.get_rank() == 0:
            measure.validate(doc, schema)
            path = measure.save(doc, out_path(out_dir, topic, doc["params"]["world_size"]))
            report(doc)
            print(f"-> {path}")
    finally:
        parallel.shutdown()


def main(argv=None) -> None:
    """``torchrun --nproc-per-node N -m infer_lib.experiments.allreduce --out-dir DIR [--smoke]``."""
    args = cli(argv, topic="allreduce",
               description="Time torch.distributed.all_reduce from 4 KiB to 1 GiB against the ring model; "
                           "rank 0 writes allreduce_<gpu>x<N>.json.",
               why_gpu="gloo on CPUs says nothing about NCCL over NVLink")
    run_and_write(lambda: run(smoke=args.smoke), args.out_dir, "allreduce", SCHEMA, _report)


if __name__ == "__main__":
    main()
