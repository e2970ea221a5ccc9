"""Chapter 6's exercise checks: right answers pass, `...` is "not done yet", typical slips get
their hint, and no hint gives the answer away.

The right answers are worked out here as a learner would, from the formula and the spec table.
"""

import math

import torch

from conftest import (assert_not_attempted as _assert_not_attempted, gives_away as _gives_away,
                      hint_matching as _hint)
from infer_lib import hardware, measure
from infer_lib.exercises import NOT_ATTEMPTED, ch06
from infer_lib.model import ModelConfig

BF16_BYTES = 2


# --- 6.1 -------------------------------------------------------------------------------

def _cache_GB(kv=2, layers=True, heads="kv", bits=False, batch=True):
    cfg = ModelConfig.from_preset(ch06.CACHE["preset"])
    h = cfg.n_kv_heads if heads == "kv" else cfg.n_heads
    n = kv * (cfg.n_layers if layers else 1) * h * cfg.head_dim * BF16_BYTES
    n *= ch06.CACHE["context"] * (ch06.CACHE["batch"] if batch else 1)
    return n * (8 if bits else 1) / 1e9


def test_cache_size(capsys):
    right = _cache_GB()
    assert ch06.cache_size(right) is True
    assert "✅ Exercise 6.1 (KV cache): correct." in capsys.readouterr().out
    assert ch06.cache_size(round(right, 1)) is True                     # rounded: right
    capsys.readouterr()
    assert ch06.cache_size(...) is False
    _assert_not_attempted(capsys, "Exercise 6.1")
    hints = [
        _hint(ch06.cache_size, _cache_GB(kv=1), match="key \\*and\\* a value"),
        _hint(ch06.cache_size, _cache_GB(layers=False), match="leaves out the layers"),
        _hint(ch06.cache_size, _cache_GB(heads="q"), match="query heads"),
        _hint(ch06.cache_size, _cache_GB(bits=True), match="bits"),
        _hint(ch06.cache_size, right * 1e9 / 2**30, match="GiB"),
        _hint(ch06.cache_size, _cache_GB(batch=False), match="one sequence"),
        _hint(ch06.cache_size, right * 1e3, match="MB"),
        _hint(ch06.cache_size, right * 2, match="factor of 2"),
        _hint(ch06.cache_size, right * 1.3, match="too large"),
    ]
    for hint in hints:
        assert not _gives_away(hint, right), hint


# --- 6.2 -------------------------------------------------------------------------------

def _fit(memory_unit=2**30, weights=True, kv=2, heads="kv", weight_bytes=BF16_BYTES,
         layers=True, per_token=False):
    """Sequences (or, per_token, tokens) of cache beside the weights; NVIDIA's memory GB are GiB."""
    cfg = ModelConfig.from_preset(ch06.FIT["preset"])
    mem = hardware.SPECS[ch06.FIT["gpu"]].memory_GB * memory_unit
    h = cfg.n_kv_heads if heads == "kv" else cfg.n_heads
    per_seq = kv * (cfg.n_layers if layers else 1) * h * cfg.head_dim * BF16_BYTES
    per_seq *= 1 if per_token else ch06.FIT["context"]
    w = cfg.num_params() * weight_bytes if weights else 0
    return (mem - w) / per_seq


def test_max_batch(capsys):
    right = math.floor(_fit())
    assert ch06.max_batch(right) is True
    assert "✅ Exercise 6.2 (largest batch): correct." in capsys.readouterr().out
    assert ch06.max_batch(float(right)) is True
    assert ch06.max_batch(torch.tensor(right)) is True
    capsys.readouterr()
    assert ch06.max_batch(...) is False
    _assert_not_attempted(capsys, "Exercise 6.2")
    hints = [
        _hint(ch06.max_batch, math.ceil(_fit()), match="rounds up"),
        _hint(ch06.max_batch, math.floor(_fit(memory_unit=1e9)), match="binary, GiB"),
        _hint(ch06.max_batch, math.floor(_fit(weights=False)), match="weights"),
        _hint(ch06.max_batch, math.floor(_fit(kv=1)), match="key \\*and\\* a value"),
        _hint(ch06.max_batch, math.floor(_fit(heads="q")), match="query heads"),
        _hint(ch06.max_batch, math.floor(_fit(weight_bytes=1)), match="2 bytes per parameter"),
        _hint(ch06.max_batch, math.floor(_fit(layers=False)), match="leaves out the layers"),
        _hint(ch06.max_batch, math.floor(_fit(per_token=True)), match="counts tokens"),
        _hint(ch06.max_batch, 3 * right, match="too large"),
    ]
    for hint in hints:
        assert f" {right} " not in hint and not _gives_away(hint, _fit()), hint
    _hint(ch06.max_batch, _fit(), match="whole number")              # echoes the reader's answer
    _hint(ch06.max_batch, "many", match="whole number", error=TypeError)


def test_max_batch_reads_memory_as_GiB():
    """The capacity is binary (hardware.py, chapter 1): 80 "GB" are 80 · 2**30 bytes."""
    cfg = ModelConfig.from_preset(ch06.FIT["preset"])
    spec = hardware.SPECS[ch06.FIT["gpu"]]
    free = spec.memory_GB * 2**30 - cfg.num_params() * BF16_BYTES
    assert ch06.max_batch(math.floor(free / (cfg.kv_cache_bytes_per_token(2) * ch06.FIT["context"])))
    assert math.floor(_fit()) != math.floor(_fit(memory_unit=1e9))   # the slip is distinguishable


# --- 6.3 -------------------------------------------------------------------------------

def _offload(pcie_both_ways=False, batch=True, layers=True, heads="kv", measured=False):
    cfg = ModelConfig.from_preset(ch06.OFFLOAD["preset"])
    spec = hardware.SPECS[ch06.OFFLOAD["gpu"]]
    h = cfg.n_kv_heads if heads == "kv" else cfg.n_heads
    nbytes = (2 * (cfg.n_layers if layers else 1) * h * cfg.head_dim * BF16_BYTES
              * ch06.OFFLOAD["context"] * (ch06.OFFLOAD["batch"] if batch else 1))
    pcie = spec.pcie_GBps * (1 if pcie_both_ways else 0.5) * 1e9
    if measured:    # the shipped pinned measurement instead of the datasheet
        doc = measure.load_reference(*ch06.OFFLOAD_MEASURED)
        pcie = max(t["GBps"] for t in doc["transfer"] if t["pinned"]) * 1e9
    hbm_ms = nbytes / (spec.bandwidth_GBps * 1e9) * 1e3
    pcie_ms = nbytes / pcie * 1e3
    return pcie_ms, pcie_ms / hbm_ms


def test_offload_times(capsys):
    ms, slow = _offload()
    ch06.offload_times(ms, slow)
    out = capsys.readouterr().out
    assert "✅ Exercise 6.3 (time across PCIe): correct." in out
    assert "✅ Exercise 6.3 (slowdown): correct." in out
    ch06.offload_times(..., ...)
    _assert_not_attempted(capsys, "6.3")
    ch06.offload_times(ms, ...)
    _assert_not_attempted(capsys, "slowdown")
    both_ms, both_slow = _offload(pcie_both_ways=True)
    # a unit slip echoes the reader's own number, in the unit they used: that is the point
    _hint(ch06.offload_times, ms / 1e3, ..., match="seconds")
    _hint(ch06.offload_times, ms * 1e3, ..., match="µs")
    hints = [
        _hint(ch06.offload_times, both_ms, ..., match="both directions"),
        _hint(ch06.offload_times, ms / slow, ..., match="read it from HBM"),
        _hint(ch06.offload_times, ms, both_slow, match="both directions"),
        _hint(ch06.offload_times, ms, 1 / slow, match="upside down"),
        _hint(ch06.offload_times, ms, 3 * slow, match="too large"),
        _hint(ch06.offload_times, _offload(batch=False)[0], ..., match="one sequence"),
        _hint(ch06.offload_times, _offload(layers=False)[0], ..., match="leaves out the layers"),
        _hint(ch06.offload_times, _offload(heads="q")[0], ..., match="query heads"),
        _hint(ch06.offload_times, _offload(measured=True)[0], ..., match="measured pinned"),
        _hint(ch06.offload_times, ms, _offload(measured=True)[1], match="measured pinned"),
        _hint(ch06.offload_times, ms, measure.load_reference(*ch06.OFFLOAD_MEASURED)["offload"]
              ["slowdown"], match="measured ratio"),
    ]
    for hint in hints:
        assert not _gives_away(hint, ms, slow), hint


# --- 6.4 (coding) ----------------------------------------------------------------------

def _right(m1, l1, o1, m2, l2, o2):
    """As the chapter teaches it: the common maximum, each partial rescaled to it."""
    m = torch.maximum(m1, m2)
    safe = torch.where(torch.isinf(m), 0.0, m).to(m.dtype)
    a1, a2 = torch.exp(m1 - safe), torch.exp(m2 - safe)
    return m, a1 * l1 + a2 * l2, a1[:, None] * o1 + a2[:, None] * o2


def _row_by_row(m1, l1, o1, m2, l2, o2):
    """Also right: one row at a time in Python floats."""
    ms, ls, os_ = [], [], []
    for i in range(len(m1)):
        m = max(m1[i].item(), m2[i].item())
        sh = 0.0 if m == -math.inf else m
        a1, a2 = math.exp(m1[i].item() - sh), math.exp(m2[i].item() - sh)
        ms.append(m)
        ls.append(a1 * l1[i].item() + a2 * l2[i].item())
        os_.append(a1 * o1[i] + a2 * o2[i])
    return torch.tensor(ms, dtype=m1.dtype), torch.tensor(ls, dtype=l1.dtype), torch.stack(os_)


def _no_rescale(m1, l1, o1, m2, l2, o2):
    return torch.maximum(m1, m2), l1 + l2, o1 + o2


def _o_not_rescaled(m1, l1, o1, m2, l2, o2):
    m, l, _ = _right(m1, l1, o1, m2, l2, o2)
    return m, l, o1 + o2


def _l_not_rescaled(m1, l1, o1, m2, l2, o2):
    m, _, o = _right(m1, l1, o1, m2, l2, o2)
    return m, l1 + l2, o


def _averaged(m1, l1, o1, m2, l2, o2):
    return torch.maximum(m1, m2), (l1 + l2) / 2, (o1 + o2) / 2


def _normalised(m1, l1, o1, m2, l2, o2):
    m, l, o = _right(m1, l1, o1, m2, l2, o2)
    return m, l, o / l[:, None]


def _no_guard(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, a1 * l1 + a2 * l2, a1[:, None] * o1 + a2[:, None] * o2


def _m_zero_for_empty(m1, l1, o1, m2, l2, o2):
    """Guards the exponentials, but returns the shifted maximum: 0, not −inf, for an empty row."""
    m = torch.maximum(m1, m2)
    shift = torch.where(torch.isinf(m), 0.0, m).to(m.dtype)
    a1, a2 = torch.exp(m1 - shift), torch.exp(m2 - shift)
    return shift, a1 * l1 + a2 * l2, a1[:, None] * o1 + a2[:, None] * o2


def _empty_split_weighted_one(m1, l1, o1, m2, l2, o2):
    """Right where both splits saw keys; an empty split gets weight 1, not 0 (so l is off)."""
    m, l, o = _right(m1, l1, o1, m2, l2, o2)
    return m, torch.where(torch.isinf(m2) & ~torch.isinf(m), l + 1, l), o


def _only_o_wrong(m1, l1, o1, m2, l2, o2):
    m, l, o = _right(m1, l1, o1, m2, l2, o2)
    return m, l, o * 1.5


def _in_place(m1, l1, o1, m2, l2, o2):
    out = _right(m1, l1, o1, m2, l2, o2)
    m1.copy_(out[0])
    return out


def test_combine_partials(capsys):
    for right in (ch06._combine_ref, _right, _row_by_row):
        assert ch06.combine_partials(right) is True
        assert "✅ Exercise 6.4 (combine): correct." in capsys.readouterr().out

    def stub(m1, l1, o1, m2, l2, o2):
        raise NotImplementedError

    for unattempted in (stub, ...):
        assert ch06.combine_partials(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out
    hints = [_hint(ch06.combine_partials, fn, match=match) for fn, match in (
        (_no_rescale, "rescale each to the common maximum"),
        (_o_not_rescaled, "outputs are not"),
        (_l_not_rescaled, "sums are not"),
        (_averaged, "averaging"),
        (_normalised, "normalised"),
        (_no_guard, "NaN for a row that saw no key"),
        (_m_zero_for_empty, "must come out with m = −inf"),
        (_empty_split_weighted_one, "l differs from the reference where a split saw no key"),
        (_only_o_wrong, "o differs from the reference"),
        (_in_place, "changed its inputs in place"),
        (lambda *a: None, "returned None"),
        (lambda *a: torch.stack(_right(*a)[:2]), "three tensors"),
        (lambda *a: (_right(*a)[0][:, None],) + _right(*a)[1:], "shape"),
    )]
    for hint in hints:   # a kind of slip, never the code of the answer
        assert not any(code in hint for code in ("torch.", "exp(m", "maximum(", "where(")), hint


def test_combine_ref_is_attention():
    """Two partials combined, then divided by l, give softmax attention over all the keys."""
    g = torch.Generator().manual_seed(0)
    s = 3 * torch.randn(6, 30, generator=g, dtype=torch.float64)
    v = torch.randn(30, 8, generator=g, dtype=torch.float64)
    m, l, o = ch06._combine_ref(*ch06._partial(s[:, :11], v[:11]), *ch06._partial(s[:, 11:], v[11:]))
    torch.testing.assert_close(o / l[:, None], torch.softmax(s, dim=1) @ v)


def test_checks_hide_their_frames():
    for check in (ch06.cache_size, ch06.max_batch, ch06.offload_times, ch06.combine_partials):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
