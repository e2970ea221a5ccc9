"""Chapter 10's exercise checks: right answers pass, `...` is "not done yet", typical slips get
their hint, answers of the wrong kind are refused, and no hint gives the answer away.

The right answers are worked out here as a learner would: from the formulas, the spec table,
the head and vocabulary counts of the preset, and a weight split by hand.
"""

import math

import pytest
import torch

from conftest import (assert_not_attempted as _assert_not_attempted, assert_not_given,
                      gives_away as _gives_away, hint_matching as _hint)
from infer_lib import hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch10
from infer_lib.model import ModelConfig
from infer_lib.parallel import cost

BF16_BYTES = 2
KiB = 2**10


# --- 10.1 --------------------------------------------------------------------------------

def _fit(memory_unit=None, cache_factor=1.0, weight_bytes=BF16_BYTES, cache=True):
    """GPUs' worth of weights and cache for exercise 10.1, unrounded."""
    cfg = ModelConfig.from_preset(ch10.FIT["preset"])
    spec = hardware.SPECS[ch10.FIT["gpu"]]
    memory = spec.memory_GB * (memory_unit or 2**30)
    tokens = ch10.FIT["batch"] * ch10.FIT["context"]
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * BF16_BYTES * tokens * cache_factor
    return (cfg.num_params() * weight_bytes + (kv if cache else 0)) / memory


def _divides(cfg, n):
    H, H_kv = cfg.n_heads, cfg.n_kv_heads
    return (H % n == 0 and cfg.ffn_dim % n == 0 and cfg.vocab_size % n == 0
            and (H_kv % n == 0 or n % H_kv == 0))


def _tp_answer():
    cfg = ModelConfig.from_preset(ch10.FIT["preset"])
    n = math.ceil(_fit())
    while not _divides(cfg, n):                 # whole heads per rank; shares shrink with n
        n += 1
    return n


def test_min_gpus_right(capsys):
    by_memory, for_tp = math.ceil(_fit()), _tp_answer()
    assert for_tp > by_memory                   # the exercise's point: memory alone is not enough
    ch10.min_gpus(by_memory, for_tp)
    out = capsys.readouterr().out
    assert out.count("✅") == 2 and "(by memory): correct" in out and "parallelism): correct" in out
    ch10.min_gpus(float(by_memory), torch.tensor(for_tp))
    assert capsys.readouterr().out.count("✅") == 2


def test_min_gpus_not_attempted(capsys):
    ch10.min_gpus(..., ...)
    _assert_not_attempted(capsys, r"10\.1 \(for tensor parallelism\)")
    ch10.min_gpus(math.ceil(_fit()), ...)
    out = capsys.readouterr().out
    assert "✅" in out and NOT_ATTEMPTED in out
    ch10.min_gpus(..., _tp_answer())
    out = capsys.readouterr().out
    assert "✅" in out and NOT_ATTEMPTED in out


def test_min_gpus_slips():
    right = math.ceil(_fit())
    no_cache = math.ceil(_fit(cache=False))
    assert no_cache < right and math.floor(_fit()) < right
    _hint(ch10.min_gpus, no_cache, ..., match="leaves out the KV cache")
    _hint(ch10.min_gpus, math.floor(_fit()), ..., match="rounds down")
    _hint(ch10.min_gpus, math.ceil(_fit(weight_bytes=4)), ..., match="fp32")
    _hint(ch10.min_gpus, math.ceil(_fit(cache_factor=8)), ..., match="bits or bytes")
    _hint(ch10.min_gpus, right + 5, ..., match="too large")
    _hint(ch10.min_gpus, 2.5, ..., match="whole number")
    _hint(ch10.min_gpus, "three", ..., match="expected a number", error=TypeError)
    cfg = ModelConfig.from_preset(ch10.FIT["preset"])
    tp = _tp_answer()
    not_dividing = next(n for n in range(right, tp) if not _divides(cfg, n))
    _hint(ch10.min_gpus, ..., not_dividing, match="cannot split")
    hint = _hint(ch10.min_gpus, ..., 1, match="one GPU's memory does not hold")
    assert "1 GPUs" not in hint
    too_few = max(n for n in range(2, tp) if _divides(cfg, n))       # splits, but does not fit
    _hint(ch10.min_gpus, ..., too_few, match="more than one GPU's memory")
    _hint(ch10.min_gpus, ..., 2 * tp, match="fewer would do")
    _hint(ch10.min_gpus, ..., 3.5, match="whole number of GPUs")
    _hint(ch10.min_gpus, ..., [tp], match="whole number of GPUs", error=TypeError)


def test_min_gpus_hints_do_not_give_the_answer():
    right, tp = math.ceil(_fit()), _tp_answer()
    hints = [_hint(ch10.min_gpus, math.ceil(_fit(cache=False)), ..., match="KV cache"),
             _hint(ch10.min_gpus, right + 5, ..., match="too large"),
             _hint(ch10.min_gpus, ..., 1, match="memory"),
             _hint(ch10.min_gpus, ..., 2 * tp, match="fewer")]
    for hint in hints:
        after = hint.split("—", 1)[-1] if "—" in hint else hint.split(":", 2)[-1]
        assert not _gives_away(after, right, tp), hint


# --- 10.2 --------------------------------------------------------------------------------

def _payload(width=None, batch=None, itemsize=BF16_BYTES):
    cfg = ModelConfig.from_preset(ch10.ALLREDUCE["preset"])
    return (batch or ch10.ALLREDUCE["batch"]) * (width or cfg.dim) * itemsize


def test_allreduce_bytes_right(capsys):
    cfg = ModelConfig.from_preset(ch10.ALLREDUCE["preset"])
    N = ch10.ALLREDUCE["world_size"]
    count = 2 * cfg.n_layers + 1                # after o_proj and down_proj, and the embedding
    payload = _payload() / KiB
    sent = 2 * (N - 1) / N * payload
    ch10.allreduce_bytes(count, payload, sent)
    assert capsys.readouterr().out.count("✅") == 3
    ch10.allreduce_bytes(count, round(payload), round(sent))
    assert capsys.readouterr().out.count("✅") == 3
    # the same count and payload as the cost model uses
    step = cost.predict_decode_step(cfg, ch10.ALLREDUCE["batch"], 1, N, hbm_bandwidth=1.0,
                                    link_bandwidth=1.0)
    assert step["allreduces"] == count and step["allreduce_payload_bytes"] == payload * KiB


def test_allreduce_bytes_not_attempted(capsys):
    ch10.allreduce_bytes(..., ..., ...)
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 3 and "✅" not in out
    cfg = ModelConfig.from_preset(ch10.ALLREDUCE["preset"])
    ch10.allreduce_bytes(2 * cfg.n_layers + 1, ..., ...)
    out = capsys.readouterr().out
    assert out.count("✅") == 1 and out.count(NOT_ATTEMPTED) == 2


def test_allreduce_bytes_slips():
    cfg = ModelConfig.from_preset(ch10.ALLREDUCE["preset"])
    L, N = cfg.n_layers, ch10.ALLREDUCE["world_size"]
    payload = _payload()
    _hint(ch10.allreduce_bytes, 2 * L, ..., ..., match="embedding all-reduces too")
    _hint(ch10.allreduce_bytes, L, ..., ..., match="two per layer")
    _hint(ch10.allreduce_bytes, 2 * L + 2, ..., ..., match="all-gather")
    _hint(ch10.allreduce_bytes, 4 * L + 1, ..., ..., match="column-parallel layers")
    _hint(ch10.allreduce_bytes, ..., _payload(width=cfg.ffn_dim) / KiB, ..., match="hidden units F")
    _hint(ch10.allreduce_bytes, ..., payload / N / KiB, ..., match="full width d")
    _hint(ch10.allreduce_bytes, ..., _payload(batch=1) / KiB, ..., match="one sequence")
    _hint(ch10.allreduce_bytes, ..., _payload(itemsize=4) / KiB, ..., match="fp32")
    _hint(ch10.allreduce_bytes, ..., payload * 8 / KiB, ..., match="bits")
    _hint(ch10.allreduce_bytes, ..., payload / 1e3, ..., match="KB")
    _hint(ch10.allreduce_bytes, ..., payload, ..., match="that is bytes")
    _hint(ch10.allreduce_bytes, ..., ..., payload / KiB, match="payload itself")
    _hint(ch10.allreduce_bytes, ..., ..., (N - 1) / N * payload / KiB, match="two phases")
    _hint(ch10.allreduce_bytes, ..., ..., 2 * payload / KiB, match="one chunk")
    _hint(ch10.allreduce_bytes, ..., ..., N * payload / KiB, match="not a copy")
    _hint(ch10.allreduce_bytes, ..., ..., (N - 1) * payload / KiB, match="not the whole payload")
    sent = 2 * (N - 1) / N * payload
    _hint(ch10.allreduce_bytes, ..., ..., 2 * sent / KiB, match="receives as well as what it sends")
    _hint(ch10.allreduce_bytes, ..., ..., (2 * N - 1) / N * payload / KiB, match="not 2N − 1")
    _hint(ch10.allreduce_bytes, ..., ..., (2 * L + 1) * sent / KiB,
          match="every all-reduce of the step together")
    # 7% off in a KiB answer is not GB vs GiB: the generic hint would say it is
    for answers in ((..., ..., sent * 1.024**3 / KiB), (..., payload / 1.024**3 / KiB, ...)):
        hint = _hint(ch10.allreduce_bytes, *answers, match="not a unit slip")
        assert "GiB (2**30" not in hint
    hint = _hint(ch10.allreduce_bytes, ..., ..., 2 * payload / KiB, match="one chunk")
    assert "a little" not in hint                 # 2(N − 1)/N is well under 2 at few ranks
    _hint(ch10.allreduce_bytes, ..., ..., 5 * payload / KiB, match="too large")
    _hint(ch10.allreduce_bytes, "161", ..., ..., match="expected a number", error=TypeError)


def test_allreduce_bytes_hints_do_not_give_the_answer():
    cfg = ModelConfig.from_preset(ch10.ALLREDUCE["preset"])
    N = ch10.ALLREDUCE["world_size"]
    payload = _payload() / KiB
    sent = 2 * (N - 1) / N * payload
    hints = [_hint(ch10.allreduce_bytes, 2 * cfg.n_layers, ..., ..., match="embedding"),
             _hint(ch10.allreduce_bytes, ..., payload / N, ..., match="full width"),
             _hint(ch10.allreduce_bytes, ..., ..., payload, match="payload itself"),
             _hint(ch10.allreduce_bytes, ..., ..., 2 * sent, match="receives"),
             _hint(ch10.allreduce_bytes, ..., ..., (2 * cfg.n_layers + 1) * sent, match="every"),
             _hint(ch10.allreduce_bytes, ..., ..., 5 * payload, match="too large")]
    for hint in hints:
        assert_not_given(hint.split(" is ", 1)[1], payload, sent, 2 * cfg.n_layers + 1)


# --- 10.3 (coding) -------------------------------------------------------------------------

def _right(weight, split, rank, world_size):
    dim = 0 if split == "column" else 1          # nn.Linear's weight is (out, in)
    size = weight.shape[dim] // world_size
    return weight.narrow(dim, rank * size, size)


def _chunked(weight, split, rank, world_size):
    return weight.chunk(world_size, dim=0 if split == "column" else 1)[rank].clone()


def _slip(kind):
    def fn(weight, split, rank, world_size):
        dim = 0 if split == "column" else 1
        if kind == "swapped":
            dim = 1 - dim
        if kind == "interleaved":
            return weight.index_select(dim, torch.arange(rank, weight.shape[dim], world_size))
        if kind == "split":
            return weight.split(world_size, dim=dim)[rank]
        if kind == "whole":
            return weight
        size = weight.shape[dim] // world_size
        k = {"from one": rank - 1, "next": rank + 1}.get(kind, rank)
        piece = weight.narrow(dim, k * size, size)
        return piece.T if kind == "transposed" else piece
    return fn


def test_split_weight_right(capsys):
    for fn in (_right, _chunked):
        assert ch10.split_weight(fn) is True
        assert "✅ Exercise 10.3 (split a weight): correct." in capsys.readouterr().out


@pytest.mark.parametrize("kind, match", [
    ("swapped", "row-parallel split"),
    ("interleaved", "interleaved"),
    ("from one", "numbered from 0"),
    ("next", "numbered from 0"),
    ("split", "torch.split takes the size"),
    ("whole", "whole matrix"),
    ("transposed", "keep nn.Linear's layout"),
])
def test_split_weight_slips(kind, match):
    _hint(ch10.split_weight, _slip(kind), match=match)


@pytest.mark.parametrize("cast", ["float", "bfloat16", "half"])
def test_split_weight_other_dtype_is_named(cast):
    # right blocks in another dtype would pass the comparisons, then fail where the pieces
    # are multiplied with the input: the check names the slip before
    _hint(ch10.split_weight, lambda w, s, r, n: getattr(_right(w, s, r, n), cast)(),
          match=r"no \.float\(\), \.bfloat16\(\) or \.to\(\)")


def test_split_weight_other_wrong_functions():
    def in_place(weight, split, rank, world_size):
        weight.zero_()
        return _right(weight, split, rank, world_size)

    _hint(ch10.split_weight, in_place, match="changed the weight")
    _hint(ch10.split_weight, lambda w, s, r, n: None, match="returned None")
    _hint(ch10.split_weight, lambda w, s, r, n: _right(w, s, r, n).tolist(), match="return a tensor")
    _hint(ch10.split_weight, lambda w, s, r, n: _right(w, s, r, n) + 1, match="not rank 1's block")
    _hint(ch10.split_weight, lambda w, s, r, n: w[:1], match="shape")

    def only_the_labelled_case(weight, split, rank, world_size):     # right for rank 1 of 4 only
        return _right(weight, split, 1, 4)

    with pytest.raises(AssertionError, match="shape .* expected"):    # then the random cases
        ch10.split_weight(only_the_labelled_case)


def test_split_weight_not_attempted(capsys):
    def stub(weight, split, rank, world_size):
        raise NotImplementedError

    def half_written(weight, split, rank, world_size):
        if split == "row":
            raise NotImplementedError
        return _right(weight, split, rank, world_size)

    for unattempted in (stub, half_written, ...):
        assert ch10.split_weight(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out


# --- 10.4 --------------------------------------------------------------------------------

def _ring_steps(n, per_allreduce=lambda n: 2 * (n - 1), allgather=lambda n: n - 1,
                allreduces=None):
    cfg = ModelConfig.from_preset(ch10.BREAK_EVEN["preset"])
    count = 2 * cfg.n_layers + 1 if allreduces is None else allreduces
    return count * per_allreduce(n) + allgather(n)


def _zero_latency(n, link_factor=1.0, allgather=True):
    """(HBM s, link s) of one decode step on n ranks at zero latency, by hand: each rank's bytes
    at HBM bandwidth, ring collectives over one direction of the link."""
    b = ch10.BREAK_EVEN
    cfg = ModelConfig.from_preset(b["preset"])
    spec = hardware.SPECS[b["gpu"]]
    hbm = spec.bandwidth_GBps * 1e9
    link = spec.nvlink_GBps * 1e9 / 2 * link_factor           # one direction of the link
    L, B, d, V = cfg.n_layers, b["batch"], cfg.dim, cfg.vocab_size
    memory = (cost.rank_weight_bytes(cfg, n) + cost.rank_kv_bytes(cfg, B, b["context"], n)) / hbm
    if n == 1:
        return memory, 0.0
    allreduce = (2 * L + 1) * 2 * (n - 1) * B * d * BF16_BYTES / (n * link)
    gather = (n - 1) * B * V * BF16_BYTES / (n * link) if allgather else 0.0
    return memory, allreduce + gather


def _link_us(n=None, **kw):
    return _zero_latency(ch10.BREAK_EVEN["fewer"] if n is None else n, **kw)[1] * 1e6


def _break_even(per_allreduce=lambda n: 2 * (n - 1), fewer=None):
    """The latency per ring step (µs) at which the exercise's two rank counts tie, by hand."""
    b = ch10.BREAK_EVEN
    few = b["fewer"] if fewer is None else fewer
    many = b["more"]
    step = {n: sum(_zero_latency(n)) for n in (few, many)}
    steps = {n: _ring_steps(n, per_allreduce) if n > 1 else 0 for n in (few, many)}
    return (step[few] - step[many]) / (steps[many] - steps[few]) * 1e6


def _answers():
    return _ring_steps(ch10.BREAK_EVEN["more"]), _link_us(), _break_even()


def test_break_even_right(capsys):
    ch10.break_even(*_answers())
    out = capsys.readouterr().out
    for part in ("ring steps", "link time", "break-even latency"):
        assert f"✅ Exercise 10.4 ({part}): correct." in out
    steps, link, latency = _answers()
    ch10.break_even(float(steps), torch.tensor(link * 1.01), torch.tensor(latency * 1.01))
    assert capsys.readouterr().out.count("✅") == 3


def test_break_even_is_the_cost_model():
    b = ch10.BREAK_EVEN
    cfg = ModelConfig.from_preset(b["preset"])
    spec = hardware.SPECS[b["gpu"]]

    def step(n, latency):
        return cost.predict_decode_step(cfg, b["batch"], b["context"], n,
                                        hbm_bandwidth=spec.bandwidth_GBps * 1e9,
                                        link_bandwidth=cost.link_bandwidth(spec, b["link"]),
                                        latency=latency)

    steps, link, latency = _answers()
    assert math.isclose(step(b["more"], 1.0)["step_s"] - step(b["more"], 0.0)["step_s"], steps)
    p = step(b["fewer"], 0.0)
    assert math.isclose((p["allreduce_s"] + p["allgather_s"]) * 1e6, link, rel_tol=1e-9)
    assert math.isclose(step(b["fewer"], latency * 1e-6)["step_s"],
                        step(b["more"], latency * 1e-6)["step_s"], rel_tol=1e-9)


def test_break_even_not_attempted(capsys):
    ch10.break_even(..., ..., ...)
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 3 and "✅" not in out
    ch10.break_even(_ring_steps(ch10.BREAK_EVEN["more"]), ..., ...)
    out = capsys.readouterr().out
    assert out.count("✅") == 1 and out.count(NOT_ATTEMPTED) == 2


def test_break_even_ring_step_slips():
    n = ch10.BREAK_EVEN["more"]
    cfg = ModelConfig.from_preset(ch10.BREAK_EVEN["preset"])
    _hint(ch10.break_even, _ring_steps(n, lambda n: 2 * n, lambda n: n), ..., ...,
          match="N − 1 steps per phase")
    _hint(ch10.break_even, _ring_steps(n, lambda n: n - 1), ..., ..., match="two phases")
    _hint(ch10.break_even, _ring_steps(n, allreduces=2 * cfg.n_layers), ..., ...,
          match="embedding all-reduces too")
    _hint(ch10.break_even, _ring_steps(n, allgather=lambda n: 0), ..., ...,
          match="all-gather is a ring too")
    _hint(ch10.break_even, _ring_steps(n, allgather=lambda n: 2 * (n - 1)), ..., ...,
          match="one phase of a ring")
    _hint(ch10.break_even, 2 * cfg.n_layers + 2, ..., ..., match="counts the collectives")
    _hint(ch10.break_even, _ring_steps(ch10.BREAK_EVEN["fewer"]), ..., ..., match="is for 4 ranks")
    _hint(ch10.break_even, 2.5, ..., ..., match="whole number")


def test_break_even_link_slips():
    # the spec table's NVLink figure counts both directions: a ring runs at one
    _hint(ch10.break_even, ..., _link_us(link_factor=2), ..., match="both directions")
    _hint(ch10.break_even, ..., _link_us(allgather=False), ..., match="all-gather crosses the link")
    _hint(ch10.break_even, ..., _link_us(n=ch10.BREAK_EVEN["more"]), ..., match="is for 8 ranks")
    memory, link = _zero_latency(ch10.BREAK_EVEN["fewer"])
    _hint(ch10.break_even, ..., memory * 1e6, ..., match="HBM reads")
    _hint(ch10.break_even, ..., (memory + link) * 1e6, ..., match="whole step")
    _hint(ch10.break_even, ..., 0, ..., match="bytes still take their time")
    _hint(ch10.break_even, ..., link * 1e3, ..., match="factor of 1000")


def test_break_even_latency_slips():
    want = _break_even()
    _hint(ch10.break_even, ..., ..., _break_even(per_allreduce=lambda n: n - 1), match="two phases")
    _hint(ch10.break_even, ..., ..., _break_even(fewer=1), match="with one GPU")
    _hint(ch10.break_even, ..., ..., want * 1e-3, match="factor of 1000")
    hint = _hint(ch10.break_even, ..., ..., want * 3, match="too large")
    assert_not_given(hint.split(" is ", 1)[1], want)
    _hint(ch10.break_even, ..., ..., "1 µs", match="expected a number", error=TypeError)


def test_break_even_per_call_budget_is_named():
    b = ch10.BREAK_EVEN
    cfg = ModelConfig.from_preset(b["preset"])
    step = {n: sum(_zero_latency(n)) for n in (b["fewer"], b["more"])}
    per_call = (step[b["fewer"]] - step[b["more"]]) / (2 * cfg.n_layers + 2) * 1e6
    _hint(ch10.break_even, ..., ..., per_call, match="one latency per call")


def test_break_even_hints_do_not_give_the_answer():
    steps, link, latency = _answers()
    n = ch10.BREAK_EVEN["more"]
    hints = [_hint(ch10.break_even, _ring_steps(n, lambda n: n - 1), ..., ..., match="phases"),
             _hint(ch10.break_even, ..., _link_us(link_factor=2), ..., match="directions"),
             _hint(ch10.break_even, ..., link * 3, ..., match="too large"),
             _hint(ch10.break_even, ..., ..., latency * 3, match="too large")]
    for hint in hints:
        assert_not_given(hint.split(" is ", 1)[1], steps, link, latency)


def test_checks_hide_their_frames():
    for check in (ch10.min_gpus, ch10.allreduce_bytes, ch10.split_weight, ch10.break_even):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
