"""Chapter 7's exercise checks: right answers pass, `...` is "not done yet", typical slips get
their hint, and no hint gives the answer away.

The right answers are worked out here as a learner would, from the formula, the head layout and
the spec table.
"""

import dataclasses
import math

import torch

from conftest import (assert_not_attempted as _assert_not_attempted, gives_away as _gives_away,
                      hint_matching as _hint)
from infer_lib import hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch07
from infer_lib.model import ModelConfig, TINY_MHA, Transformer, to_gqa

BF16_BYTES = 2


# --- 7.1 -------------------------------------------------------------------------------

def _KiB(kv_heads, kv=2, layers=True, unit=2**10, bits=False):
    cfg = ModelConfig.from_preset(ch07.CACHE["preset"])
    n = kv * (cfg.n_layers if layers else 1) * kv_heads * cfg.head_dim * BF16_BYTES
    return n * (8 if bits else 1) / unit


def test_cache_per_token(capsys):
    G = ch07.CACHE["gqa_kv_heads"]
    H = ModelConfig.from_preset(ch07.CACHE["preset"]).n_heads
    gqa, mqa = _KiB(G), _KiB(1)
    ch07.cache_per_token(gqa, mqa)
    out = capsys.readouterr().out
    assert f"✅ Exercise 7.1 (GQA-{G}): correct." in out and "✅ Exercise 7.1 (MQA): correct." in out
    ch07.cache_per_token(round(gqa), round(mqa))                       # whole KiB: right
    assert out.count("✅") == 2
    capsys.readouterr()
    ch07.cache_per_token(..., ...)
    _assert_not_attempted(capsys, "Exercise 7.1")
    ch07.cache_per_token(gqa, ...)
    _assert_not_attempted(capsys, r"7\.1 \(MQA\)")
    hints = [
        _hint(ch07.cache_per_token, _KiB(H), ..., match="multi-head model's cache"),
        _hint(ch07.cache_per_token, ..., _KiB(H), match="multi-head model's cache"),
        _hint(ch07.cache_per_token, _KiB(G, kv=1), ..., match="key \\*and\\* a value"),
        _hint(ch07.cache_per_token, ..., _KiB(1, layers=False), match="leaves out the layers"),
        _hint(ch07.cache_per_token, _KiB(G, bits=True), ..., match="bits"),
        _hint(ch07.cache_per_token, _KiB(G, unit=1e3), ..., match="KB"),
        _hint(ch07.cache_per_token, ..., _KiB(1, unit=1), match="that is bytes"),
        _hint(ch07.cache_per_token, _KiB(H) * H // G, ..., match="divide, do not multiply"),
        _hint(ch07.cache_per_token, ..., mqa * 1.3, match="too large"),
        _hint(ch07.cache_per_token, gqa / 2**10, ..., match="MiB"),
        _hint(ch07.cache_per_token, ..., mqa * 2, match="fp32"),
    ]
    for hint in hints:   # what follows the reader's own number, echoed first
        assert not _gives_away(hint.split(" is ", 1)[1], gqa, mqa), hint


# --- 7.2 -------------------------------------------------------------------------------

def _layout():
    cfg = ModelConfig.from_preset(ch07.HEADS["preset"])
    return cfg.n_heads, cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads


def _kernel_kv_head(q_head):
    """The K/V head a query head reads, found by experiment: attention with one K/V head made
    different from the others changes exactly the outputs of the query heads that read it."""
    from infer_lib.reference import attention_ref

    H, H_kv, _ = _layout()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, 1, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, H_kv, 5, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, H_kv, 5, 8, generator=g, dtype=torch.float64)
    base = attention_ref(q, k, v)
    for j in range(H_kv):
        v2 = v.clone()
        v2[:, j] += 1.0
        if not torch.equal(attention_ref(q, k, v2)[0, q_head], base[0, q_head]):
            return j
    raise AssertionError("no K/V head changes the output")


def test_kv_head_of(capsys):
    H, H_kv, G = _layout()
    q, j = ch07.HEADS["query_head"], ch07.HEADS["kv_head"]
    right_head = q // G
    assert right_head == _kernel_kv_head(q)                       # the layout the code uses
    right_group = list(range(j * G, (j + 1) * G))
    for group in (right_group, tuple(reversed(right_group)), range(j * G, (j + 1) * G),
                  torch.tensor(right_group)):
        ch07.kv_head_of(right_head, group)
        out = capsys.readouterr().out
        assert "✅ Exercise 7.2 (K/V head): correct." in out
        assert "✅ Exercise 7.2 (group): correct." in out
    ch07.kv_head_of(float(right_head), ...)
    assert "✅" in capsys.readouterr().out
    ch07.kv_head_of(..., ...)
    _assert_not_attempted(capsys, "Exercise 7.2")
    hints = [
        _hint(ch07.kv_head_of, q % H_kv, ..., match="deals the query heads out in turn"),
        _hint(ch07.kv_head_of, q // H_kv, ..., match="divides by the number of K/V heads"),
        _hint(ch07.kv_head_of, right_head + 1, ..., match="numbered from 0"),
        _hint(ch07.kv_head_of, q, ..., match="multi-head layout"),
        _hint(ch07.kv_head_of, H_kv + 2, ..., match="not right"),
        _hint(ch07.kv_head_of, ..., list(range(j, H, H_kv)), match="interleaved"),
        _hint(ch07.kv_head_of, ..., list(range(j * H_kv, (j + 1) * H_kv)), match="a group has"),
        _hint(ch07.kv_head_of, ..., [h + 1 for h in right_group], match="off by one"),
        _hint(ch07.kv_head_of, ..., list(range((j - 1) * G, j * G)), match="another K/V head"),
        _hint(ch07.kv_head_of, ..., [0, 1, 2, 7], match="not the group"),
        _hint(ch07.kv_head_of, ..., [right_group[0]] * G, match="appears twice"),
    ]
    for hint in hints:
        assert str(right_group) not in hint and f"K/V head {right_head}" not in hint, hint
    _hint(ch07.kv_head_of, 2.5, ..., match="whole number", error=TypeError)
    _hint(ch07.kv_head_of, ..., "20-23", match="list of whole numbers", error=TypeError)
    _hint(ch07.kv_head_of, ..., [20.0, 21, 22, 23], match="whole numbers", error=TypeError)


# --- 7.3 -------------------------------------------------------------------------------

def _fit(kv_heads, memory_unit=2**30, weights_of=None, kv=2, layers=True, bits=False):
    """Sequences of the context whose cache fits beside the weights (unrounded); NVIDIA's memory
    GB are GiB. ``weights_of``: the K/V heads of the model whose weights are counted."""
    base = ModelConfig.from_preset(ch07.FIT["preset"])
    cfg = dataclasses.replace(base, n_kv_heads=kv_heads)
    weights = dataclasses.replace(base, n_kv_heads=weights_of or kv_heads).num_params() * BF16_BYTES
    mem = hardware.SPECS[ch07.FIT["gpu"]].memory_GB * memory_unit
    per_seq = (kv * (cfg.n_layers if layers else 1) * kv_heads * cfg.head_dim * BF16_BYTES
               * ch07.FIT["context"] * (8 if bits else 1))
    return (mem - weights) / per_seq


def test_max_batches(capsys):
    H = ModelConfig.from_preset(ch07.FIT["preset"]).n_heads
    mha, mqa = math.floor(_fit(H)), math.floor(_fit(1))
    ch07.max_batches(mha, mqa)
    out = capsys.readouterr().out
    assert "✅ Exercise 7.3 (MHA): correct." in out and "✅ Exercise 7.3 (MQA): correct." in out
    ch07.max_batches(float(mha), torch.tensor(mqa))
    assert capsys.readouterr().out.count("✅") == 2
    ch07.max_batches(..., ...)
    _assert_not_attempted(capsys, "Exercise 7.3")
    ch07.max_batches(mha, ...)
    _assert_not_attempted(capsys, r"7\.3 \(MQA\)")
    hints = [
        _hint(ch07.max_batches, math.ceil(_fit(H)), ..., match="rounds up"),
        _hint(ch07.max_batches, ..., math.ceil(_fit(1)), match="rounds up"),
        _hint(ch07.max_batches, math.floor(_fit(H, memory_unit=1e9)), ..., match="binary, GiB"),
        _hint(ch07.max_batches, ..., math.floor(_fit(1, memory_unit=1e9)), match="binary, GiB"),
        _hint(ch07.max_batches, ..., math.floor(_fit(1, weights_of=H)),
              match="multi-head model's weights"),
        _hint(ch07.max_batches, ..., mha * H, match="multiplies the multi-head batch"),
        _hint(ch07.max_batches, ..., mha, match="multi-head model's batch"),
        _hint(ch07.max_batches, math.floor(_fit(H, kv=1)), ..., match="key \\*and\\* a value"),
        _hint(ch07.max_batches, ..., math.floor(_fit(1, bits=True)), match="bits or bytes"),
        _hint(ch07.max_batches, ..., math.floor(_fit(1, layers=False)), match="leaves out the layers"),
        _hint(ch07.max_batches, 3 * mha, ..., match="too large"),
    ]
    for hint in hints:   # what follows the reader's own number, echoed first
        rest = hint.split(" is ", 1)[1]
        assert f" {mha} " not in rest and f" {mqa} " not in rest, hint
        assert not _gives_away(rest, _fit(H), _fit(1)), hint
    _hint(ch07.max_batches, _fit(H), ..., match="whole number")
    _hint(ch07.max_batches, ..., "many", match="whole number", error=TypeError)


def test_max_batches_agrees_with_the_chapters_function():
    """The check's answer is model.max_cached_tokens // context, the chapter's table."""
    from infer_lib.model import max_cached_tokens

    base = ModelConfig.from_preset(ch07.FIT["preset"])
    memory = hardware.SPECS[ch07.FIT["gpu"]].memory_bytes
    for n in (base.n_heads, 1):
        assert max_cached_tokens(dataclasses.replace(base, n_kv_heads=n), memory) \
            // ch07.FIT["context"] == math.floor(_fit(n))


# --- 7.4 (coding) ----------------------------------------------------------------------

def _right(weight, n_kv_heads, head_dim):
    """As the chapter teaches it: (H_kv, D, d) heads, groups of consecutive heads, their mean."""
    H_kv = weight.shape[0] // head_dim
    heads = weight.reshape(n_kv_heads, H_kv // n_kv_heads, head_dim, weight.shape[1])
    return heads.mean(dim=1).reshape(n_kv_heads * head_dim, weight.shape[1])


def _loop(weight, n_kv_heads, head_dim):
    """Also right: head by head, in a Python loop."""
    H_kv = weight.shape[0] // head_dim
    g = H_kv // n_kv_heads
    out = []
    for j in range(n_kv_heads):
        group = [weight[(j * g + i) * head_dim:(j * g + i + 1) * head_dim] for i in range(g)]
        out.append(sum(group) / g)
    return torch.cat(out)


def _interleaved(weight, n, D):
    H_kv = weight.shape[0] // D
    return weight.reshape(H_kv // n, n, D, -1).mean(0).reshape(n * D, -1)


def _summed(weight, n, D):
    H_kv = weight.shape[0] // D
    return weight.reshape(n, H_kv // n, D, -1).sum(1).reshape(n * D, -1)


def _first_of_group(weight, n, D):
    H_kv = weight.shape[0] // D
    return weight.reshape(n, H_kv // n, D, -1)[:, 0].reshape(n * D, -1)


def _rows_averaged(weight, n, D):
    return weight.reshape(n, -1, weight.shape[1]).mean(1).repeat_interleave(D, 0)


def _three_d(weight, n, D):
    return _right(weight, n, D).reshape(n, D, -1)


def _in_place(weight, n, D):
    out = _right(weight, n, D)
    weight.zero_()
    return out


def test_mean_pool(capsys):
    for right in (ch07._pool_ref, _right, _loop):
        assert ch07.mean_pool(right) is True
        assert "✅ Exercise 7.4 (mean-pooling): correct." in capsys.readouterr().out

    def stub(weight, n_kv_heads, head_dim):
        raise NotImplementedError

    for unattempted in (stub, ...):
        assert ch07.mean_pool(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out
    hints = [_hint(ch07.mean_pool, fn, match=match) for fn, match in (
        (_interleaved, "interleaved grouping"),
        (_summed, "the sum"),
        (_first_of_group, "keeps the first head"),
        (_rows_averaged, "average head by head"),
        (_three_d, "as the projection's weight"),
        (lambda w, n, D: w[: n * D, : 2], "expected \\(n_kv_heads · head_dim, d\\)"),
        (lambda w, n, D: _right(w, n, D) + 1, "values differ"),
        (_in_place, "changed the weight"),
        (lambda w, n, D: None, "returned None"),
        (lambda w, n, D: _right(w, n, D).tolist(), "return a tensor"),
    )]
    for hint in hints:   # a kind of slip, never the code of the answer
        assert not any(code in hint for code in ("reshape", ".mean(", "torch.", "sum(")), hint


def test_pool_ref_is_what_to_gqa_does():
    """The check's reference is the pooling to_gqa applies to k_proj and v_proj."""
    torch.manual_seed(0)
    model = Transformer(TINY_MHA)
    converted = to_gqa(model, 2)
    D = TINY_MHA.head_dim
    for old, new in zip(model.layers, converted.layers):
        for name in ("k_proj", "v_proj"):
            w = getattr(old.self_attn, name).weight
            torch.testing.assert_close(getattr(new.self_attn, name).weight, ch07._pool_ref(w, 2, D))
            torch.testing.assert_close(ch07._pool_ref(w, 2, D), _right(w, 2, D))


def test_checks_hide_their_frames():
    for check in (ch07.cache_per_token, ch07.kv_head_of, ch07.max_batches, ch07.mean_pool):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
