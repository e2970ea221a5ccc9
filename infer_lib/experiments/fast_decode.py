"""A fast decoder end to end (chapter 9): the ladder from plain PyTorch to the bandwidth roofline.

Every measurement here is one decode step of the model (Llama-3.2-1B shapes by default,
random bf16 weights, each sequence ``context`` tokens into its cache), timed on the GPU,
against its *bandwidth roofline*: the bytes the step must read (every weight once, the
cache up to its length: ``decode.step_bytes``, or ``fast.weight_bytes`` for int8) at the
copy bandwidth measured in the same run. Parts of the file:

* ``ladder``: the same step, one change at a time, at batch 1 and 16 —
  ``no_cache`` (the whole context recomputed for every token), ``static_cache`` (a
  ``KVCache`` allocated once, eager steps), ``cuda_graph`` (the step captured once and
  replayed), ``decode_attention`` (our split-KV kernel for attention), ``fused`` (rung 1 of
  ``infer_lib.model.fast``: fused norms, adds, SwiGLU, RoPE and cache writes, merged
  projections), ``our_matmul`` (rung 2: every projection and the head on
  ``kernels.matmul``), and the peer ``torch_compile`` (``torch.compile`` of the plain model,
  default mode, replayed from the same kind of CUDA graph; its compile time apart).
* ``int8``: the fused model with int8 weights (rung 3, the head quantised too), same batches.
* ``batch_sweep`` and ``context_sweep``: the ``fused`` rung against batch (context fixed) and
  against context (batch 1 and 16).
* ``profile``: ``torch.profiler`` of one step — GPU time per category of kernel (matmul,
  attention, norm, elementwise, other) and the time between kernels — for the
  ``static_cache`` rung (launched from Python) and the faster of ``fused`` and ``our_matmul``
  (from a CUDA graph). The profiler adds time to every launch: the eager rung's gaps in a
  profile are longer than in its timed step; use the profile for kernel sums and counts.
* ``latency``: time to first token (prefill of one prompt) and time per output token, batch 1.
* ``peers``: Hugging Face ``transformers``' ``generate`` on a model of the same shapes and
  weights' dtype (random weights), a 128-token prompt and 128 new tokens, greedy: tokens/s
  from its wall clock (its prefill included), beside ours the same way. Where the package is
  missing, or its compiled path fails, the record says so.

    python -m infer_lib.experiments.fast_decode --out-dir DIR [--preset llama-3.2-1b]

writes ``DIR/fast_decode_<gpu>.json``. ``run(smoke=True)`` runs the same plumbing on the CPU
with the tiny model, eager steps and a wall clock: a test of the code, never a measurement.
"""

from __future__ import annotations

import time

import torch

from .. import device, measure
from ..model import KVCache, ModelConfig, decode_one_token, fast, prefill
from ..model.graphs import GraphedDecoder
from .decode import random_model, step_bytes

TIMING = ("ms per decode step: triton.testing.do_bench median (L2 flushed) of one eager call, or "
          "of one replay of the step captured in a CUDA graph; each timed step first resets the "
          "cache lengths (one small copy); peers: wall clock of generate()")
SMOKE_TIMING = "wall clock of one step (smoke run on the CPU): plumbing only, not a measurement"
CONTEXT = 1024
BATCHES = (1, 16)
RUNGS = ("no_cache", "static_cache", "cuda_graph", "decode_attention", "fused", "our_matmul",
         "torch_compile")
SWEEP_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SWEEP_CONTEXTS = (128, 512, 2048, 8192, 32768)
SWEEP_CONTEXT_BATCHES = (1, 16)
PROMPTS = (128, 512, 2048)
PEER_PROMPT, PEER_NEW_TOKENS = 128, 128
CATEGORIES = ("matmul", "attention", "norm", "elementwise", "other")

_STEP = ("ms", "tokens_per_s", "bytes", "roofline_ms", "fraction_of_roofline")
SCHEMA = measure.Schema(
    "fast_decode file",
    keys=("timing", "params", "copy_GBps", "ladder", "int8", "batch_sweep", "context_sweep", "profile",
          "latency", "peers"),
    numbers=("copy_GBps",),
    records=(measure.Records("ladder", keys=("rung", "batch"), numbers=_STEP),
             measure.Records("int8", keys=("batch", "head_int8"), numbers=_STEP),
             measure.Records("batch_sweep", keys=("batch", "context"), numbers=_STEP),
             measure.Records("context_sweep", keys=("batch", "context"), numbers=_STEP),
             measure.Records("profile", keys=("rung", "categories_us", "kernels_per_step"),
                             numbers=("step_us", "busy_us")),
             measure.Records("latency", keys=("prompt",), numbers=("ttft_ms", "tpot_ms")),
             measure.Records("peers", keys=("name", "batch", "ok"))),
)


# -- one step ---------------------------------------------------------------------------------


def _record(us: float, batch: int, nbytes: int, copy_GBps: float, **keys) -> dict:
    roofline_us = nbytes / (copy_GBps * 1e3)
    return {**keys, "batch": batch, "ms": measure.sig(us / 1e3),
            "tokens_per_s": measure.sig(batch / (us * 1e-6)), "bytes": nbytes,
            "roofline_ms": measure.sig(roofline_us / 1e3), "fraction_of_roofline": measure.sig(roofline_us / us, 4)}


def _filled_cache(config: ModelConfig, batch: int, context: int, dtype) -> tuple[KVCache, torch.Tensor]:
    """A cache of ``context + 1`` positions holding ``context`` random keys and values per
    sequence (a step's time does not depend on what the cache holds), and a token per sequence."""
    cache = KVCache(config, batch, context + 1, dtype=dtype, device=device.DEVICE)
    cache.k_cache.normal_()
    cache.v_cache.normal_()
    cache.seqlens.fill_(context)
    token = torch.randint(0, config.vocab_size, (batch,), device=device.DEVICE)
    return cache, token


def time_step(model, batch: int, context: int, dtype, *, graph: bool, smoke: bool = False) -> float:
    """µs of one decode step of ``model`` (batch ``batch``, ``context`` tokens cached), eager or
    replayed from a ``GraphedDecoder``; each timed step first resets the lengths."""
    cache, token = _filled_cache(model.config, batch, context, dtype)
    lengths = cache.seqlens.clone()
    if graph:
        decoder = GraphedDecoder(model, cache)

        def step():
            cache.seqlens.copy_(lengths)
            decoder.graph.replay()
    else:
        decode_one_token(model, token, cache)                   # warm-up: tuning, compiles

        def step():
            cache.seqlens.copy_(lengths)
            decode_one_token(model, token, cache)
    us = measure.timer(smoke, hot=False)(step)
    del cache
    return us


def time_no_cache(model, batch: int, context: int, *, smoke: bool = False) -> float:
    """µs of one token without a cache: the whole ``context + 1`` tokens through the model
    (the logits of the last only)."""
    tokens = torch.randint(0, model.config.vocab_size, (batch, context + 1), device=device.DEVICE)
    model(tokens, last_only=True)
    return measure.timer(smoke, hot=False)(lambda: model(tokens, last_only=True))


# -- profile ----------------------------------------------------------------------------------


def category(name: str) -> str:
    """The category of a GPU kernel (or, on the CPU, an operator) by its name."""
    n = name.lower()
    if any(s in n for s in ("matmul", "gemm", "nvjet", "cublas", "splitk", "gemv", "aten::mm", "aten::addmm",
                            "aten::linear", "cutlass", "sm90_xmma")):
        return "matmul"
    if any(s in n for s in ("attention", "flash", "decode_combine", "fmha", "sdpa", "softmax")):
        return "attention"
    if "norm" in n or "rsqrt" in n or ("reduce_kernel" in n and "meanops" in n):   # RMSNorm's mean
        return "norm"
    if any(s in n for s in ("elementwise", "swiglu", "rope", "silu", "cat", "scatter", "copy", "add", "mul",
                            "index", "triton_")):
        return "elementwise"
    return "other"


def profile_step(model, batch: int, context: int, dtype, *, graph: bool, smoke: bool = False) -> dict:
    """GPU time per kernel category of one step (mean of 10 profiled steps), the step's span
    from its first kernel's start to its last kernel's end, and kernels per step. On the CPU
    (smoke): the CPU operators instead, a test of the plumbing."""
    from torch.profiler import ProfilerActivity, profile

    cache, token = _filled_cache(model.config, batch, context, dtype)
    lengths = cache.seqlens.clone()
    if graph:
        decoder = GraphedDecoder(model, cache)
        run = decoder.graph.replay
    else:
        def run():
            decode_one_token(model, token, cache)
    steps = 2 if smoke else 10
    for _ in range(3):
        cache.seqlens.copy_(lengths)
        run()
    if device.HAS_GPU:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] if device.HAS_GPU else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            cache.seqlens.copy_(lengths)
            run()
    kind = torch.autograd.DeviceType.CUDA if device.HAS_GPU else torch.autograd.DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind]
    if not device.HAS_GPU:   # top-level operators only (children are counted in their parents)
        events = [e for e in events if e.cpu_parent is None and e.name.startswith("aten::")]
    events = [e for e in events if "Memcpy" not in e.name and "Memset" not in e.name]
    per_cat = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        per_cat[category(e.name)] += e.time_range.elapsed_us() / steps
    starts = sorted(e.time_range.start for e in events)
    ends = sorted(e.time_range.end for e in events)
    spans = (ends[-1] - starts[0]) / steps if events else 0.0
    busy = sum(per_cat.values())
    del cache
    return {"categories_us": {k: measure.sig(v) for k, v in per_cat.items()},
            "kernels_per_step": round(len(events) / steps, 1),
            "busy_us": measure.sig(max(busy, 1e-3)), "step_us": measure.sig(max(spans, busy, 1e-3))}


# -- peers ------------------------------------------------------------------------------------


def transformers_generate(config: ModelConfig, batch: int, dtype, *, compiled: bool = False,
                          smoke: bool = False) -> dict:
    """Hugging Face ``transformers``' ``LlamaForCausalLM`` of ``config``'s shapes (random
    weights), ``generate`` of ``PEER_NEW_TOKENS`` after a ``PEER_PROMPT``-token prompt, greedy;
    with ``compiled`` its static cache and ``torch.compile(mode="reduce-overhead")``. Returns a
    record with ``ok`` and, when it ran, tokens/s; never raises."""
    name = "transformers.generate" + (" (static cache, torch.compile)" if compiled else "")
    record = {"name": name, "batch": batch, "ok": False}
    try:
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM

        from ..model.checkpoint import config_to_hf

        record["version"] = transformers.__version__
        hf_config = LlamaConfig(**config_to_hf(config))
        torch.manual_seed(0)
        with torch.device(device.DEVICE):
            model = LlamaForCausalLM(hf_config).to(dtype).eval()
        prompt_len, new = (8, 4) if smoke else (PEER_PROMPT, PEER_NEW_TOKENS)
        ids = torch.randint(0, config.vocab_size, (batch, prompt_len), device=device.DEVICE)
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if compiled:
            kwargs["cache_implementation"] = "static"
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        with torch.no_grad():
            model.generate(ids, **kwargs)                       # warm-up (and compile)
            if device.HAS_GPU:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(ids, **kwargs)
            if device.HAS_GPU:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        generated = out.shape[1] - prompt_len
        record.update(ok=True, new_tokens=generated, seconds=measure.sig(seconds),
                      tokens_per_s=measure.sig(batch * generated / seconds))
        del model
    except Exception as exc:   # a peer that fails is a result to report, not a crash
        record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if device.HAS_GPU:
        torch.cuda.empty_cache()
    return record


def ours_generate(model, batch: int, dtype, *, smoke: bool = False, rung: str = "fused") -> dict:
    """Our decoder the way ``transformers_generate`` times its peer: prefill of the prompt, then
    ``PEER_NEW_TOKENS`` greedy steps (from a CUDA graph on a GPU), wall clock. ``rung`` names
    what ``model`` runs, for the record."""
    prompt_len, new = (8, 4) if smoke else (PEER_PROMPT, PEER_NEW_TOKENS)
    config = model.config
    ids = torch.randint(0, config.vocab_size, (batch, prompt_len), device=device.DEVICE)
    cache = KVCache(config, batch, prompt_len + new + 1, dtype=dtype, device=device.DEVICE)

    def generate_once():
        cache.reset()
        token = prefill(model, ids, cache).argmax(-1)
        if decoder is not None:
            decoder.resync()
        for _ in range(new - 1):
            logits = decoder.step(token) if decoder is not None else decode_one_token(model, token, cache)
            token = logits.argmax(-1)
        return token

    decoder = None
    if device.HAS_GPU:
        cache.seqlens.fill_(prompt_len)
        decoder = GraphedDecoder(model, cache)
    with torch.no_grad():
        generate_once()
        if device.HAS_GPU:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate_once()
        if device.HAS_GPU:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    del cache
    return {"name": f"ours ({rung} rung)", "batch": batch, "ok": True, "new_tokens": new,
            "seconds": measure.sig(seconds), "tokens_per_s": measure.sig(batch * new / seconds)}


# -- the run ----------------------------------------------------------------------------------


def run(preset: str = "llama-3.2-1b", *, context: int = CONTEXT, batches=BATCHES, smoke: bool = False,
        sweeps: bool = True, peers: bool = True, peer_compile: bool = True, progress: bool = True,
        on_stage=None) -> dict:
    """The payload of ``fast_decode_<gpu>.json`` (GPU only, or ``smoke`` on any machine: the tiny
    model, a few tokens of context, eager steps and a wall clock). ``on_stage(payload)`` is called
    after each stage with what is measured so far (a long run can save as it goes)."""
    if not smoke:
        measure._require_gpu("fast_decode.run")
    sweep_batches, sweep_contexts, prompts = SWEEP_BATCHES, SWEEP_CONTEXTS, PROMPTS
    if smoke:
        preset, context, batches = "tiny", 8, (1,)
        sweep_batches, sweep_contexts, prompts = (1, 2), (4,), (4,)
    config = ModelConfig.from_preset(preset)
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32
    copy_GBps = 1.0 if smoke else measure.copy_bandwidth()["GBps"]
    graph = device.HAS_GPU and not smoke
    t_start = time.perf_counter()

    def say(what):
        if progress:
            print(f"[fast_decode {time.perf_counter() - t_start:6.0f} s] {what}", flush=True)

    def rec(us, batch, ctx=context, nbytes=None, **keys):
        return _record(us, batch, step_bytes(config, batch, ctx, dtype) if nbytes is None else nbytes,
                       copy_GBps, context=ctx, **keys)

    ladder, profiles, int8, batch_sweep, context_sweep, latency, peer_records = [], [], [], [], [], [], []
    state = {"fastest": None, "compile_s": None}

    def payload() -> dict:
        compile_s = state["compile_s"]
        return {"provenance": {**measure.provenance(), "smoke": smoke},
                "timing": SMOKE_TIMING if smoke else TIMING,
                "params": {"preset": preset, "dtype": device.dtype_name(dtype), "context": context,
                           "weights": "random", "fastest_rung": state["fastest"], "sweep_rung": "fused",
                           "compile_s": None if compile_s is None else measure.sig(compile_s, 3),
                           "peer_prompt": PEER_PROMPT, "peer_new_tokens": PEER_NEW_TOKENS},
                "copy_GBps": copy_GBps, "ladder": ladder, "int8": int8, "batch_sweep": batch_sweep,
                "context_sweep": context_sweep, "profile": profiles, "latency": latency,
                "peers": peer_records}

    def done(stage: str) -> None:
        say(stage)
        if on_stage is not None:
            on_stage(payload())

    def free(model) -> None:
        del model
        if device.HAS_GPU:
            torch.cuda.empty_cache()

    with torch.no_grad():
        # the ladder, rung by rung on one model (each switch keeps the ones before)
        model = random_model(config, "sdpa", dtype)
        for b in batches:
            ladder.append(rec(time_no_cache(model, b, context, smoke=smoke), b, rung="no_cache"))
            ladder.append(rec(time_step(model, b, context, dtype, graph=False, smoke=smoke), b,
                              rung="static_cache"))
        profiles.append({"rung": "static_cache", "batch": 1,
                         **profile_step(model, 1, context, dtype, graph=False, smoke=smoke)})
        done("no_cache, static_cache")
        steps = (("cuda_graph", lambda m: m), ("decode_attention", lambda m: setattr(m, "backend", "triton")),
                 ("fused", fast.fuse), ("our_matmul", lambda m: fast.use_matmul(m, head=True)))
        for rung, switch in steps:
            switch(model)
            for b in batches:
                ladder.append(rec(time_step(model, b, context, dtype, graph=graph, smoke=smoke), b, rung=rung))
            done(rung)
        state["fastest"] = min((r for r in ladder if r["batch"] == batches[0]), key=lambda r: r["ms"])["rung"]
        # profile, and time end to end, the faster of our two last rungs (back to it if it was fused)
        ours_ms = {r["rung"]: r["ms"] for r in ladder if r["batch"] == batches[0]}
        best = min(("fused", "our_matmul"), key=ours_ms.__getitem__)
        if best == "fused":
            fast.reset(model)
            fast.fuse(model)
        profiles.append({"rung": best, "batch": 1,
                         **profile_step(model, 1, context, dtype, graph=graph, smoke=smoke)})
        if peers:
            peer_records.extend(ours_generate(model, b, dtype, smoke=smoke, rung=best) for b in batches)
        done("profile, ours end to end")
        free(model)

        # int8 weights, on a model of its own (quantize is one-way)
        model = random_model(config, "triton", dtype)
        fast.fuse(model)
        fast.quantize(model, head=True)
        wb = fast.weight_bytes(model)
        int8_weights = wb["projections"] + wb["head"] + wb["norms"]
        for b in batches:
            nbytes = int8_weights + config.kv_cache_bytes_per_token(dtype) * context * b
            int8.append(rec(time_step(model, b, context, dtype, graph=graph, smoke=smoke), b, nbytes=nbytes,
                            head_int8=True, weight_bytes=int8_weights))
        done("int8")
        free(model)

        # torch.compile of the plain model (GPU only: on a CPU Inductor compiles C++ for minutes)
        if device.HAS_GPU and not smoke:
            model = random_model(config, "sdpa", dtype)
            model.forward = torch.compile(model.forward, dynamic=False)
            cache, token = _filled_cache(config, batches[0], context, dtype)
            t0 = time.perf_counter()
            decode_one_token(model, token, cache)                # compiles for these shapes
            torch.cuda.synchronize()
            state["compile_s"] = time.perf_counter() - t0
            del cache
            for b in batches:
                ladder.append(rec(time_step(model, b, context, dtype, graph=True), b, rung="torch_compile"))
            done(f"torch_compile (compiled in {state['compile_s']:.0f} s)")
            free(model)

        if peers:
            for b in batches:
                peer_records.append(transformers_generate(config, b, dtype, smoke=smoke))
            if peer_compile and device.HAS_GPU and not smoke:
                peer_records.append(transformers_generate(config, batches[0], dtype, compiled=True))
            done("peers")

        # the fused rung for the sweeps and the latencies (cuBLAS projections: no tuning per shape)
        model = fast.fuse(random_model(config, "triton", dtype))
        tpot_us = time_step(model, 1, context, dtype, graph=graph, smoke=smoke)
        for p in prompts:
            ids = torch.randint(0, config.vocab_size, (1, p), device=device.DEVICE)
            cache = KVCache(config, 1, p + 1, dtype=dtype, device=device.DEVICE)

            def first_token():
                cache.reset()
                return prefill(model, ids, cache).argmax(-1)
            latency.append({"prompt": p, "ttft_ms": measure.sig(measure.timer(smoke, hot=False)(first_token) / 1e3),
                            "tpot_ms": measure.sig(tpot_us / 1e3), "tpot_context": context})
            del cache
        done("latency")
        if sweeps:
            for b in sweep_batches:
                batch_sweep.append(rec(time_step(model, b, context, dtype, graph=graph, smoke=smoke), b))
            done("batch sweep")
            for b in SWEEP_CONTEXT_BATCHES if not smoke else (1,):
                for ctx in sweep_contexts:
                    if ctx + 1 <= config.max_seq_len:
                        context_sweep.append(rec(time_step(model, b, ctx, dtype, graph=graph, smoke=smoke),
                                                 b, ctx))
            done("context sweep")
        free(model)
    return payload()


def _report(doc: dict) -> None:
    for r in doc["ladder"]:
        print(f"{r['rung']:<17} B={r['batch']:<3} {r['ms']:8.3f} ms/step {r['tokens_per_s']:9.0f} tok/s "
              f"{r['fraction_of_roofline']:6.1%} of the bandwidth roofline")
    for r in doc["int8"]:
        print(f"{'int8':<17} B={r['batch']:<3} {r['ms']:8.3f} ms/step {r['tokens_per_s']:9.0f} tok/s "
              f"{r['fraction_of_roofline']:6.1%} of its roofline")
    for r in doc["peers"]:
        print(f"{r['name']:<45} B={r['batch']:<3} " +
              (f"{r['tokens_per_s']:9.1f} tok/s" if r["ok"] else f"failed: {r.get('error', '')[:80]}"))


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.fast_decode --out-dir DIR [--preset NAME] [--context N]``."""
    from . import model_cli

    model_cli(argv, topic="fast_decode", run=run, schema=SCHEMA, report=_report, context=CONTEXT,
              description="Time a decode step rung by rung (plain PyTorch to fused kernels, CUDA graphs "
                          "and our matmul; int8; batch and context sweeps; profile; latency; peers)",
              why_gpu="CPU timings say nothing about decoding speed on a GPU.")


if __name__ == "__main__":
    main()
