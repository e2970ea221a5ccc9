"""What the KV cache buys, and what keeping it off the GPU would cost (chapter 6).

Two measurements on the model (``infer_lib.model``, random weights, bf16 where
the GPU has it, batch 1):

* **with and without a cache** — the time to produce one token after ``L``
  tokens, for a range of ``L``: with the cache, one decode step (one token's
  worth of work, reading ``L`` cached keys and values); without it, the whole
  sequence through the model again (a prefill of ``L`` tokens, keeping the last
  token's logits). The first stays nearly flat, the second grows with ``L``.
* **the cache across PCIe** — host-to-device copy bandwidth from pageable and
  from pinned (page-locked) host memory, against the device's own copy bandwidth
  (``measure.copy_bandwidth``), for buffers from 64 MiB to 1 GiB; and, for a
  decode step of the model at batch 16 and 4096 tokens of context, the time to
  bring its cache from the host (the largest pinned bandwidth) against the time to
  read it from HBM.

    python -m infer_lib.experiments.kv_cache --out-dir DIR [--preset llama-3.2-1b]

writes ``DIR/kv_cache_<gpu>.json``. ``run(smoke=True)`` runs the plumbing on any
machine with a tiny model and a wall clock: never a measurement.
"""

from __future__ import annotations

import torch

from .. import device, measure
from ..model import KVCache, ModelConfig, decode_one_token, prefill
from . import model_cli
from .decode import random_model

TIMING = ("with/without cache: GPU time, median of CUDA-graph replays (measure.bench_us_hot) of one "
          "decode step (lengths reset first) or one forward pass over the sequence; host-to-device: "
          "do_bench median of one copy into a preallocated device buffer; device copy: "
          "measure.copy_bandwidth")
SMOKE_TIMING = "wall clock of one call (smoke run on the CPU): plumbing only, not a measurement"
LENGTHS = (128, 256, 512, 1024, 2048, 4096)
TRANSFER_BYTES = (2**26, 2**28, 2**30)
#: the decode step whose cache crosses PCIe: batch and tokens of context
OFFLOAD_BATCH, OFFLOAD_CONTEXT = 16, 4096

SCHEMA = measure.Schema(
    "KV cache file",
    keys=("timing", "params", "per_token", "transfer", "device_copy_GBps", "offload"),
    numbers=("device_copy_GBps", "offload.cache_bytes", "offload.hbm_ms", "offload.pcie_ms"),
    records=(measure.Records("per_token", numbers=("length", "cached_ms", "uncached_ms")),
             measure.Records("transfer", keys=("pinned",), numbers=("bytes", "us", "GBps"))),
)


def per_token_times(model, lengths, *, smoke: bool = False) -> list[dict]:
    """Time for one more token after ``L`` tokens, with the cache (one decode step) and without
    (the whole sequence through the model again), batch 1, for each ``L`` of ``lengths``."""
    config = model.config
    dtype = model.embed_tokens.weight.dtype
    # GPU time from CUDA-graph replays: eagerly, a step of the model is many small launches
    # whose Python cost on the host (chapter 2) would hide the GPU work being compared.
    timer = measure.timer(smoke)
    out = []
    for L in lengths:
        tokens = torch.randint(0, config.vocab_size, (1, L), device=device.DEVICE)
        cache = KVCache(config, 1, L + 1, dtype=dtype, device=device.DEVICE)
        token = prefill(model, tokens, cache).argmax(-1)
        lengths_now = cache.seqlens.clone()

        def cached():
            cache.seqlens.copy_(lengths_now)
            decode_one_token(model, token, cache)

        with torch.no_grad():
            uncached_us = timer(lambda: model(tokens, last_only=True))
        out.append({"length": L, "cached_ms": measure.sig(timer(cached) / 1e3),
                    "uncached_ms": measure.sig(uncached_us / 1e3)})
        del cache
    return out


def transfer(nbytes: int, pinned: bool, *, smoke: bool = False) -> dict:
    """Host-to-device copy of ``nbytes`` from pageable or pinned host memory into a device buffer:
    ``{bytes, pinned, us, GBps}`` (GB/s counts the bytes moved once)."""
    n = nbytes // 4
    host = torch.randn(n)
    if pinned and device.HAS_GPU:
        host = host.pin_memory()
    dst = torch.empty(n, device=device.DEVICE)
    us = (measure.wall_us(lambda: dst.copy_(host), reps=1) if smoke
          else measure.bench_us(lambda: dst.copy_(host, non_blocking=pinned)))
    return {"bytes": n * 4, "pinned": pinned, "us": measure.sig(us), "GBps": measure.sig(n * 4 / us / 1e3)}


def run(preset: str = "llama-3.2-1b", *, lengths=LENGTHS, smoke: bool = False) -> dict:
    """The payload of ``kv_cache_<gpu>.json`` (GPU only, or ``smoke``: a tiny model, short
    sequences, small buffers, a wall clock)."""
    if not smoke:
        measure._require_gpu("kv_cache.run")
    sizes = TRANSFER_BYTES
    batch, context = OFFLOAD_BATCH, OFFLOAD_CONTEXT
    if smoke:
        preset, lengths, sizes, batch, context = "tiny", (4, 8), (2**12, 2**16), 2, 8
    config = ModelConfig.from_preset(preset)
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32
    model = random_model(config, "sdpa", dtype)
    per_token = per_token_times(model, lengths, smoke=smoke)
    del model
    transfers = [transfer(n, pinned, smoke=smoke) for pinned in (False, True) for n in sizes]
    device_copy = measure.copy_bandwidth(sizes[-1], smoke=smoke)["GBps"]
    best_pinned = max(t["GBps"] for t in transfers if t["pinned"])
    cache_bytes = config.kv_cache_bytes_per_token(dtype) * context * batch
    # The step reads its cache once: from HBM at the copy bandwidth (which counts every byte
    # read or written, so N bytes read take N / copy_GBps), or across PCIe at the best pinned
    # host-to-device bandwidth (bytes moved once)
    hbm_ms = cache_bytes / (device_copy * 1e9) * 1e3
    pcie_ms = cache_bytes / (best_pinned * 1e9) * 1e3
    return {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"preset": preset, "dtype": device.dtype_name(dtype), "batch_per_token": 1,
                       "weights": "random"},
            "per_token": per_token, "transfer": transfers, "device_copy_GBps": device_copy,
            "offload": {"batch": batch, "context": context, "cache_bytes": cache_bytes,
                        "hbm_ms": measure.sig(hbm_ms), "pcie_ms": measure.sig(pcie_ms),
                        "slowdown": measure.sig(pcie_ms / hbm_ms, 4)}}


def _report(doc: dict) -> None:
    for r in doc["per_token"]:
        print(f"L={r['length']:<6} cached {r['cached_ms']:8.3f} ms  uncached {r['uncached_ms']:8.3f} ms")
    for t in doc["transfer"]:
        kind = "pinned  " if t["pinned"] else "pageable"
        print(f"host->device {kind} {measure.format_bytes(t['bytes']):>8}: {t['GBps']:7.1f} GB/s")
    off = doc["offload"]
    print(f"device copy {doc['device_copy_GBps']:.0f} GB/s; a {measure.format_bytes(off['cache_bytes'])} "
          f"cache: {off['hbm_ms']:.3f} ms from HBM, {off['pcie_ms']:.2f} ms across PCIe "
          f"({off['slowdown']:.0f}x)")


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.kv_cache --out-dir DIR [--preset NAME]``."""
    model_cli(argv, topic="kv_cache", run=run, schema=SCHEMA, report=_report,
              description="Time one token with and without a KV cache against sequence length, and "
                          "host-to-device bandwidth (pageable, pinned) against HBM",
              why_gpu="CPU timings say nothing about a GPU's memory or PCIe link.")

if __name__ == "__main__":
    main()
