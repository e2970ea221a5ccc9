"""Checks for chapter 5's exercises (prefill and decode).

Each check computes its expected answer from the spec table (``hardware.SPECS``), the model
presets (``infer_lib.model``), the FLOP and byte counts of ``infer_lib.experiments``
(``prefill_decode.prefill_flops``, ``prefill_decode.decode_flops``, ``decode.step_bytes``)
or the shipped measurement file ``decode_h200.json``, so the reader's cell does not give it
away. The only numbers typed here are the exercises' given inputs, named as in the exercise
text. A check prints ✅ when the answer is right, prints "not attempted yet" (and raises
nothing) while it is still ``...``, and raises ``AssertionError`` with a hint when it is wrong:
the hint names the kind of slip (the KV cache forgotten, bytes per element, the factor 2 of a
multiply-add, ...) and never the expected value. Numbers are accepted within ``REL`` (2%).
"""

from __future__ import annotations

import math
import random

import torch

from .. import hardware, measure, roofline
from ..experiments import decode, prefill_decode
from ..model import ModelConfig
from . import _not_attempted, check_choice, check_function, check_number, check_part, numbers_from

BF16 = torch.bfloat16
REL = 0.02                 # relative tolerance of every numeric answer

#: the model and the GPU of Exercises 5.1–5.3
PRESET = "llama-3.2-1b"
GPU = "h200"

# Exercise 5.1: the least time of one decode step, B sequences at a context of T tokens.
FLOOR_BATCH, FLOOR_CONTEXT = 64, 4096

# Exercise 5.2: compute- or memory-bound? A prefill of PROMPT tokens (batch 1), and two decode
# steps: (batch, context) each.
PROMPT = 2048
DECODE_CASES = ((64, 4096), (512, 128))

# Exercise 5.3: the graph-replayed decode step of the shipped file, backend and batch.
GRAPH_BACKEND, GRAPH_BATCH = "sdpa", 16


def _config() -> ModelConfig:
    return ModelConfig.from_preset(PRESET)


def _op(name: str, flops: float, nbytes: float) -> roofline.Op:
    return roofline.Op(name, flops, nbytes)


def _decode_op(config: ModelConfig, batch: int, context: int) -> roofline.Op:
    """One decode step: two FLOPs per weight per sequence plus attention over the cache; every
    weight and every sequence's cache read once."""
    return _op(f"decode B={batch} T={context}", prefill_decode.decode_flops(config, batch, context),
               decode.step_bytes(config, batch, context, BF16))


def _prefill_op(config: ModelConfig, length: int) -> roofline.Op:
    """A prefill of ``length`` tokens: the weights read once, the cache of ``length`` tokens
    written (the same bytes as ``decode.step_bytes`` at that context, batch 1)."""
    return _op(f"prefill S={length}", prefill_decode.prefill_flops(config, length),
               decode.step_bytes(config, 1, length, BF16))


# --- Exercise 5.1: the floor of a decode step ---------------------------------------------

def decode_floor(ms_per_step, tokens_per_s) -> None:
    """Exercise 5.1: the least time (ms) of one decode step of Llama-3.2-1B in bf16 on an H200
    (datasheet ceilings) for ``FLOOR_BATCH`` sequences at ``FLOOR_CONTEXT`` tokens of context,
    and the tokens per second that floor allows (all sequences together)."""
    __tracebackhide__ = True
    config, spec = _config(), hardware.SPECS[GPU]
    peak, bw = roofline.ceilings(spec, BF16)
    B, T = FLOOR_BATCH, FLOOR_CONTEXT
    op = _decode_op(config, B, T)
    want_s = roofline.roofline_time(op, peak, bw)
    weights = decode.step_bytes(config, 0, T, BF16)           # batch 0: the weights alone
    kv = config.kv_cache_bytes_per_token(BF16) * T * B
    kv_H = kv * config.n_heads // config.n_kv_heads
    emb = config.vocab_size * config.dim * 2                 # the tied embedding matrix, bf16
    copy = measure.load_reference("decode", GPU)["copy_GBps"] * 1e9   # the measured copy bandwidth
    check_number(
        ms_per_step, want_s * 1e3, name="Exercise 5.1 (ms per step)", unit="ms", rel=REL,
        mistakes=[(want_s, "that is in seconds; the answer is asked in milliseconds"),
                  (op.bytes / copy * 1e3, "that uses the copy bandwidth measured on an H200; the "
                                          "exercise asks for the datasheet's (hardware.SPECS)"),
                  ((op.bytes + emb) / bw * 1e3, "the tied embedding is counted twice: the output "
                                                "head is the embedding matrix, read once per step "
                                                "(num_params() counts it once)"),
                  (want_s * 1e3 * 8, "off by a factor of 8 — bits or bytes? A bf16 value takes "
                                     "2 bytes"),
                  (want_s * 1e3 / 8, "off by a factor of 8 — bits or bytes? A bf16 value takes "
                                     "2 bytes"),
                  (weights / bw * 1e3, "that reads the weights only: every step also reads each "
                                       "sequence's KV cache, T tokens of keys and values in every "
                                       "layer, for each of the B sequences"),
                  ((weights + kv / B) / bw * 1e3, "that reads the KV cache of one sequence; each of "
                                                 "the B sequences has its own"),
                  ((weights * B + kv) / bw * 1e3, "that reads the weights once per sequence; one "
                                                 "step reads them once for the whole batch"),
                  ((weights + kv_H) / bw * 1e3, "that caches keys and values for every query head; "
                                                "Llama-3.2-1B caches H_kv heads (grouped-query "
                                                "attention)"),
                  ((weights + kv / 2) / bw * 1e3, "that caches keys or values, not both"),
                  (want_s * 1e3 / 2, "off by a factor of 2 — that counts 1 byte per bf16 value; "
                                     "it takes 2"),
                  (want_s * 1e3 * 2, "off by a factor of 2 — that counts 4 bytes per bf16 value; "
                                     "it takes 2"),
                  (op.flops / peak * 1e3, "that is the compute time, FLOPs / peak; at this batch "
                                          "and context the bytes take longer"),
                  (2 * (weights // 2) * B / peak * 1e3, "that is the compute time, FLOPs / peak; "
                                                       "at this batch and context the bytes take "
                                                       "longer"),
                  (want_s * 1e3 * 1e9 / 2**30, "GB and GiB mixed up — bandwidth in the spec table "
                                               "is in GB/s (1e9 bytes)"),
                  (want_s * 1e3 * 2**30 / 1e9, "GB and GiB mixed up — bandwidth in the spec table "
                                               "is in GB/s (1e9 bytes)")])
    check_number(
        tokens_per_s, B / want_s, name="Exercise 5.1 (tokens/s)", unit="tokens/s", rel=REL,
        mistakes=[(1 / want_s, "that is steps per second; each step makes one token for each of "
                               "the B sequences"),
                  (B / (want_s * 1e3), "that divides by the time in milliseconds; tokens per "
                                       "second needs the time in seconds"),
                  (B / (weights / bw), "that is the throughput of the weights-only floor; use the "
                                       "whole step's bytes, cache included")],
        explain=f"Of the {op.bytes / 1e9:.1f} GB a step reads, {kv / 1e9:.1f} GB are the cache: at "
                "this batch and context the cache, not the weights, sets the time of a step.")


# --- Exercise 5.2: compute- or memory-bound? ------------------------------------------------

def which_bound(prefill_bound, decode_long_bound, decode_short_bound) -> None:
    """Exercise 5.2: on an H200 (datasheet machine balance, bf16), is each of three passes of
    Llama-3.2-1B memory- or compute-bound? A prefill of ``PROMPT`` tokens; a decode step at
    each (batch, context) of ``DECODE_CASES``."""
    __tracebackhide__ = True
    config, spec = _config(), hardware.SPECS[GPU]
    balance = roofline.machine_balance(spec, BF16)
    ops = [_prefill_op(config, PROMPT)] + [_decode_op(config, B, T) for B, T in DECODE_CASES]
    names = [f"Exercise 5.2 (prefill, S = {PROMPT})"] + [
        f"Exercise 5.2 (decode, B = {B}, T = {T})" for B, T in DECODE_CASES]
    how = ("Compare the pass's intensity, its FLOPs over the bytes it must move, with the H200's "
           "machine balance (bf16 peak ÷ bandwidth).")
    why = {"memory": {  # the answer was "memory" but it is compute-bound
               "prefill": "In a prefill every weight read serves every token of the prompt. " + how,
               "decode": "With many sequences and short contexts the weights serve the whole "
                         "batch, and the cache is small: count both terms. " + how},
           "compute": {  # the answer was "compute" but it is memory-bound
               "prefill": how,
               "decode": "Each sequence also reads its whole cache every step, and those bytes "
                         "grow with the batch as fast as the FLOPs do. " + how}}
    for op, name, answer in zip(ops, names, (prefill_bound, decode_long_bound, decode_short_bound)):
        expected = "memory" if op.intensity < balance else "compute"
        kind = "prefill" if "prefill" in name else "decode"
        check_part(check_choice, answer, expected, name=name, options=("memory", "compute"),
                   why={w: why[w][kind] for w in ("memory", "compute") if w != expected},
                   explain=f"{op.intensity:.0f} FLOP/byte against a balance of {balance:.0f}.")


# --- Exercise 5.3: how far from the bandwidth roofline is a graph-replayed step? -------------

def _decode_record(doc: dict, backend: str, batch: int, graph: bool) -> dict:
    return next(r for r in doc["records"]
                if r["backend"] == backend and r["batch"] == batch and r["graph"] == graph)


def roofline_fraction(fraction) -> None:
    """Exercise 5.3: the fraction of the bandwidth roofline (least time at the measured copy
    bandwidth ÷ measured time) that the CUDA-graph decode step of the shipped H200 file reaches,
    ``GRAPH_BACKEND`` backend at batch ``GRAPH_BATCH``."""
    __tracebackhide__ = True
    doc = measure.load_reference("decode", GPU)
    config = ModelConfig.from_preset(doc["params"]["preset"])
    dtype = getattr(torch, doc["params"]["dtype"])
    context, copy = doc["params"]["context"], doc["copy_GBps"] * 1e9
    graph = _decode_record(doc, GRAPH_BACKEND, GRAPH_BATCH, True)
    eager = _decode_record(doc, GRAPH_BACKEND, GRAPH_BATCH, False)
    nbytes = decode.step_bytes(config, GRAPH_BATCH, context, dtype)
    least_ms = nbytes / copy * 1e3
    want = least_ms / graph["ms"]
    weights = decode.step_bytes(config, 0, context, dtype)
    one_cache = decode.step_bytes(config, 1, context, dtype)                 # weights + one sequence
    all_heads = weights + (nbytes - weights) * config.n_heads // config.n_kv_heads
    datasheet = hardware.SPECS[GPU].bandwidth_GBps * 1e9
    check_number(
        fraction, want, name="Exercise 5.3", unit="", rel=REL,
        mistakes=[(want * 100, "that is a percent; give the answer as a fraction, not a percent "
                               "(a fraction of the roofline is at most 1)"),
                  (least_ms / eager["ms"], "that is the eager step's; take the record with "
                                           "graph = True"),
                  (graph["ms"] / least_ms, "inverted: divide the least time by the measured one "
                                           "(a fraction of the roofline is at most 1)"),
                  (nbytes / datasheet * 1e3 / graph["ms"], "that uses the datasheet bandwidth; the "
                                                           "exercise asks for the copy bandwidth "
                                                           "measured in the same run (copy_GBps)"),
                  # the weights alone, or with one sequence's cache: too close to tell apart here
                  (one_cache / copy * 1e3 / graph["ms"], "that counts the weights and at most one "
                                                         "sequence's KV cache; each of the batch's "
                                                         "sequences reads its own cache"),
                  (weights / copy * 1e3 / graph["ms"], "that counts the weights and at most one "
                                                       "sequence's KV cache; each of the batch's "
                                                       "sequences reads its own cache"),
                  (all_heads / copy * 1e3 / graph["ms"], "that caches keys and values for every "
                                                         "query head; Llama-3.2-1B caches H_kv "
                                                         "heads (grouped-query attention)"),
                  (want * 1e9 / 2**30, "GB and GiB mixed up — copy_GBps is in GB/s (1e9 bytes); "
                                       "count the bytes in bytes, or in GB"),
                  (want * 2**30 / 1e9, "GB and GiB mixed up — copy_GBps is in GB/s (1e9 bytes); "
                                       "count the bytes in bytes, or in GB"),
                  (want * 8, "off by a factor of 8 — bits or bytes? A bf16 value takes 2 bytes"),
                  (want / 8, "off by a factor of 8 — bits or bytes? A bf16 value takes 2 bytes"),
                  (least_ms / 2 / graph["ms"], "off by a factor of 2 — bf16 values take 2 bytes"),
                  (least_ms * 2 / graph["ms"], "off by a factor of 2 — bf16 values take 2 bytes")],
        explain=f"The step takes {graph['ms'] / least_ms:.1f}× its least time: the bytes are not "
                "what holds it back.")


# --- Exercise 5.4 (coding): the bytes a decode step reads -----------------------------------

def _step_bytes_ref(config: ModelConfig, batch: int, context: int, elem_bytes: int) -> int:
    """Bytes one decode step reads, ``elem_bytes`` per value: ``decode.step_bytes``."""
    return decode.step_bytes(config, batch, context, elem_bytes)


#: presets the cases are drawn from: tied and untied heads, MHA, GQA and MQA
_PRESETS = ("tiny", "tiny-mha", "tiny-mqa", "smollm2-135m", "llama-3.2-1b", "llama-2-7b", "llama-3-8b")


def _step_cases(n: int = 6, rng: random.Random | None = None) -> list[tuple]:
    """Fresh random cases: a preset, an odd batch > 1, an odd context and 1, 2 or 4 bytes per
    value; always one tied and one untied head, and one GQA model."""
    rng = rng or random.Random()
    names = ["llama-3.2-1b", "tiny-mha"] + [rng.choice(_PRESETS) for _ in range(n - 2)]
    cases = []
    for name in names:
        cases.append((ModelConfig.from_preset(name), rng.randrange(3, 130, 2),
                      rng.randrange(17, 9000, 2), rng.choice((1, 2, 4))))
    return cases


def _step_slips(config: ModelConfig, B: int, T: int, s: int) -> list[tuple[float, str]]:
    """(value, hint) of the usual wrong answers for one case."""
    w = _step_bytes_ref(config, 0, T, s) // s                       # weights read, a count
    kv = 2 * config.n_layers * config.n_kv_heads * config.head_dim   # values per token
    kv_H = 2 * config.n_layers * config.n_heads * config.head_dim
    emb = config.vocab_size * config.dim
    all_params = config.num_params()
    no_emb = config.num_params(include_embedding=False)
    return [
        (w * s, "the KV cache is missing: every step reads each sequence's keys and values of "
                "all `context` tokens, in every layer"),
        ((w + kv * T) * s, "that reads the cache of one sequence; each of the `batch` sequences "
                           "reads its own"),
        ((w * B + kv * T * B) * s, "that reads the weights once per sequence; a step reads them "
                                   "once for the whole batch"),
        ((w + kv * T * B // 2) * s, "that caches keys or values, not both"),
        ((w + kv_H * T * B) * s, "that caches every query head; the cache holds n_kv_heads "
                                 "key/value heads per layer"),
        ((w + kv * (T + 1) * B) * s, "that reads context + 1 tokens of cache; the step reads "
                                     "the `context` tokens already there"),
        ((w + emb + kv * T * B) * s,
         "the embedding table is counted once too often: a tied head reads it once (and it "
         "is in num_params() once), an untied model's input embedding is only looked up"),
        ((all_params + kv * T * B) * s, "the input embedding table is counted: a step only "
                                        "looks up `batch` rows of it (an untied head is a "
                                        "separate matrix, read in full)"),
        ((no_emb + kv * T * B) * s, "the tied output head is missing: with tie_embeddings the "
                                    "head multiplies by the whole embedding matrix, which "
                                    "num_params(include_embedding=False) leaves out"),
        (w + kv * T * B, "that counts values, not bytes (`elem_bytes` per value)"),
        (w * s + kv * T * B, "the cache is counted in values, not bytes (`elem_bytes` each)"),
        (w + kv * T * B * s, "the weights are counted in values, not bytes (`elem_bytes` each)"),
    ]


def decode_step_bytes(fn) -> bool:
    """Exercise 5.4: the reader's ``fn(config, batch, context, elem_bytes)`` against
    ``_step_bytes_ref`` (``decode.step_bytes``) on fresh random presets, batches and contexts
    (exact). A wrong function gets the kind of slip when it makes the same one on every case."""
    __tracebackhide__ = True
    name = "Exercise 5.4"
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    cases = _step_cases()
    got = numbers_from(fn, cases, name=name, what="a number of bytes")
    if got is None:
        return False
    close = [math.isclose(g, _step_bytes_ref(*a), rel_tol=1e-9) for g, a in zip(got, cases)]
    if not all(close):
        slips = [_step_slips(*a) for a in cases]
        for i, (_, hint) in enumerate(slips[0]):
            # the slip explains every case (some slips coincide with the answer on some presets)
            if all(math.isclose(g, sl[i][0], rel_tol=1e-9) for g, sl in zip(got, slips)):
                raise AssertionError(f"{name}: {hint}.")
        config, B, T, s = cases[close.index(False)]
        preset = next((k for k in _PRESETS if ModelConfig.from_preset(k) == config), "a preset")
        raise AssertionError(f"{name}: wrong for ({preset!r}, batch={B}, context={T}, "
                             f"elem_bytes={s}). Count the weights a step multiplies by (which "
                             "embedding matrices?), the cache per token (keys and values, per "
                             "layer, per key/value head) and the bytes per value.")
    return check_function(fn, _step_bytes_ref, cases, name=name, rtol=1e-9, atol=0.5,
                          explain="The same count as infer_lib.experiments.decode.step_bytes.")
