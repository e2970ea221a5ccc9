"""What sharing key/value heads buys in decoding speed (chapter 7).

Two measurements, both at a fixed number of query heads, so that only the K/V heads change:

* **attention** — one decoding step of ``decode_attention`` (and of SDPA with
  ``enable_gqa``, the PyTorch peer) for ``H = 32`` query heads of ``D = 128`` over a full
  cache of ``context`` tokens, for every ``H_kv`` in ``KV_HEADS`` (MHA 32 down to MQA 1) and
  every batch in ``BATCHES``. The step reads each sequence's keys and values once:
  ``2 · B · context · H_kv · D · element_size`` bytes, plus the query and the output. Its
  *predicted* time is those bytes at the copy bandwidth measured in the same run.
* **model** — one decoding step of the whole ``llama-3.2-1b``-shaped model (random weights,
  the Triton attention backend, replayed from a CUDA graph) with its own 8 K/V heads
  (GQA-8), with 32 (its MHA twin) and with 1 (MQA), at batches ``MODEL_BATCHES``, each
  sequence ``context`` tokens into its cache: tokens/s and the fraction of the bandwidth
  roofline (weights + cache at the copy bandwidth, ``decode.step_bytes``). The cache is
  filled with random keys and values instead of a prefill: a decoding step's time does not
  depend on what the cache holds, and a 64 × 4096-token prefill would only cost time.

Times are GPU time: attention, the median of CUDA-graph replays (``measure.bench_us_hot``);
the model step, as ``decode.measure_step`` times it (a replayed graph, L2 flushed before
each). bf16 (fp16 on a GPU without it).

    python -m infer_lib.experiments.gqa_speed --out-dir DIR [--context N]

writes ``DIR/gqa_speed_<gpu>.json``. ``run(smoke=True)`` runs the plumbing on any machine
at tiny sizes with a wall clock (the kernel in Triton's interpreter): never a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import device, measure
from ..kernels import decode_attention
from ..model import ModelConfig
from . import decode

TIMING = ("attention: GPU time, median of CUDA-graph replays (measure.bench_us_hot), L2 warm; "
          "model: one decode step replayed from a CUDA graph, triton.testing.do_bench median "
          "(L2 flushed before each), as decode.measure_step; copy bandwidth measured in the same run")
SMOKE_TIMING = "wall clock of one call (smoke run): plumbing only, not a measurement"
HEADS, HEAD_DIM, CONTEXT = 32, 128, 4096
KV_HEADS = (32, 16, 8, 4, 2, 1)
BATCHES = (1, 4, 16, 64)
MODEL_PRESET = "llama-3.2-1b"
MODEL_KV_HEADS = (32, 8, 1)
MODEL_BATCHES = (1, 16, 64)
SMOKE = {"heads": 4, "head_dim": 16, "context": 24, "kv_heads": (4, 2, 1), "batches": (1, 2),
         "preset": "tiny", "model_kv_heads": (4, 2, 1), "model_batches": (1, 2)}

SCHEMA = measure.Schema(
    "gqa_speed file",
    keys=("timing", "params", "copy_GBps", "attention", "model"),
    numbers=("copy_GBps",),
    records=(
        measure.Records("attention", numbers=("batch", "n_kv_heads", "us", "sdpa_us", "bytes",
                                              "GBps", "predicted_us")),
        measure.Records("model", numbers=("n_kv_heads", "batch", "context", "ms", "tokens_per_s",
                                          "bytes", "kv_cache_bytes", "roofline_ms",
                                          "fraction_of_roofline")),
    ),
)


def attention_bytes(batch: int, n_kv_heads: int, context: int, heads: int, head_dim: int,
                    element_size: int) -> int:
    """What one decoding step of attention must move: every cached key and value once, the
    query read and the output written."""
    return (2 * batch * context * n_kv_heads + 2 * batch * heads) * head_dim * element_size


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q[:, :, None], k, v,
                                          enable_gqa=k.shape[1] != q.shape[1])[:, :, 0]


def attention_record(batch: int, n_kv_heads: int, *, heads: int, head_dim: int, context: int,
                     dtype: torch.dtype, copy_GBps: float, smoke: bool = False) -> dict:
    """One decoding step of attention at (batch, H_kv), ours and SDPA's, checked against each
    other before timing."""
    q = torch.randn(batch, heads, head_dim, device=device.DEVICE, dtype=dtype)
    k, v = (torch.randn(batch, n_kv_heads, context, head_dim, device=device.DEVICE, dtype=dtype)
            for _ in range(2))
    lens = torch.full((batch,), context, dtype=torch.int32, device=device.DEVICE)
    torch.testing.assert_close(decode_attention(q, k, v, lens).float(), _sdpa(q, k, v).float(),
                               atol=2e-2, rtol=2e-2)
    timer = measure.timer(smoke)
    us = timer(lambda: decode_attention(q, k, v, lens))
    sdpa_us = timer(lambda: _sdpa(q, k, v))
    nbytes = attention_bytes(batch, n_kv_heads, context, heads, head_dim, dtype.itemsize)
    return {"batch": batch, "n_kv_heads": n_kv_heads, "us": measure.sig(us),
            "sdpa_us": measure.sig(sdpa_us), "bytes": nbytes, "GBps": measure.sig(nbytes / us / 1e3),
            "predicted_us": measure.sig(nbytes / (copy_GBps * 1e3))}


def model_record(config: ModelConfig, batch: int, context: int, dtype: torch.dtype,
                 copy_GBps: float, smoke: bool = False) -> dict:
    """One decoding step of the whole model (``decode.measure_step``, the Triton backend, from
    a CUDA graph on a GPU), its cache ``context`` tokens deep and random."""
    graph = device.HAS_GPU and not smoke
    record = decode.measure_step(config, "triton", batch, context, graph, dtype, copy_GBps,
                                 smoke=smoke, random_cache=True)
    if device.HAS_GPU:
        torch.cuda.empty_cache()
    return {"n_kv_heads": config.n_kv_heads, **record,
            "kv_cache_bytes": config.kv_cache_bytes_per_token(dtype) * batch * context}


def run(context: int = CONTEXT, *, smoke: bool = False) -> dict:
    """The payload of ``gqa_speed_<gpu>.json`` (a GPU, or ``smoke`` on any machine)."""
    if not smoke:
        measure._require_gpu("gqa_speed.run")
    s = SMOKE if smoke else {"heads": HEADS, "head_dim": HEAD_DIM, "context": context,
                             "kv_heads": KV_HEADS, "batches": BATCHES, "preset": MODEL_PRESET,
                             "model_kv_heads": MODEL_KV_HEADS, "model_batches": MODEL_BATCHES}
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32
    copy_GBps = 1.0 if smoke else measure.copy_bandwidth()["GBps"]
    t0 = time.perf_counter()

    def progress(what: str) -> None:  # a run takes minutes on a GPU: say where it is
        if not smoke:
            print(f"[{time.perf_counter() - t0:6.1f} s] {what}", file=sys.stderr, flush=True)

    attention = []
    for n in s["kv_heads"]:
        for B in s["batches"]:
            attention.append(attention_record(B, n, heads=s["heads"], head_dim=s["head_dim"],
                                              context=s["context"], dtype=dtype,
                                              copy_GBps=copy_GBps, smoke=smoke))
            progress(f"attention H_kv={n} B={B}")
    base = ModelConfig.from_preset(s["preset"])
    model = []
    for n in s["model_kv_heads"]:
        for B in s["model_batches"]:
            model.append(model_record(dataclasses.replace(base, n_kv_heads=n), B, s["context"],
                                      dtype, copy_GBps, smoke))
            progress(f"model H_kv={n} B={B}")
    return {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"heads": s["heads"], "head_dim": s["head_dim"], "context": s["context"],
                       "dtype": device.dtype_name(dtype), "preset": s["preset"],
                       "model_heads": base.n_heads, "model_own_kv_heads": base.n_kv_heads,
                       "weights": "random", "model_backend": "triton"},
            "copy_GBps": copy_GBps, "attention": attention, "model": model}


def report(doc: dict) -> None:
    p = doc["params"]
    print(f"attention: H={p['heads']} D={p['head_dim']} context={p['context']} "
          f"(copy {doc['copy_GBps']:.0f} GB/s)")
    for r in doc["attention"]:
        print(f"  H_kv={r['n_kv_heads']:<3} B={r['batch']:<3} {r['us']:9.1f} µs (predicted "
              f"{r['predicted_us']:8.1f}, SDPA {r['sdpa_us']:8.1f})  {r['GBps']:7.0f} GB/s")
    print(f"model: {p['preset']} shapes, context {p['context']}, CUDA graph")
    for r in doc["model"]:
        print(f"  H_kv={r['n_kv_heads']:<3} B={r['batch']:<3} {r['ms']:8.3f} ms/step "
              f"{r['tokens_per_s']:9.0f} tok/s  {r['fraction_of_roofline']:6.1%} of the roofline  "
              f"cache {r['kv_cache_bytes'] / 1e9:6.2f} GB")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m infer_lib.experiments.gqa_speed",
                                     description="Decoding speed against the number of K/V heads "
                                                 "(attention alone and the whole model); write "
                                                 "gqa_speed_<gpu>.json.")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for gqa_speed_<gpu>.json")
    parser.add_argument("--context", type=int, default=CONTEXT, help="tokens in each sequence's cache")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any machine: plumbing only")
    args = parser.parse_args(argv)
    if not (device.HAS_GPU or args.smoke):
        parser.exit(2, "python -m infer_lib.experiments.gqa_speed needs a CUDA GPU: CPU timings say "
                       "nothing about decoding speed on a GPU (--smoke runs the plumbing)\n")
    doc = run(args.context, smoke=args.smoke)
    measure.validate(doc, SCHEMA)
    path = measure.save(doc, args.out_dir / f"gqa_speed_{measure.gpu_key()}.json")
    report(doc)
    print(f"-> {path}")
    return doc


if __name__ == "__main__":
    main()
