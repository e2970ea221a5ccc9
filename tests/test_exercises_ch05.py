"""Chapter 5's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would: from the spec table, the model presets
(parameter counts, cache per token) and the shipped decode file.
"""

import random
import re

import pytest
import torch

from conftest import assert_not_given as _assert_not_given, hint_of as _hint
from conftest import assert_not_attempted as _assert_not_attempted
from infer_lib import hardware, measure
from infer_lib.exercises import NOT_ATTEMPTED, ch05
from infer_lib.model import ModelConfig

H200 = hardware.SPECS["h200"]
LLAMA = ModelConfig.from_preset("llama-3.2-1b")
BW = H200.bandwidth_GBps * 1e9


def _kv_per_token(config, s=2, heads=None):
    return 2 * config.n_layers * (heads or config.n_kv_heads) * config.head_dim * s


# --- 5.1 -------------------------------------------------------------------------------

COPY = measure.load_reference("decode", ch05.GPU)["copy_GBps"] * 1e9   # measured, same file as 5.3


def _emb_ms(s=2):
    return LLAMA.vocab_size * LLAMA.dim * s / BW * 1e3


def _floor_ms(weights=True, kv_seqs=None, kv_heads=None, s=2, weight_copies=1):
    B, T = ch05.FLOOR_BATCH, ch05.FLOOR_CONTEXT
    kv_seqs = B if kv_seqs is None else kv_seqs
    nbytes = (weight_copies * LLAMA.num_params() * s * weights
              + kv_seqs * T * _kv_per_token(LLAMA, s, kv_heads))
    return nbytes / BW * 1e3       # memory-bound: the FLOPs take far less


def test_decode_floor(capsys):
    ms = _floor_ms()
    tokens = ch05.FLOOR_BATCH / (ms / 1e3)
    ch05.decode_floor(ms, tokens)
    out = capsys.readouterr().out
    assert "✅ Exercise 5.1 (ms per step): correct." in out and "✅ Exercise 5.1 (tokens/s)" in out
    assert "(tokens/s): correct. Of the" in out            # the explanation starts a sentence
    ch05.decode_floor(round(ms, 2), round(tokens, -2))            # rounded answers pass
    assert capsys.readouterr().out.count("✅") == 2
    ch05.decode_floor(..., ...)
    _assert_not_attempted(capsys)
    ch05.decode_floor(ms, ...)
    _assert_not_attempted(capsys, "tokens/s")
    slips = [((_floor_ms(kv_seqs=0), tokens), "weights only"),
             ((_floor_ms(kv_seqs=1), tokens), "cache of one sequence"),
             ((_floor_ms(weight_copies=ch05.FLOOR_BATCH), tokens), "once per sequence"),
             ((_floor_ms(kv_heads=LLAMA.n_heads), tokens), "every query head"),
             ((_floor_ms(s=1), tokens), "1 byte per bf16"),
             ((_floor_ms(s=4), tokens), "4 bytes per bf16"),
             ((ms * 2**30 / 1e9, tokens), "GB and GiB"),
             ((2 * LLAMA.num_params() * ch05.FLOOR_BATCH / (H200.bf16_TFLOPs * 1e12) * 1e3, tokens),
              "compute time"),
             ((ms, tokens / ch05.FLOOR_BATCH), "steps per second"),
             ((ms / 1e3, tokens), "in seconds; the answer is asked in milliseconds"),
             ((ms, tokens / 1e3), "time in milliseconds; tokens per second needs"),
             ((ms * BW / COPY, tokens), "copy bandwidth measured on an H200"),
             ((_floor_ms() + _emb_ms(), tokens), "tied embedding is counted twice"),
             ((ms * 8, tokens), "bits or bytes? A bf16 value takes 2 bytes")]
    for args, match in slips:
        hint = _hint(ch05.decode_floor, *args)
        assert match in hint, hint
        _assert_not_given(hint.split("is not right")[-1], ms, tokens)


# --- 5.2 -------------------------------------------------------------------------------

def _intensity(flops, nbytes):
    return flops / nbytes


def test_which_bound(capsys):
    balance = H200.bf16_TFLOPs / H200.bandwidth_GBps * 1e3
    n = LLAMA.num_params()
    # a learner's estimate: 2N FLOPs per token, the weights and the cache in bytes
    pre = _intensity(2 * n * ch05.PROMPT, 2 * n + ch05.PROMPT * _kv_per_token(LLAMA))
    decs = [_intensity(2 * n * B, 2 * n + B * T * _kv_per_token(LLAMA)) for B, T in ch05.DECODE_CASES]
    answers = ["compute" if i >= balance else "memory" for i in [pre] + decs]
    assert answers == ["compute", "memory", "compute"]
    ch05.which_bound(*answers)
    assert capsys.readouterr().out.count("✅") == 3
    ch05.which_bound(..., ..., ...)
    _assert_not_attempted(capsys, "prefill")
    ch05.which_bound("compute", ..., "compute")
    _assert_not_attempted(capsys, r"B = 64")
    for args, match in ((("memory", "memory", "compute"), r"prefill.*every weight read serves"),
                        (("compute", "compute", "compute"), r"B = 64.*whole cache"),
                        (("compute", "memory", "memory"), r"B = 512.*count both terms")):
        hint = _hint(ch05.which_bound, *args)
        assert re.search(match, hint), hint
        _assert_not_given(hint.split("is not right")[-1].replace("H200", ""), pre, *decs, balance)
    with pytest.raises(ValueError, match="not one of the options"):
        ch05.which_bound("memory-bound", "memory", "compute")


# --- 5.3 -------------------------------------------------------------------------------

def test_roofline_fraction(capsys):
    doc = measure.load_reference("decode", ch05.GPU)
    T, copy = doc["params"]["context"], doc["copy_GBps"] * 1e9
    rec = {(r["batch"], r["graph"]): r for r in doc["records"] if r["backend"] == ch05.GRAPH_BACKEND}
    B = ch05.GRAPH_BATCH
    nbytes = 2 * LLAMA.num_params() + B * T * _kv_per_token(LLAMA)
    right = nbytes / copy * 1e3 / rec[B, True]["ms"]
    ch05.roofline_fraction(right)
    assert "✅ Exercise 5.3: correct. The step" in capsys.readouterr().out
    ch05.roofline_fraction(round(right, 3))
    ch05.roofline_fraction(...)
    _assert_not_attempted(capsys)
    slips = [(nbytes / copy * 1e3 / rec[B, False]["ms"], "eager"),
             (1 / right, "inverted"),
             (nbytes / BW * 1e3 / rec[B, True]["ms"], "datasheet bandwidth"),
             (2 * LLAMA.num_params() / copy * 1e3 / rec[B, True]["ms"], "at most one sequence"),
             ((2 * LLAMA.num_params() + T * _kv_per_token(LLAMA)) / copy * 1e3 / rec[B, True]["ms"],
              "at most one sequence"),
             ((2 * LLAMA.num_params() + B * T * _kv_per_token(LLAMA, heads=LLAMA.n_heads))
              / copy * 1e3 / rec[B, True]["ms"], "every query head"),
             (100 * right, "a fraction, not a percent"),
             (nbytes / 2**30 / (copy / 1e9) * 1e3 / rec[B, True]["ms"], "GB and GiB"),
             (8 * right, "bits or bytes? A bf16 value takes 2 bytes")]
    for wrong, match in slips:
        hint = _hint(ch05.roofline_fraction, wrong)
        assert match in hint, hint
        _assert_not_given(hint.split("is not right")[-1], right)


# --- 5.4 (coding) ----------------------------------------------------------------------

def _bytes(config, batch, context, elem_bytes):
    """A learner's right answer: the weights the step multiplies by, and B caches of T tokens."""
    weights = config.num_params() if config.tie_embeddings else \
        config.num_params(include_embedding=False)
    return (weights + _kv_per_token(config, 1) * context * batch) * elem_bytes


def test_decode_step_bytes_right(capsys):
    assert ch05.decode_step_bytes(_bytes)
    assert "✅ Exercise 5.4: correct. The same count" in capsys.readouterr().out
    assert ch05.decode_step_bytes(lambda *a: float(_bytes(*a)))
    assert ch05.decode_step_bytes(lambda *a: torch.tensor(_bytes(*a), dtype=torch.float64))


def test_decode_step_bytes_reference_counts_a_size_in_bytes_as_its_dtype():
    from infer_lib.experiments import decode
    for cfg, B, T, s in ch05._step_cases(rng=random.Random(0)):
        dtype = {1: torch.float8_e4m3fn, 2: torch.bfloat16, 4: torch.float32}[s]
        assert ch05._step_bytes_ref(cfg, B, T, s) == decode.step_bytes(cfg, B, T, dtype)


def test_decode_step_bytes_not_attempted(capsys):
    def stub(config, batch, context, elem_bytes):
        raise NotImplementedError

    assert ch05.decode_step_bytes(stub) is False
    assert ch05.decode_step_bytes(...) is False
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 2 and "✅" not in out


def test_decode_step_bytes_cases_cover_tied_and_untied():
    for seed in range(5):
        cases = ch05._step_cases(rng=random.Random(seed))
        assert {c[0].tie_embeddings for c in cases} == {True, False}
        assert all(B > 1 and B % 2 and T % 2 for _, B, T, _ in cases)


_SLIPS = {
    "the KV cache is missing": lambda c, B, T, s: _bytes(c, 0, T, s),
    "cache of one sequence": lambda c, B, T, s: _bytes(c, 1, T, s),
    "once per sequence": lambda c, B, T, s: B * _bytes(c, 0, T, s) + _bytes(c, B, T, s)
    - _bytes(c, 0, T, s),
    "keys or values, not both": lambda c, B, T, s: _bytes(c, 0, T, s)
    + _kv_per_token(c, s) * T * B // 2,
    "every query head": lambda c, B, T, s: _bytes(c, 0, T, s)
    + _kv_per_token(c, s, c.n_heads) * T * B,
    "context + 1": lambda c, B, T, s: _bytes(c, B, T + 1, s),
    "counted once too often": lambda c, B, T, s: _bytes(c, B, T, s) + c.vocab_size * c.dim * s,
    "input embedding table is counted": lambda c, B, T, s: (c.num_params()
                                                            + _kv_per_token(c, 1) * T * B) * s,
    "tied output head is missing": lambda c, B, T, s: (c.num_params(include_embedding=False)
                                                       + _kv_per_token(c, 1) * T * B) * s,
    "counts values, not bytes": lambda c, B, T, s: _bytes(c, B, T, 1),
    "the cache is counted in values": lambda c, B, T, s: _bytes(c, 0, T, s)
    + _kv_per_token(c, 1) * T * B,
    "the weights are counted in values": lambda c, B, T, s: _bytes(c, 0, T, 1)
    + _kv_per_token(c, s) * T * B,
}


@pytest.mark.parametrize("slip", list(_SLIPS))
def test_decode_step_bytes_slips(slip):
    hint = _hint(ch05.decode_step_bytes, _SLIPS[slip])
    assert slip in hint, hint
    assert "return " not in hint and "ceil(" not in hint   # no code given away


def test_decode_step_bytes_other_mistakes():
    with pytest.raises(AssertionError, match="Count the weights"):
        ch05.decode_step_bytes(lambda *a: _bytes(*a) + 1)
    with pytest.raises(AssertionError, match="returned None"):
        ch05.decode_step_bytes(lambda *a: None)
    with pytest.raises(TypeError, match="expected a number"):
        ch05.decode_step_bytes(lambda *a: "many")


def test_checks_hide_their_frames():
    for check in (ch05.decode_floor, ch05.which_bound, ch05.roofline_fraction, ch05.decode_step_bytes):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
