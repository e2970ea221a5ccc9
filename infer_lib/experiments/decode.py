"""End-to-end decoding speed of the model against its bandwidth roofline (chapters 5, 6 and 9).

One decode step of a batch of ``B`` sequences, each ``context`` tokens into its
cache, reads every weight once (``ModelConfig.num_params``; the output head's
``V × d`` matrix included, the embedding table only ``B`` rows of it) and every
sequence's cache up to its length (``kv_cache_bytes_per_token · context · B``),
and does about two FLOPs per weight per sequence: far below any GPU's balance, so
the least time a step can take is those bytes at the copy bandwidth — the
*bandwidth roofline*. ``fraction_of_roofline`` is that least time over the
measured one.

Measured for each attention backend of ``infer_lib.model`` (``"sdpa"``;
``"triton"``: ``decode_attention``), each batch, and two ways of running the step:

* eagerly, one Python call per step, every kernel launched from Python — the
  launch overhead of chapter 2, per layer;
* replayed from a CUDA graph captured once (the cache has static shapes and its
  lengths live on the GPU, so one capture serves every step).

Each timed step first resets the cache lengths to ``context`` (one small copy),
so that every repetition does the same work. Random weights (a timing does not
care what they say), in bf16 where the GPU has it.

    python -m infer_lib.experiments.decode --out-dir DIR [--preset llama-3.2-1b]

writes ``DIR/decode_<gpu>.json``. ``run(smoke=True)`` runs the same plumbing on
the CPU with a tiny model and a wall clock: a test of the code, never a measurement.
"""

from __future__ import annotations

import torch

from .. import device, measure
from ..model import KVCache, ModelConfig, Transformer, decode_one_token, prefill
from . import model_cli

TIMING = ("ms per decode step: triton.testing.do_bench median (L2 flushed) of one eager call, "
          "or of one replay of a CUDA graph captured once; each step first resets the cache "
          "lengths (one small copy)")
SMOKE_TIMING = "wall clock of one step (smoke run on the CPU): plumbing only, not a measurement"
BACKENDS = ("sdpa", "triton")
BATCHES = (1, 16)
CONTEXT = 1024

SCHEMA = measure.Schema(
    "decode file",
    keys=("timing", "params", "copy_GBps", "records"),
    numbers=("copy_GBps",),
    records=(measure.Records("records", keys=("backend", "batch", "graph"),
                             numbers=("ms", "tokens_per_s", "bytes", "roofline_ms", "fraction_of_roofline")),),
)


def step_bytes(config: ModelConfig, batch: int, context: int, dtype: torch.dtype | int) -> int:
    """Bytes one decode step must read: every weight once (the output head included; of the
    input embedding only the ``batch`` rows it looks up, left out) and each sequence's cache
    up to ``context`` tokens. ``dtype``: of weights and cache, or its size in bytes."""
    esize = dtype if isinstance(dtype, int) else dtype.itemsize
    weights = config.num_params(include_embedding=False)
    if config.tie_embeddings:                    # the head reads the embedding matrix
        weights += config.vocab_size * config.dim
    return weights * esize + config.kv_cache_bytes_per_token(dtype) * context * batch


def random_model(config: ModelConfig, backend: str, dtype: torch.dtype) -> Transformer:
    """A model of ``config``'s shapes with random weights (seed 0), built on this machine's device
    in ``dtype``, for inference: what every timing on the model runs."""
    with torch.device(device.DEVICE):
        torch.manual_seed(0)
        model = Transformer(config, backend=backend)
    return model.to(dtype).eval().requires_grad_(False)


def _graphed_step(model: Transformer, token: torch.Tensor, cache: KVCache, lengths: torch.Tensor):
    """One decode step captured in a CUDA graph (warmed up on a side stream, as CUDA graphs
    want); returns the function that resets the lengths and replays it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_one_token(model, token, cache)
    torch.cuda.current_stream().wait_stream(side)
    cache.seqlens.copy_(lengths)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_one_token(model, token, cache)
    cache.seqlens.copy_(lengths)

    def step():
        cache.seqlens.copy_(lengths)
        graph.replay()
    return step


def measure_step(config: ModelConfig, backend: str, batch: int, context: int, graph: bool,
                 dtype: torch.dtype, copy_GBps: float, *, smoke: bool = False,
                 model: Transformer | None = None, random_cache: bool = False) -> dict:
    """One record: the time of a decode step of ``batch`` sequences ``context`` tokens long.

    The cache is filled by a prefill of random prompts, or with ``random_cache`` by random
    keys and values (a step's time does not depend on what the cache holds, and a prefill of
    many long prompts would only cost time)."""
    model = model or random_model(config, backend, dtype)
    model.backend = backend
    cache = KVCache(config, batch, context + 1, dtype=dtype, device=device.DEVICE)
    if random_cache:
        cache.k_cache.normal_()
        cache.v_cache.normal_()
        cache.seqlens.fill_(context)
        token = torch.randint(0, config.vocab_size, (batch,), device=device.DEVICE)
    else:
        prompt = torch.randint(0, config.vocab_size, (batch, context), device=device.DEVICE)
        token = prefill(model, prompt, cache).argmax(-1)
    lengths = cache.seqlens.clone()

    def eager_step():
        cache.seqlens.copy_(lengths)
        decode_one_token(model, token, cache)

    step = _graphed_step(model, token, cache, lengths) if graph else eager_step
    us = measure.timer(smoke, hot=False)(step)
    nbytes = step_bytes(config, batch, context, dtype)
    roofline_us = nbytes / (copy_GBps * 1e3)
    del cache
    return {"backend": backend, "batch": batch, "context": context, "graph": graph,
            "ms": measure.sig(us / 1e3), "tokens_per_s": measure.sig(batch / (us * 1e-6)),
            "bytes": nbytes, "roofline_ms": measure.sig(roofline_us / 1e3),
            "fraction_of_roofline": measure.sig(roofline_us / us, 4)}


def run(preset: str = "llama-3.2-1b", *, batches=BATCHES, context: int = CONTEXT,
        backends=BACKENDS, smoke: bool = False) -> dict:
    """The payload of ``decode_<gpu>.json`` (GPU only, or ``smoke`` on any machine: a tiny
    model, two steps of context, a wall clock, no CUDA graphs)."""
    if not smoke:
        measure._require_gpu("decode.run")
    if smoke:
        preset, batches, context = "tiny", (1, 2), 8
    config = ModelConfig.from_preset(preset)
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32
    copy_GBps = 1.0 if smoke else measure.copy_bandwidth()["GBps"]
    graphs = (False,) if smoke or not device.HAS_GPU else (False, True)
    records = []
    for backend in backends:
        model = random_model(config, backend, dtype)
        for batch in batches:
            for graph in graphs:
                records.append(measure_step(config, backend, batch, context, graph, dtype, copy_GBps,
                                            smoke=smoke, model=model))
        del model
        if device.HAS_GPU:
            torch.cuda.empty_cache()
    return {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"preset": preset, "dtype": device.dtype_name(dtype), "context": context,
                       "weights": "random"},
            "copy_GBps": copy_GBps, "records": records}


def _report(doc: dict) -> None:
    for r in doc["records"]:
        mode = "graph" if r["graph"] else "eager"
        print(f"{r['backend']:<7} B={r['batch']:<3} {mode:<5} {r['ms']:8.3f} ms/step "
              f"{r['tokens_per_s']:9.0f} tok/s  {r['fraction_of_roofline']:6.1%} of the bandwidth roofline")


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.decode --out-dir DIR [--preset NAME] [--context N]``."""
    model_cli(argv, topic="decode", run=run, schema=SCHEMA, report=_report, context=CONTEXT,
              description="Time one decode step of the model (each attention backend, batch 1 and 16, "
                          "eager and from a CUDA graph) against its bandwidth roofline",
              why_gpu="CPU timings say nothing about decoding speed on a GPU.")

if __name__ == "__main__":
    main()
