"""The two stages of inference, measured on the model (chapter 5).

* **Prefill** — the whole prompt through the model at once: ``2 · N`` FLOPs per
  token for ``N`` weights (the output head only for the last token: chapter 5
  counts it once), plus attention's ``roofline.attention_flops`` (causal), over
  the weights read once. Measured: time and throughput against prompt length,
  batch 1 — compute-bound once the prompt is a few hundred tokens long.
* **Decode** — one token per sequence per step: ``2 · N`` FLOPs per sequence
  against every weight and every cached byte (``decode.step_bytes``). Measured:
  the time of a step against batch size at a fixed context, replayed from a CUDA
  graph (chapter 2's launch overhead removed) — flat while the weights dominate,
  then rising: the linear layer's knee of chapter 3, for the whole model. Beside
  each point, the roofline prediction ``max(bytes / copy bandwidth, FLOPs / cuBLAS
  rate)`` with the two ceilings measured in the same run.

Time to first token is a prefill; time per output token a decode step: both
come out of the two sweeps. Random weights, bf16 where the GPU has it,
``"sdpa"`` attention (the cache's keys are read up to ``S_max``, which is the
context here, so it reads what the roofline counts).

    python -m infer_lib.experiments.prefill_decode --out-dir DIR [--preset llama-3.2-1b]

writes ``DIR/prefill_decode_<gpu>.json``. ``run(smoke=True)`` runs the plumbing
on any machine with a tiny model and a wall clock: never a measurement.
"""

from __future__ import annotations

import torch

from .. import device, measure, roofline
from ..model import KVCache, ModelConfig, prefill
from . import model_cli
from .decode import measure_step, random_model, step_bytes

TIMING = ("prefill: GPU time, median of CUDA-graph replays (measure.bench_us_hot) of one forward pass "
          "over the prompt into a fresh cache; decode: one step replayed from a CUDA graph "
          "(decode.measure_step)")
SMOKE_TIMING = "wall clock of one call (smoke run on the CPU): plumbing only, not a measurement"
PROMPT_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTEXT = 512

SCHEMA = measure.Schema(
    "prefill/decode file",
    keys=("timing", "params", "limits", "prefill", "decode"),
    numbers=("limits.copy_GBps", "limits.matmul_TFLOPs"),
    records=(measure.Records("prefill", numbers=("length", "ms", "tokens_per_s", "TFLOPs")),
             measure.Records("decode", numbers=("batch", "ms", "tokens_per_s", "bytes", "flops",
                                                "predicted_ms"))),
)


def prefill_flops(config: ModelConfig, length: int, batch: int = 1) -> int:
    """FLOPs of a prefill of ``length`` tokens: two per weight per token for every weight but
    the output head (applied to the last token only), plus causal attention in every layer."""
    body = config.num_params(include_embedding=False) - (0 if config.tie_embeddings
                                                         else config.vocab_size * config.dim)
    head = config.vocab_size * config.dim
    attn = config.n_layers * roofline.attention_flops(batch, config.n_heads, length, length,
                                                      config.head_dim, causal=True)
    return 2 * batch * (body * length + head) + attn


def decode_flops(config: ModelConfig, batch: int, context: int) -> int:
    """FLOPs of one decode step: two per weight per sequence (the head included) plus each
    sequence's one query against ``context`` keys in every layer."""
    body = config.num_params(include_embedding=False) - (0 if config.tie_embeddings
                                                         else config.vocab_size * config.dim)
    head = config.vocab_size * config.dim
    attn = config.n_layers * roofline.attention_flops(batch, config.n_heads, 1, context,
                                                      config.head_dim, causal=False)
    return 2 * batch * (body + head) + attn


def run(preset: str = "llama-3.2-1b", *, lengths=PROMPT_LENGTHS, batches=BATCHES, context: int = CONTEXT,
        smoke: bool = False) -> dict:
    """The payload of ``prefill_decode_<gpu>.json`` (GPU only, or ``smoke``)."""
    if not smoke:
        measure._require_gpu("prefill_decode.run")
    if smoke:
        preset, lengths, batches, context = "tiny", (4, 8), (1, 2), 8
    config = ModelConfig.from_preset(preset)
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32
    if smoke:
        copy_GBps, matmul_TFLOPs = 1.0, 1.0
    else:
        copy_GBps = measure.copy_bandwidth()["GBps"]
        matmul_TFLOPs = measure.matmul_flops(dtype=dtype)["TFLOPs"]
    # GPU time from CUDA-graph replays: eager prefills of short prompts are bound by the host's
    # launches (chapter 2), which would hide how the GPU work grows with the prompt.
    timer = measure.timer(smoke)
    model = random_model(config, "sdpa", dtype)

    prefills = []
    for L in lengths:
        tokens = torch.randint(0, config.vocab_size, (1, L), device=device.DEVICE)
        cache = KVCache(config, 1, L, dtype=dtype, device=device.DEVICE)

        def step():
            cache.reset()
            prefill(model, tokens, cache)

        us = timer(step)
        flops = prefill_flops(config, L)
        prefills.append({"length": L, "ms": measure.sig(us / 1e3), "tokens_per_s": measure.sig(L / (us * 1e-6)),
                         "TFLOPs": measure.sig(flops / us / 1e6)})
        del cache

    decodes = []
    for B in batches:
        r = measure_step(config, "sdpa", B, context, graph=device.HAS_GPU, dtype=dtype, copy_GBps=copy_GBps,
                         smoke=smoke, model=model)
        flops = decode_flops(config, B, context)
        nbytes = step_bytes(config, B, context, dtype)
        predicted_s = max(nbytes / (copy_GBps * 1e9), flops / (matmul_TFLOPs * 1e12))
        decodes.append({"batch": B, "ms": r["ms"], "tokens_per_s": r["tokens_per_s"], "bytes": nbytes,
                        "flops": flops, "predicted_ms": measure.sig(predicted_s * 1e3)})
    return {"provenance": {**measure.provenance(), "smoke": smoke},
            "timing": SMOKE_TIMING if smoke else TIMING,
            "params": {"preset": preset, "dtype": device.dtype_name(dtype), "context": context,
                       "backend": "sdpa", "weights": "random"},
            "limits": {"copy_GBps": copy_GBps, "matmul_TFLOPs": matmul_TFLOPs},
            "prefill": prefills, "decode": decodes}


def _report(doc: dict) -> None:
    for r in doc["prefill"]:
        print(f"prefill L={r['length']:<6} {r['ms']:9.3f} ms {r['tokens_per_s']:10.0f} tok/s "
              f"{r['TFLOPs']:7.1f} TFLOP/s")
    for r in doc["decode"]:
        print(f"decode  B={r['batch']:<6} {r['ms']:9.3f} ms (roofline {r['predicted_ms']:.3f}) "
              f"{r['tokens_per_s']:10.0f} tok/s")


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.prefill_decode --out-dir DIR [--preset NAME]``."""
    model_cli(argv, topic="prefill_decode", run=run, schema=SCHEMA, report=_report,
              description="Time prefill against prompt length and a decode step against batch size, "
                          "with the roofline prediction",
              why_gpu="CPU timings say nothing about a GPU's prefill or decode speed.")

if __name__ == "__main__":
    main()
