"""Decoding speed of a tensor-parallel model on ``N`` GPUs (chapter "beyond one GPU").

``infer_lib.parallel.TensorParallelTransformer`` splits every large matrix over the ``N``
ranks, so each GPU reads ``1/N`` of the weights per decode step (and its share of the KV
cache: ``max(H_kv/N, 1)`` heads) and the bandwidth roofline of a step falls ``N``-fold — but
every step also waits for ``2L + 1`` all-reduces of ``B·d`` numbers (and one all-gather of the
logits), small messages whose latency does not shrink with ``N``. This experiment measures a
decode step of a preset (default ``llama-3-8b``, bf16) at ``N`` = the world size, for each
batch, and records per batch:

* ``ms`` (one step) and ``tokens_per_s`` = ``batch / step time``;
* the **per-GPU bandwidth roofline**: the rank's bytes — its weights (the input embedding
  left out, as in ``decode.step_bytes``: a step reads only ``B`` rows of it) and its KV cache
  up to ``context`` tokens — at the copy bandwidth that rank measured
  (``measure.copy_bandwidth()``), ``roofline_ms``, and ``fraction_of_roofline``;
* ``allreduce_share`` and ``nccl_share``: the GPU time of NCCL's all-reduce kernels (and of
  all its kernels, the logits' all-gather included) per step, from ``torch.profiler``, over the
  step time. A collective's kernel also waits for the slowest rank to arrive, so this is the
  time the step spends *in* communication, waiting included. None on the CPU smoke run.

**Weights.** Every rank builds only its own shard, with random values drawn on that rank
(a seed per rank; the replicated norms are ones): a step's speed does not depend on what the
weights are, and building the whole 8B model on every rank to cut it would take 16 GB and
minutes per rank. ``infer_lib.parallel`` cannot build from a per-rank shard by itself
(``TensorParallelTransformer`` takes the whole model or its whole state dict), so
``shard_model`` hands it a whole state dict of stride-0 views of one element
(``Tensor.expand``: no memory) and ``check=False``; it keeps and copies only this rank's pieces
(``sharding.shard_state_dict``), which are then filled with random numbers in place. So the
model is the course's own parallel model, unchanged; only its values are made up per shard.

**Timing.** The cache is filled with random keys and values, ``context`` tokens per sequence;
each timed step first resets the lengths (one small copy), as in ``decode``. On a GPU the step
is captured once in a CUDA graph (NCCL collectives can be captured); if the capture fails on
any rank, every rank times eager steps and the record says why (``note``). Every rank runs
the same fixed number of warm-up and timed steps (collectives must pair up), each timed by
CUDA events; a rank's time is the median, and the file keeps the slowest rank's. No L2 flush:
a rank's weights are gigabytes.

    torchrun --nproc-per-node N -m infer_lib.experiments.tp_decode --out-dir DIR \\
        [--preset llama-3-8b] [--batches 1 16] [--context 4096] [--smoke]

Rank 0 writes ``DIR/tp_<gpu>x<N>.json``. ``--smoke`` (``run(smoke=True)``): gloo on CPUs, the
``tiny`` preset, a few tokens of context, eager steps and a wall clock — the plumbing, never a
measurement.

NVLink multicast is kept off in every process (``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``, set on import unless set).
"""

from __future__ import annotations

import os

# Multicast objects (NVLink SHARP / NVLS) can take a shared host's GPUs out of service: keep
# them off in every process, before torch.distributed (and NCCL) initialise.
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_name, _value)

import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from .. import device, measure, parallel  # noqa: E402
from ..model import KVCache, ModelConfig, decode_one_token  # noqa: E402
from ..parallel import sharding  # noqa: E402
from .allreduce import cli, group_provenance, max_over_ranks, run_and_write  # noqa: E402
from .decode import _graphed_step  # noqa: E402

TIMING = ("GPU time of one decode step (CUDA graph replay, or eager where capture failed: see each "
          "record's note): CUDA events around each step, fixed warm-up and repetitions on every rank, "
          "each rank's median, the slowest rank's kept; each step first resets the cache lengths")
SMOKE_TIMING = "wall clock of eager steps (smoke run, gloo on CPUs): plumbing only, not a measurement"
PRESET = "llama-3-8b"
BATCHES = (1, 16)
CONTEXT = 4096
WARMUP, REPS, PROFILED = 5, 30, 5
SMOKE_BATCHES, SMOKE_CONTEXT = (1, 2), 8

SCHEMA = measure.Schema(
    "tp_decode file",
    keys=("timing", "params", "params.world_size", "params.preset", "copy_GBps", "records"),
    numbers=("params.world_size", "copy_GBps"),
    records=(measure.Records("records", keys=("batch", "graph", "note", "allreduce_share", "nccl_share"),
                             numbers=("ms", "tokens_per_s", "rank_weight_bytes", "rank_kv_bytes",
                                      "rank_bytes", "roofline_ms", "fraction_of_roofline")),),
    provenance=(*measure.PROVENANCE_KEYS, "world_size", "backend", "topology"),
)


def shard_model(config: ModelConfig, dtype: torch.dtype, *, seed: int = 0,
                backend: str = "sdpa") -> parallel.TensorParallelTransformer:
    """This rank's ``TensorParallelTransformer`` of ``config``'s shapes with random weights,
    without ever holding the whole model: the whole state dict it is given is stride-0 views of
    one element, and only the rank's pieces are allocated (on its device), then drawn at random
    with seed ``seed`` + 1000·rank — norms are ones on every rank; linear weights
    ``N(0, 1/fan_in)`` of the whole layer's fan-in; embedding rows ``N(0, 1)``."""
    info = parallel.rank_info()
    one = torch.empty((), dtype=dtype, device=info.device)
    full = {name: one.expand(shape) for name, shape in sharding.full_shapes(config).items()}
    tp = parallel.TensorParallelTransformer(full, config, backend=backend, check=False)
    del full
    gen = torch.Generator(device=info.device).manual_seed(seed + 1000 * info.rank)
    for name, p in tp.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name == "embed_tokens.weight":
            p.normal_(0.0, 1.0, generator=gen)
        else:
            row_parallel = name.endswith(("o_proj.weight", "down_proj.weight"))
            fan_in = p.shape[1] * (info.world_size if row_parallel else 1)
            p.normal_(0.0, fan_in ** -0.5, generator=gen)
    return tp.to(dtype)          # as decode.random_model: the RoPE tables in dtype too


def rank_bytes(tp: parallel.TensorParallelTransformer, batch: int, context: int,
               dtype: torch.dtype) -> tuple[int, int]:
    """``(weight bytes, KV bytes)`` this rank reads in a decode step: its parameters but the
    input embedding (a tied head reads that matrix, so then it counts), and its cache."""
    weights = sum(p.numel() * p.element_size() for name, p in tp.named_parameters()
                  if name != "embed_tokens.weight" or tp.full_config.tie_embeddings)
    kv = tp.config.kv_cache_bytes_per_token(dtype) * context * batch
    return weights, kv


def _capture(tp, token, cache, lengths, info):
    """The graphed step, or ``(None, why)``; every rank gets the same verdict."""
    step, why = None, None
    try:
        step = _graphed_step(tp, token, cache, lengths)
    except Exception as e:       # noqa: BLE001 — any capture failure falls back to eager
        why = f"CUDA graph capture failed on rank {info.rank}: {type(e).__name__}: {str(e)[:300]}"
        torch.cuda.synchronize()
    ok = torch.tensor([0 if step is None else 1], device=info.device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if int(ok.item()) == 0:
        notes = [None] * info.world_size
        dist.all_gather_object(notes, why)
        return None, "; ".join(n for n in notes if n) + " — timed eagerly"
    return step, None


def _time_steps(step, smoke: bool) -> float:
    """Median µs of a step on this rank: fixed counts (the same on every rank)."""
    warmup, reps = (1, 3) if smoke else (WARMUP, REPS)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        if smoke:
            t0 = time.perf_counter()
            step()
            times.append(1e6 * (time.perf_counter() - t0))
        else:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(1e3 * start.elapsed_time(end))
    return statistics.median(times)


def nccl_kernel_us(step, steps: int = PROFILED) -> tuple[float, float] | None:
    """``(all-reduce µs, all NCCL µs)`` of GPU kernel time per step, from ``torch.profiler``
    (``steps`` steps); None if the profiler saw no GPU kernel at all, or no NCCL kernel on
    more than one rank (where there must be some)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if not kernels:
        return None
    nccl = [e for e in kernels if "nccl" in e.name.lower()]
    if not nccl and dist.get_world_size() > 1:
        return None                  # the collectives' kernels were not seen: no share at all
    allreduce = [e for e in nccl if "allreduce" in e.name.lower().replace("_", "")]
    total = lambda evs: sum(e.time_range.elapsed_us() for e in evs) / steps   # noqa: E731
    return total(allreduce), total(nccl)


def measure_batch(tp, batch: int, context: int, dtype: torch.dtype, copy_GBps: float,
                  info: parallel.RankInfo, *, smoke: bool = False) -> dict:
    """One record: a decode step of ``batch`` sequences ``context`` tokens into their caches."""
    cache = KVCache(tp.config, batch, context + 1, dtype=dtype, device=info.device)
    gen = torch.Generator(device=info.device).manual_seed(1 + info.rank)
    cache.k_cache.normal_(generator=gen)
    cache.v_cache.normal_(generator=gen)
    cache.seqlens.fill_(context)
    lengths = cache.seqlens.clone()
    # the same tokens on every rank (the embedding is split over the vocabulary)
    token = torch.randint(0, tp.full_config.vocab_size, (batch,),
                          generator=torch.Generator().manual_seed(batch)).to(info.device)

    def eager_step():
        cache.seqlens.copy_(lengths)
        decode_one_token(tp, token, cache)

    step, note = (eager_step, None) if smoke else _capture(tp, token, cache, lengths, info)
    graph = step is not None and not smoke
    step = step or eager_step
    us = max_over_ranks(_time_steps(step, smoke), info)
    allreduce_share = nccl_share = None
    if not smoke:
        every = [None] * info.world_size                 # every rank enters the same collective
        dist.all_gather_object(every, nccl_kernel_us(step))
        if any(k is None for k in every):
            note = "; ".join(filter(None, [note, "the profiler saw no NCCL kernels: shares left out"]))
        else:                                            # the rank that spent longest in NCCL
            allreduce_share = measure.sig(max(k[0] for k in every) / us, 4)
            nccl_share = measure.sig(max(k[1] for k in every) / us, 4)
    weights, kv = rank_bytes(tp, batch, context, dtype)
    roofline_us = max_over_ranks((weights + kv) / (copy_GBps * 1e3), info)   # the slowest rank's
    return {"batch": batch, "context": context, "graph": graph, "note": note,
            "ms": measure.sig(us / 1e3), "tokens_per_s": measure.sig(batch / (us * 1e-6)),
            "rank_weight_bytes": weights, "rank_kv_bytes": kv, "rank_bytes": weights + kv,
            "roofline_ms": measure.sig(roofline_us / 1e3),
            "fraction_of_roofline": measure.sig(roofline_us / us, 4),
            "allreduce_share": allreduce_share, "nccl_share": nccl_share}


def run(preset: str = PRESET, *, batches=BATCHES, context: int = CONTEXT, backend: str = "sdpa",
        smoke: bool = False, timeout_s: float | None = None) -> dict:
    """The payload of ``tp_<gpu>x<N>.json``, on every rank (rank 0 saves it). Joins the group of
    ``parallel.init`` (NCCL on GPUs; gloo under ``smoke``) if none is running. ``smoke``: the
    ``tiny`` preset, batches 1 and 2, 8 tokens of context, fp32, eager, a wall clock."""
    if not smoke:
        measure._require_gpu("tp_decode.run")
    if smoke:
        preset, batches, context = "tiny", SMOKE_BATCHES, SMOKE_CONTEXT
    kwargs = {} if timeout_s is None else {"timeout": timeout_s}
    info = parallel.init(backend="gloo" if smoke else None, **kwargs)
    config = ModelConfig.from_preset(preset)
    parallel.check_shardable(config, info.world_size)       # before anything is built, on every rank
    dtype = device.default_dtype() if info.device.type == "cuda" else torch.float32
    # the rank's own ceiling, before the model takes its memory (smoke: a placeholder, 1 GB/s)
    copy_GBps = 1.0 if smoke else measure.copy_bandwidth()["GBps"]
    copies = [None] * info.world_size
    dist.all_gather_object(copies, copy_GBps)
    tp = shard_model(config, dtype, backend=backend)
    with torch.no_grad():
        records = [measure_batch(tp, int(b), int(context), dtype, copy_GBps, info, smoke=smoke)
                   for b in batches]
    del tp
    if info.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"provenance": group_provenance(info, smoke),
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"preset": preset, "world_size": info.world_size, "dtype": device.dtype_name(dtype),
                       "context": int(context), "backend": backend,
                       "weights": "random, drawn per shard on each rank (shard_model)",
                       "rank_shape": {"n_heads": config.n_heads // info.world_size,
                                      "n_kv_heads": max(config.n_kv_heads // info.world_size, 1),
                                      "ffn_dim": config.ffn_dim // info.world_size},
                       "collectives_per_step": {"all_reduce": 2 * config.n_layers + 1, "all_gather": 1}},
            "copy_GBps": min(copies), "copy_GBps_per_rank": copies, "records": records}


def _report(doc: dict) -> None:
    if doc["provenance"].get("smoke"):
        print(f"SMOKE RUN — {doc['timing']}")
    p = doc["params"]
    print(f"{p['preset']} over N={p['world_size']} ({doc['provenance']['backend']}, {p['dtype']}, "
          f"context {p['context']})")
    for r in doc["records"]:
        share = "" if r["allreduce_share"] is None else f"  all-reduce {r['allreduce_share']:6.1%} of the step"
        mode = "graph" if r["graph"] else "eager"
        print(f"  B={r['batch']:<3} {mode:<5} {r['ms']:8.3f} ms/step {r['tokens_per_s']:9.0f} tok/s  "
              f"{r['fraction_of_roofline']:6.1%} of the per-GPU roofline{share}")
        if r["note"]:
            print(f"    note: {r['note']}")


def _arguments(parser) -> None:
    parser.add_argument("--preset", default=PRESET, help="model shapes (infer_lib.model.PRESETS)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes")
    parser.add_argument("--context", type=int, default=CONTEXT, help="tokens in each sequence's cache")
    parser.add_argument("--backend", default="sdpa", help="attention backend: sdpa or triton")


def main(argv=None) -> None:
    """``torchrun --nproc-per-node N -m infer_lib.experiments.tp_decode --out-dir DIR [...]``."""
    args = cli(argv, topic="tp_decode", add_arguments=_arguments,
               description="Time a tensor-parallel decode step over N GPUs against the per-GPU bandwidth "
                           "roofline; rank 0 writes tp_<gpu>x<N>.json.",
               why_gpu="CPU timings say nothing about decoding speed on GPUs")
    if any(b < 1 for b in args.batches) or args.context < 1:
        raise SystemExit("--batches and --context must be positive")
    run_and_write(lambda: run(args.preset, batches=args.batches, context=args.context,
                              backend=args.backend, smoke=args.smoke),
                  args.out_dir, "tp", SCHEMA, _report)


if __name__ == "__main__":
    main()
