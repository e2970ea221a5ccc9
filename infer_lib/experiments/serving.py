"""Serving a trace (the appendix): the paged decode kernel, our continuous batching server, and
``transformers``' own continuous batching on the same trace and weights.

Three measurements, one run:

* **kernel** — ``paged_decode_attention`` against the contiguous ``decode_attention`` on the
  *same* keys and values (Llama-3.2-1B's attention shapes, and ``D = 128``), each cache
  ≥ 128 MB, the blocks shuffled through the pool as a long-running server leaves them,
  block sizes 16 and 64. GPU time of one call, the median of CUDA-graph replays
  (``measure.bench_us_hot``), and the bandwidth each reaches on the bytes a step must read
  (every key and value once, the query and the output); ``ratio`` is the contiguous time over
  the paged one (above 0.85 is the issue's target). The two outputs are checked against each
  other first.
* **offline** — ``serving.Server`` on a trace of ``n_requests`` (a fixed seed; prompts
  uniform in 32–512 tokens, 128 new tokens each, greedy) of a model of ``preset``'s shapes
  with random weights in bf16, every request there at the start (as ``generate_batch`` has
  them): output tokens per second of wall clock, TTFT and TPOT percentiles, and the
  fraction of the compute and bandwidth rooflines the run reached (``roofline``). The whole
  trace runs once untimed first (it compiles and tunes every kernel shape and captures the
  decode graphs).
* **online** — the same requests arriving as a Poisson process (``online_rate`` requests
  per second; by default half the offline run's request rate, so the server is loaded but
  keeps up): p50/p99 TTFT and TPOT, with each request's.
* **peer** — ``transformers``' ``generate_batch`` (continuous batching with its paged cache,
  ``attn_implementation="paged|sdpa"`` where the version has it) on the same trace, with the
  same weights copied into a ``LlamaForCausalLM``: output tokens per second of wall clock,
  after a small untimed warm-up batch. Any failure (transformers missing, an API of another
  version) is recorded in the file, not raised. How many requests got the same greedy tokens
  as ours is recorded beside it (bf16 rounding in two implementations can split near-ties).

``python -m infer_lib.experiments.serving --out-dir DIR [--smoke]`` writes
``DIR/serving_<gpu>.json``. ``--smoke`` (``run(smoke=True)``) runs the same plumbing on any
machine — the tiny model in fp32, a few short requests, the kernels in Triton's interpreter,
a wall clock, no peer — to test the code, never to measure.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
import time
from pathlib import Path

import torch

from .. import device, measure
from ..model import ModelConfig
from ..serving import Server, Stats, poisson_arrivals, synthetic_trace, with_arrivals
from . import decode

TIMING = ("kernel: GPU time, median of CUDA-graph replays (measure.bench_us_hot); server and peer: "
          "host wall clock of the whole trace (time.perf_counter), after an untimed warm-up; copy "
          "bandwidth and cuBLAS bf16 FLOP/s measured in the same run")
SMOKE_TIMING = "wall clock (smoke run on the CPU): plumbing only, not a measurement"

PRESET = "llama-3.2-1b"
N_REQUESTS, PROMPT_LEN, NEW_TOKENS, SEED = 256, (32, 512), 128, 0
BLOCK_SIZE, MAX_BATCH, PREFILL_CHUNK = 16, 256, 2048
#: (B, H, H_kv, D, context) of the kernel comparison: Llama-3.2-1B's attention at serving-like
#: and long contexts, and D = 128 as the decode bench; every cache ≥ 128 MB in bf16
KERNEL_SHAPES = ((256, 32, 8, 64, 640), (64, 32, 8, 64, 2048), (4, 32, 8, 64, 32768), (16, 32, 8, 128, 4096))
KERNEL_BLOCKS = (16, 64)
#: the smoke run: every path once at the least work (the interpreter takes ~0.1 s a program):
#: four requests, prefilled in two steps, decoded together; all arriving at once online
SMOKE = {"preset": "tiny", "n_requests": 4, "prompt_len": (4, 20), "new_tokens": 3, "max_batch": 4,
         "prefill_chunk": 32, "kernel_shapes": ((2, 4, 2, 16, 40),), "kernel_blocks": (16,),
         "warmup_requests": 1, "online_rate": 1000.0}

SCHEMA = measure.Schema(
    "serving file",
    keys=("timing", "params", "trace", "copy_GBps", "matmul_TFLOPs", "kernel", "offline", "online", "peer"),
    numbers=("copy_GBps", "matmul_TFLOPs", "offline.output_tokens_per_s", "offline.wall_s",
             "offline.ttft_p50_ms", "offline.tpot_p50_ms", "offline.roofline.fraction_of_roofline",
             "online.rate", "online.ttft_p50_ms", "online.ttft_p99_ms", "online.tpot_p50_ms",
             "online.tpot_p99_ms", "online.output_tokens_per_s"),
    records=(measure.Records("kernel", keys=("block_size",),
                             numbers=("batch", "heads", "kv_heads", "head_dim", "context", "bytes",
                                      "paged_us", "contiguous_us", "paged_GBps", "contiguous_GBps", "ratio")),
             measure.Records("online.per_request", keys=("id", "prompt_len", "arrival_s", "ttft_ms", "tpot_ms"))),
)


def _progress(t0: float, what: str, smoke: bool) -> None:
    if not smoke:   # a GPU run takes minutes: say where it is
        print(f"[{time.perf_counter() - t0:6.1f} s] {what}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# The kernel: paged against contiguous on the same keys
# ----------------------------------------------------------------------------

def paged_copy(k: torch.Tensor, v: torch.Tensor, block_size: int, seed: int = 0):
    """``k, v (B, H_kv, S, D)`` copied into pools of blocks ``(B · ⌈S/BLOCK⌉, H_kv, BLOCK, D)`` in a
    random order (a fixed seed), and the block table ``(B, ⌈S/BLOCK⌉)`` int32 that finds them."""
    B, H_kv, S, D = k.shape
    n = -(-S // block_size)
    pad = n * block_size - S
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(B * n, generator=g).to(k.device)              # block j of sequence b -> order[b·n + j]
    table = order.view(B, n).to(torch.int32)

    def pool(x):
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))                    # (B, H_kv, n·BLOCK, D)
        x = x.view(B, H_kv, n, block_size, D).permute(0, 2, 1, 3, 4).reshape(B * n, H_kv, block_size, D)
        out = torch.empty_like(x)
        out[order] = x
        return out
    return pool(k), pool(v), table


def kernel_record(B: int, H: int, H_kv: int, D: int, S: int, block_size: int, dtype: torch.dtype,
                  smoke: bool = False) -> dict:
    """One comparison: ``decode_attention`` over ``(B, H_kv, S, D)`` and ``paged_decode_attention``
    over the same keys in shuffled blocks, every sequence ``S`` tokens long."""
    from ..kernels import decode_attention, paged_decode_attention

    dev = device.DEVICE
    q = torch.randn(B, H, D, device=dev, dtype=dtype)
    k = torch.randn(B, H_kv, S, D, device=dev, dtype=dtype)
    v = torch.randn(B, H_kv, S, D, device=dev, dtype=dtype)
    kb, vb, table = paged_copy(k, v, block_size)
    lens = torch.full((B,), S, dtype=torch.int32, device=dev)
    torch.testing.assert_close(paged_decode_attention(q, kb, vb, table, lens).float(),
                               decode_attention(q, k, v, lens).float(), atol=2e-2, rtol=2e-2)
    timer = measure.timer(smoke)
    paged_us = timer(lambda: paged_decode_attention(q, kb, vb, table, lens))
    contiguous_us = timer(lambda: decode_attention(q, k, v, lens))
    nbytes = (2 * B * H_kv * S + 2 * B * H) * D * dtype.itemsize
    return {"batch": B, "heads": H, "kv_heads": H_kv, "head_dim": D, "context": S, "block_size": block_size,
            "bytes": nbytes, "cache_MB": measure.sig(2 * B * H_kv * S * D * dtype.itemsize / 1e6),
            "paged_us": measure.sig(paged_us), "contiguous_us": measure.sig(contiguous_us),
            "paged_GBps": measure.sig(nbytes / paged_us / 1e3),
            "contiguous_GBps": measure.sig(nbytes / contiguous_us / 1e3),
            "ratio": measure.sig(contiguous_us / paged_us, 4)}


# ----------------------------------------------------------------------------
# The server's rooflines
# ----------------------------------------------------------------------------

def roofline(stats: Stats, config: ModelConfig, dtype: torch.dtype | int, wall_s: float, copy_GBps: float,
             matmul_TFLOPs: float) -> dict:
    """What a run's iterations had to do, and the least time it could take.

    Per iteration (``Stats.log``), each forward pass (a decode step, a prefill pass) reads every
    weight once (``decode.step_bytes`` with no cache); the decode rows read their keys and
    values, the prefill chunks the keys they gather, and every new token's key and value is
    written. FLOPs: two per weight per token through the body, the output head for each decode
    row and each chunk's last token, and ``4 · L · H · D`` per (query, key) pair of attention.
    The iteration's roofline time is ``max(FLOPs / peak, bytes / bandwidth)`` at the matmul and
    copy ceilings measured in the same run; ``fraction_of_roofline`` is their sum over the wall
    clock. ``fraction_of_compute`` and ``fraction_of_bandwidth`` are the average FLOP/s and
    bytes/s of the whole run over each ceiling."""
    esize = dtype if isinstance(dtype, int) else dtype.itemsize
    weight_bytes = decode.step_bytes(config, 0, 0, esize)
    head = config.vocab_size * config.dim                          # the output head's weights
    body = weight_bytes // esize - head
    kv = config.kv_cache_bytes_per_token(esize)
    attn = 4 * config.n_layers * config.n_heads * config.head_dim
    flops = nbytes = 0
    least = 0.0
    for w in stats.log:
        forwards = (w.decode_rows > 0) + (w.prefill_tokens > 0)
        f = (2 * body * (w.decode_rows + w.prefill_tokens) + 2 * head * (w.decode_rows + w.prefill_chunks)
             + attn * (w.decode_keys + w.prefill_pairs))
        b = (weight_bytes * forwards
             + kv * (w.decode_keys + w.prefill_keys + w.decode_rows + w.prefill_tokens))
        flops += f
        nbytes += b
        least += max(f / (matmul_TFLOPs * 1e12), b / (copy_GBps * 1e9))
    return {"flops": flops, "bytes": nbytes, "roofline_s": measure.sig(least),
            "TFLOPs": measure.sig(flops / wall_s / 1e12), "GBps": measure.sig(nbytes / wall_s / 1e9),
            "fraction_of_compute": measure.sig(flops / wall_s / (matmul_TFLOPs * 1e12), 4),
            "fraction_of_bandwidth": measure.sig(nbytes / wall_s / (copy_GBps * 1e9), 4),
            "fraction_of_roofline": measure.sig(least / wall_s, 4)}


def memory_record(stats: Stats, config: ModelConfig, dtype: torch.dtype, block_size: int, max_batch: int,
                  max_seq_len: int) -> dict:
    """The paged cache at its fullest step of a run — blocks held, and the tokens written in them —
    against a contiguous cache reserving ``max_seq_len`` positions for each of ``max_batch``
    sequences (chapter 6's ``KVCache`` for the same batch), in MB of keys and values."""
    per_token = config.kv_cache_bytes_per_token(dtype)
    peak = max(stats.log, key=lambda w: w.blocks_held)
    return {"peak_blocks": peak.blocks_held, "tokens_at_peak": peak.tokens_held,
            "paged_MB": measure.sig(peak.blocks_held * block_size * per_token / 1e6),
            "written_MB": measure.sig(max(peak.tokens_held, 1) * per_token / 1e6),
            "contiguous_MB": measure.sig(max_batch * max_seq_len * per_token / 1e6)}


def _summary(report) -> dict:
    s = report.summary()
    return {k: (measure.sig(v) if isinstance(v, float) else v) for k, v in s.items()}


# ----------------------------------------------------------------------------
# The peer: transformers' continuous batching
# ----------------------------------------------------------------------------

#: tried in order: the spelling the issue's peer measurement used (transformers 5.17), then
#: the one later versions want (they dropped the "paged|" prefix for SDPA)
PEER_ATTENTION = ("paged|sdpa", "sdpa")


def hf_model(model, dtype: torch.dtype, attention: tuple[str, ...] = PEER_ATTENTION):
    """A ``transformers.LlamaForCausalLM`` holding a copy of ``model``'s weights (names mapped by
    ``checkpoint.hf_name``), in ``dtype`` on the model's device, with the first attention
    implementation of ``attention`` this version accepts. Returns ``(hf, implementation)``."""
    import transformers

    from ..model.checkpoint import config_to_hf, hf_name

    fields = {k: v for k, v in config_to_hf(model.config, dtype).items()
              if k not in ("architectures", "model_type", "torch_dtype")}
    errors = []
    weight = model.embed_tokens.weight
    for impl in attention:
        try:
            with torch.device(weight.device), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)      # "paged|" is deprecated from 5.2x on
                hf = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**fields),
                                                                attn_implementation=impl, dtype=dtype)
            break
        except Exception as err:          # an implementation this version does not know
            errors.append(f"{impl}: {type(err).__name__}: {err}")
    else:
        raise RuntimeError("no attention implementation accepted: " + "; ".join(errors))
    state = {hf_name(n): t for n, t in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    return hf.eval().requires_grad_(False), impl


def transformers_peer(model, requests, dtype: torch.dtype) -> dict:
    """``generate_batch`` of every request's prompt on a copy of ``model`` (``hf_model``), greedy,
    ``max_new_tokens`` of the longest request (the trace gives each the same), after an untimed
    batch of 8 short requests. Returns its wall clock, the output tokens it produced and each
    request's tokens (key ``tokens``, for the caller to compare and drop)."""
    import transformers

    transformers.logging.set_verbosity_error()
    hf, impl = hf_model(model, dtype)
    prompts = [list(r.prompt) for r in requests]
    n_new = max(r.max_new_tokens for r in requests)

    # no end-of-sequence token (every request runs its max_new_tokens, as ours do); a version that
    # insists on one gets the model's defaults instead — the tokens produced are counted either way
    for extra in ({"eos_token_id": None, "pad_token_id": 0}, {}):
        def config(n, extra=extra):
            return transformers.GenerationConfig(max_new_tokens=n, do_sample=False, **extra)
        try:
            hf.generate_batch(inputs=prompts[:8], generation_config=config(8))   # warm-up
            break
        except Exception:
            if not extra:
                raise
    if device.HAS_GPU:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = hf.generate_batch(inputs=prompts, generation_config=config(n_new))
    if device.HAS_GPU:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    # in the order of the prompts: ids "req_<i>" where the version numbers them so, else as returned
    ids = list(out)
    if all(re.fullmatch(r"req_\d+", i) for i in ids):
        ids.sort(key=lambda i: int(i[4:]))
    results = [out[i] for i in ids]
    tokens = [list(r.generated_tokens) for r in results]
    produced = sum(len(t) for t in tokens)
    errors = [str(r.error) for r in results if getattr(r, "error", None)]
    del hf, out
    if device.HAS_GPU:
        torch.cuda.empty_cache()
    return {"impl": "transformers generate_batch", "transformers": transformers.__version__,
            "attn_implementation": impl,
            "generation": "greedy, no end-of-sequence token" if extra else "greedy, the model's default eos", "requests_finished": len(results), "errors": errors[:3],
            "wall_s": measure.sig(wall), "output_tokens": produced,
            "output_tokens_per_s": measure.sig(produced / wall), "tokens": tokens}


def peer_record(model, requests, dtype: torch.dtype, ours_tokens: list[list[int]], ours_per_s: float) -> dict:
    """``transformers_peer`` with our speed-up over it and how many requests got our tokens; a
    failure of any kind is recorded as ``{"error": ...}`` instead of raised: the rest of the
    file stands."""
    try:
        doc = transformers_peer(model, requests, dtype)
        doc["agreement"] = _agreement(ours_tokens, doc.pop("tokens"))
        doc["our_speedup"] = measure.sig(ours_per_s / doc["output_tokens_per_s"], 4)
        return doc
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


def _agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    same = sum(a == b for a, b in zip(ours, theirs))
    first = sum(bool(a) and bool(b) and a[0] == b[0] for a, b in zip(ours, theirs))
    return {"same_tokens": same, "same_first_token": first, "compared": min(len(ours), len(theirs))}


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def run(preset: str = PRESET, *, smoke: bool = False, n_requests: int = N_REQUESTS, seed: int = SEED,
        online_rate: float | None = None, peer: bool | None = None) -> dict:
    """The payload of ``serving_<gpu>.json`` (a GPU, or ``smoke`` on any machine)."""
    if not smoke:
        measure._require_gpu("serving.run")
    s = dict(SMOKE) if smoke else {"preset": preset, "n_requests": n_requests, "prompt_len": PROMPT_LEN,
                                   "new_tokens": NEW_TOKENS, "max_batch": MAX_BATCH,
                                   "prefill_chunk": PREFILL_CHUNK, "kernel_shapes": KERNEL_SHAPES,
                                   "kernel_blocks": KERNEL_BLOCKS}
    peer = (not smoke) if peer is None else peer
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32
    t0 = time.perf_counter()
    copy_GBps = 1.0 if smoke else measure.copy_bandwidth()["GBps"]
    matmul_TFLOPs = 1.0 if smoke else measure.matmul_flops(dtype=dtype)["TFLOPs"]
    _progress(t0, f"ceilings: copy {copy_GBps:.0f} GB/s, matmul {matmul_TFLOPs:.0f} TFLOP/s", smoke)

    kernel = []
    for B, H, H_kv, D, S in s["kernel_shapes"]:
        for block in s["kernel_blocks"]:
            kernel.append(kernel_record(B, H, H_kv, D, S, block, dtype, smoke))
            if device.HAS_GPU:
                torch.cuda.empty_cache()          # the next shape's caches take the memory these had
            _progress(t0, f"kernel B={B} S={S} D={D} block {block}: ratio {kernel[-1]['ratio']}", smoke)

    config = ModelConfig.from_preset(s["preset"])
    model = decode.random_model(config, "triton", dtype)
    trace = synthetic_trace(s["n_requests"], seed=seed, prompt_len=s["prompt_len"], new_tokens=s["new_tokens"],
                            vocab_size=config.vocab_size)
    max_seq_len = s["prompt_len"][1] + s["new_tokens"]
    settings = {"block_size": BLOCK_SIZE, "max_batch": s["max_batch"], "max_seq_len": max_seq_len,
                "prefill_chunk": s["prefill_chunk"], "attention": "paged", "model_backend": "triton",
                "cuda_graphs": device.HAS_GPU}
    server = Server(model, block_size=BLOCK_SIZE, max_batch=s["max_batch"], max_seq_len=max_seq_len,
                    prefill_chunk=s["prefill_chunk"], attention="paged", cuda_graphs=device.HAS_GPU)
    server.runner.capture()
    # untimed: every kernel shape the trace needs is compiled and tuned, every graph captured
    server.warm_up(trace[:s.get("warmup_requests", len(trace))])
    _progress(t0, "warm-up run done", smoke)

    offline_report = server.run(trace)
    server.check_invariants()
    offline = _summary(offline_report)
    offline["roofline"] = roofline(offline_report.stats, config, dtype, offline_report.wall_s, copy_GBps,
                                   matmul_TFLOPs)
    offline["memory"] = memory_record(offline_report.stats, config, dtype, BLOCK_SIZE, s["max_batch"], max_seq_len)
    _progress(t0, f"offline: {offline['output_tokens_per_s']:.0f} output tokens/s", smoke)

    rate = online_rate or s.get("online_rate") or measure.sig(0.5 * len(trace) / offline_report.wall_s, 2)
    online_trace = with_arrivals(trace, poisson_arrivals(len(trace), rate, seed))
    server.stats = Stats()
    online_report = server.run(online_trace, realtime=True)
    server.check_invariants()
    online = {"rate": rate, **_summary(online_report),
              "per_request": [{"id": r.id, "prompt_len": r.prompt_len,
                            "arrival_s": measure.sig(q.arrival),
                            "ttft_ms": None if r.ttft is None else measure.sig(1e3 * r.ttft),
                            "tpot_ms": None if r.tpot is None else measure.sig(1e3 * r.tpot)}
                           for q, r in zip(online_trace, online_report.results)]}
    _progress(t0, f"online at {rate} requests/s: TTFT p50 {online['ttft_p50_ms']:.0f} ms", smoke)
    graphs = {"captured": sorted(server.runner._graphs), "error": server.runner.graph_error}
    ours_tokens = [r.tokens for r in offline_report.results]
    del server
    if device.HAS_GPU:
        torch.cuda.empty_cache()

    if not peer:
        peer_doc = {"skipped": "smoke run" if smoke else "not asked for"}
    else:
        peer_doc = peer_record(model, trace, dtype, ours_tokens, offline["output_tokens_per_s"])
        _progress(t0, f"peer: {peer_doc}", smoke)

    lengths = [len(r.prompt) for r in trace]
    return {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"preset": s["preset"], "dtype": device.dtype_name(dtype), "weights": "random",
                       "sampling": "greedy", "server": settings, "graphs": graphs},
            "trace": {"generator": "infer_lib.serving.synthetic_trace", "seed": seed, "n_requests": len(trace),
                      "prompt_len": {"distribution": "uniform integers", "range": list(s["prompt_len"]),
                                     "mean": measure.sig(sum(lengths) / len(lengths))},
                      "new_tokens": s["new_tokens"],
                      "online_arrivals": "Poisson process (infer_lib.serving.poisson_arrivals, same seed)",
                      "prompt_lens": lengths},
            "copy_GBps": copy_GBps, "matmul_TFLOPs": matmul_TFLOPs, "kernel": kernel,
            "offline": offline, "online": online, "peer": peer_doc}


def report(doc: dict) -> None:
    print(f"kernel: paged vs contiguous decode attention (copy {doc['copy_GBps']:.0f} GB/s)")
    for r in doc["kernel"]:
        print(f"  B={r['batch']:<4} S={r['context']:<6} D={r['head_dim']:<4} block {r['block_size']:<3} "
              f"{r['cache_MB']:8.0f} MB  paged {r['paged_GBps']:7.0f} GB/s  contiguous "
              f"{r['contiguous_GBps']:7.0f} GB/s  ratio {r['ratio']:.3f}")
    o, on, p = doc["offline"], doc["online"], doc["peer"]
    print(f"offline: {o['output_tokens_per_s']:.0f} output tokens/s ({o['output_tokens']} in {o['wall_s']:.2f} s, "
          f"mean decode batch {o['mean_decode_batch']:.0f}, {o['roofline']['fraction_of_roofline']:.1%} of the "
          f"roofline)")
    print(f"online at {on['rate']} requests/s: TTFT p50 {on['ttft_p50_ms']:.1f} ms p99 {on['ttft_p99_ms']:.1f} ms, "
          f"TPOT p50 {on['tpot_p50_ms']:.2f} ms p99 {on['tpot_p99_ms']:.2f} ms")
    if "output_tokens_per_s" in p:
        print(f"peer (transformers {p['transformers']}, {p['attn_implementation']}): "
              f"{p['output_tokens_per_s']:.0f} output tokens/s; ours {p['our_speedup']:.2f}x")
    else:
        print(f"peer: {p}")


def main(argv=None) -> dict:
    """``python -m infer_lib.experiments.serving --out-dir DIR [--smoke] [--preset NAME]
    [--requests N] [--online-rate R] [--no-peer]``."""
    parser = argparse.ArgumentParser(prog="python -m infer_lib.experiments.serving",
                                     description="Serve a synthetic trace with continuous batching over the "
                                                 "paged KV cache, against transformers' generate_batch; time the "
                                                 "paged decode kernel against the contiguous one; write "
                                                 "serving_<gpu>.json.")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for serving_<gpu>.json")
    parser.add_argument("--preset", default=PRESET, help="model shapes (infer_lib.model.PRESETS)")
    parser.add_argument("--requests", type=int, default=N_REQUESTS, help="requests in the trace")
    parser.add_argument("--online-rate", type=float, default=None,
                        help="requests per second of the online run (default: half the offline request rate)")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers' generate_batch")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any machine: plumbing only")
    args = parser.parse_args(argv)
    if not (device.HAS_GPU or args.smoke):
        parser.exit(2, "python -m infer_lib.experiments.serving needs a CUDA GPU: CPU timings say nothing "
                       "about serving speed on a GPU (--smoke runs the plumbing)\n")
    doc = run(args.preset, smoke=args.smoke, n_requests=args.requests, online_rate=args.online_rate,
              peer=False if args.no_peer else None)
    measure.validate(doc, SCHEMA)
    path = measure.save(doc, args.out_dir / f"serving_{measure.gpu_key()}.json")
    report(doc)
    print(f"-> {path}")
    return doc


if __name__ == "__main__":
    main()
