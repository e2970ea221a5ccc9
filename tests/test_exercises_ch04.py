"""Chapter 4's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would, by hand from the given values.
"""

import math

import re

import pytest
import torch

from infer_lib.exercises import NOT_ATTEMPTED, ch04

BF16_BYTES = 2


# --- 4.1 -------------------------------------------------------------------------------

def _assert_not_attempted(capsys, match=""):
    """The check printed "not attempted yet" (for the part ``match`` names) and raised nothing."""
    lines = [line for line in capsys.readouterr().out.splitlines() if NOT_ATTEMPTED in line]
    assert lines and any(re.search(match, line) for line in lines), lines


def _hint(check, *answers, match):
    """The message of the AssertionError a wrong answer raises, checked against ``match``."""
    with pytest.raises(AssertionError, match=match) as err:
        check(*answers)
    return str(err.value)


def _gives_away(message, *values):
    """Does ``message`` state one of ``values``, as a reader would print it (3 significant digits)?"""
    return any(f"{v:.3g}" in message or f"{v:g}" in message for v in values)


def _score_GB(passes=6, heads=None):
    sh = ch04.NAIVE_SHAPE
    heads = sh["H"] if heads is None else heads
    return passes * sh["B"] * heads * sh["S"] ** 2 * BF16_BYTES / 1e9


def _flash_GB(tensors=4):
    sh = ch04.NAIVE_SHAPE
    return tensors * sh["B"] * sh["H"] * sh["S"] * sh["D"] * BF16_BYTES / 1e9


def test_naive_score_traffic(capsys):
    ch04.naive_score_traffic(_score_GB(), _score_GB() / _flash_GB())
    out = capsys.readouterr().out
    assert "✅ Exercise 4.1 (score-matrix traffic): correct." in out
    assert "✅ Exercise 4.1 (ratio to FlashAttention): correct." in out
    assert math.isclose(_score_GB() / _flash_GB(), 1.5 * ch04.NAIVE_SHAPE["S"] / ch04.NAIVE_SHAPE["D"])
    ch04.naive_score_traffic(..., ...)
    _assert_not_attempted(capsys, "replace the `...`")
    ch04.naive_score_traffic(_score_GB(), ...)
    _assert_not_attempted(capsys, "ratio")
    ch04.naive_score_traffic(round(_score_GB(), 2), round(_score_GB() / _flash_GB()))   # rounded: right
    assert capsys.readouterr().out.count("✅") == 2
    right = (_score_GB(), _score_GB() / _flash_GB())
    hints = [
        _hint(ch04.naive_score_traffic, _score_GB(4), 1, match="4 passes"),
        _hint(ch04.naive_score_traffic, _score_GB(5), 1, match="5 passes"),
        _hint(ch04.naive_score_traffic, _score_GB(3), 1, match="each kernel once"),
        _hint(ch04.naive_score_traffic, _score_GB(heads=1), 1, match="one head"),
        _hint(ch04.naive_score_traffic, _score_GB() * 1e9 / 2**30, 1, match="GiB"),
        _hint(ch04.naive_score_traffic, _score_GB(7), 1, match=r"too large.*±2%"),
        _hint(ch04.naive_score_traffic, _score_GB(), _score_GB() / _flash_GB(3), match="also writes"),
        _hint(ch04.naive_score_traffic, _score_GB(), _flash_GB() / _score_GB(), match="upside down"),
        _hint(ch04.naive_score_traffic, _score_GB(), 0.7 * right[1], match="too small"),
        # q, k, v and the output counted too, in either part
        _hint(ch04.naive_score_traffic, _score_GB() + _flash_GB(), 1, match="includes the reads of q, k, v"),
        _hint(ch04.naive_score_traffic, _score_GB(), (_score_GB() + _flash_GB()) / _flash_GB(),
              match="whole traffic; the numerator is the score matrix's traffic alone"),
        # a mask step counted (a read and a write of the scores), with or without the bool mask read
        _hint(ch04.naive_score_traffic, _score_GB(8), 1, match="counts a mask step; this attention is not causal"),
        _hint(ch04.naive_score_traffic, _score_GB(8) + ch04.NAIVE_SHAPE["S"] ** 2 / 1e9, 1,
              match="mask step"),
        _hint(ch04.naive_score_traffic, _score_GB(8) + _flash_GB(), 1, match="mask step"),
        _hint(ch04.naive_score_traffic, _score_GB() * 1e3, 1, match="that is MB"),
    ]
    for hint in hints:
        assert not _gives_away(hint, *right) and "6 passes" not in hint, hint


# --- 4.2 -------------------------------------------------------------------------------

def test_online_update(capsys):
    m, l, block = ch04.ONLINE_M, ch04.ONLINE_L, ch04.ONLINE_BLOCK
    m_new = max(m, max(block))
    l_new = l * math.exp(m - m_new) + sum(math.exp(x - m_new) for x in block)
    ch04.online_update(m_new, l_new)
    out = capsys.readouterr().out
    assert "✅ Exercise 4.2 (m_new): correct." in out and "✅ Exercise 4.2 (l_new): correct." in out
    ch04.online_update(..., ...)
    _assert_not_attempted(capsys)
    # The solution's hand computation, exponentials rounded to 3 decimals, is right (±1%).
    ch04.online_update(m_new, round(l * round(math.exp(m - m_new), 3)
                                    + sum(round(math.exp(x - m_new), 3) for x in block), 3))
    assert capsys.readouterr().out.count("✅") == 2
    hints = [
        _hint(ch04.online_update, m, l_new, match="old maximum"),
        _hint(ch04.online_update, m_new, l + sum(math.exp(x - m_new) for x in block),
              match=r"multiply it by exp\(m_old − m_new\)"),
        _hint(ch04.online_update, m_new, l * math.exp(m_new - m) + sum(math.exp(x - m_new) for x in block),
              match="upside down"),
        _hint(ch04.online_update, m_new, l + sum(math.exp(x - m) for x in block), match="keeps the old maximum"),
        _hint(ch04.online_update, m_new, sum(math.exp(x - m_new) for x in block),
              match="drops the scores seen before"),
        _hint(ch04.online_update, m_new, 1.05 * l_new, match=r"too large.*±1%"),
    ]
    for hint in hints:
        assert "±0%" not in hint and not _gives_away(hint, l_new) and "by a factor of" not in hint, hint
    # m and l have no unit: no hint about units, GB vs GiB or unit prefixes
    for wrong in (l_new * 1.0737, l_new * 1000, l_new * 3, l_new / 2):
        hint = _hint(ch04.online_update, m_new, wrong, match="Recheck each term")
        assert not re.search(r"unit|GiB|prefix", hint), hint
        assert not _gives_away(hint, l_new), hint


# --- 4.3 -------------------------------------------------------------------------------

def _tiles(align_bottom_right=True):
    """Count by hand: query tile m's last query sees keys up to last + offset; its first query up to
    first + offset. Key tiles wholly beyond the last are skipped; those wholly within the first's
    reach run unmasked; the rest are masked."""
    t = ch04.TILES
    offset = t["S_k"] - t["S_q"] if align_bottom_right else 0
    skipped = masked = 0
    for m in range(math.ceil(t["S_q"] / t["BLOCK_M"])):
        first, last = m * t["BLOCK_M"], min((m + 1) * t["BLOCK_M"], t["S_q"]) - 1
        for n in range(math.ceil(t["S_k"] / t["BLOCK_N"])):
            lo, hi = n * t["BLOCK_N"], min((n + 1) * t["BLOCK_N"], t["S_k"]) - 1
            if lo > last + offset:
                skipped += 1
            elif hi > first + offset:
                masked += 1
    return skipped, masked


def test_causal_tiles(capsys):
    skipped, masked = _tiles()
    ch04.causal_tiles(skipped, masked)
    out = capsys.readouterr().out
    assert "✅ Exercise 4.3 (skipped): correct." in out and "✅ Exercise 4.3 (masked): correct." in out
    ch04.causal_tiles(..., ...)
    _assert_not_attempted(capsys)
    ch04.causal_tiles(skipped, ...)
    _assert_not_attempted(capsys)
    top_left_skipped, _ = _tiles(align_bottom_right=False)
    with pytest.raises(AssertionError, match="top-left"):
        ch04.causal_tiles(top_left_skipped, masked)
    n_pairs = math.ceil(ch04.TILES["S_q"] / ch04.TILES["BLOCK_M"]) * math.ceil(ch04.TILES["S_k"] / ch04.TILES["BLOCK_N"])
    with pytest.raises(AssertionError, match="pairs that run"):
        ch04.causal_tiles(n_pairs - skipped, masked)
    with pytest.raises(AssertionError, match="never loads"):
        ch04.causal_tiles(0, masked)
    with pytest.raises(AssertionError, match="Go query tile by query tile"):
        ch04.causal_tiles(skipped + 1, masked)
    with pytest.raises(AssertionError, match="need the element-wise mask"):
        ch04.causal_tiles(skipped, 0)
    hint = _hint(ch04.causal_tiles, skipped, 2 * masked, match="too many")
    assert "one key tile" not in hint and "tile_map" not in hint
    with pytest.raises(ValueError, match="not a possible count"):
        ch04.causal_tiles(-1, masked)
    # a fraction says a whole number is expected, without listing every option
    for frac in ((skipped + 0.5, masked), (skipped, masked - 0.5)):
        with pytest.raises(ValueError, match="expected a whole number") as err:
            ch04.causal_tiles(*frac)
        assert "[" not in str(err.value) and "options" not in str(err.value), err.value
    with pytest.raises(TypeError, match="whole number"):
        ch04.causal_tiles("six", masked)
    capsys.readouterr()
    ch04.causal_tiles(float(skipped), float(masked))    # 6.0 is a whole number
    assert capsys.readouterr().out.count("✅") == 2


# --- 4.4 -------------------------------------------------------------------------------

def test_flash_kv_reads(capsys):
    f = ch04.FLASH_SHAPE
    per_tile = 2 * f["S"] * f["D"] * BF16_BYTES
    programs = (f["S"] // f["BLOCK_M"]) * f["B"] * f["H"]
    ch04.flash_kv_reads(per_tile / 1e6, programs * per_tile / 1e9)
    out = capsys.readouterr().out
    assert "✅ Exercise 4.4 (per query tile): correct." in out and "✅ Exercise 4.4 (all programs): correct." in out
    assert f"{(f['S'] // f['BLOCK_M']) * f['H'] // f['H_kv']}×" in out
    ch04.flash_kv_reads(..., ...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match="K alone"):
        ch04.flash_kv_reads(per_tile / 2 / 1e6, 1)
    with pytest.raises(AssertionError, match="once per query \\*tile\\*"):
        ch04.flash_kv_reads(per_tile * f["BLOCK_M"] / 1e6, 1)
    with pytest.raises(AssertionError, match="MiB"):
        ch04.flash_kv_reads(per_tile / 2**20, 1)
    with pytest.raises(AssertionError, match="shares the K/V \\*data\\*, not the programs"):
        ch04.flash_kv_reads(per_tile / 1e6, programs * per_tile * f["H_kv"] / f["H"] / 1e9)
    hint = _hint(ch04.flash_kv_reads, per_tile / 1e6, f["B"] * f["H"] * per_tile / 1e9,
                 match="one program per head")
    assert not _gives_away(hint, programs * per_tile / 1e9, f["S"] // f["BLOCK_M"]), hint
    with pytest.raises(AssertionError, match="HBM minimum"):
        ch04.flash_kv_reads(per_tile / 1e6, 2 * f["B"] * f["H_kv"] * f["S"] * f["D"] * BF16_BYTES / 1e9)
    # MB entered for GB, and GB for MB: the units named, not just "too large"
    hint = _hint(ch04.flash_kv_reads, per_tile / 1e6, programs * per_tile / 1e6, match="that is MB.*asks for GB")
    assert not _gives_away(hint, programs * per_tile / 1e9), hint
    _hint(ch04.flash_kv_reads, per_tile / 1e9, 1, match="that is GB.*asks for MB")


# --- 4.5 (coding) ----------------------------------------------------------------------

def _right_step(m, l, block):
    """Written as the chapter teaches it: the new maximum, a shift of 0 for rows that have seen
    only −inf, the old sum rescaled, the block's terms added."""
    m_new = torch.maximum(m, block.max(dim=1).values)
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    return m_new, l * torch.exp(m - shift) + torch.exp(block - shift[:, None]).sum(dim=1)


def _row_by_row_step(m, l, block):
    """Also right: plain Python floats, one row at a time, returned as tensors."""
    out_m, out_l = [], []
    for mi, li, row in zip(m.tolist(), l.tolist(), block.tolist()):
        mn = max([mi] + row)
        sh = 0.0 if mn == -math.inf else mn
        out_m.append(mn)
        out_l.append(li * math.exp(mi - sh) + sum(math.exp(x - sh) for x in row))
    return torch.tensor(out_m), torch.tensor(out_l)


def _no_rescale(m, l, block):
    m_new, _ = _right_step(m, l, block)
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    return m_new, l + torch.exp(block - shift[:, None]).sum(dim=1)


def _upside_down(m, l, block):
    m_new, _ = _right_step(m, l, block)
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    m_old = torch.where(torch.isinf(m), shift, m)
    return m_new, l * torch.exp(shift - m_old) + torch.exp(block - shift[:, None]).sum(dim=1)


def _forgets_old_sum(m, l, block):
    m_new, _ = _right_step(m, l, block)
    shift = torch.where(torch.isinf(m_new), 0.0, m_new)
    return m_new, torch.exp(block - shift[:, None]).sum(dim=1)


def _no_guard(m, l, block):
    m_new = torch.maximum(m, block.amax(dim=1))
    return m_new, l * torch.exp(m - m_new) + torch.exp(block - m_new[:, None]).sum(dim=1)


def _shifted_max_returned(m, l, block):
    m_new, l_new = _right_step(m, l, block)
    return torch.where(torch.isinf(m_new), 0.0, m_new), l_new


def _in_place(m, l, block):
    m_new, l_new = _right_step(m, l, block)
    m.copy_(m_new)
    return m_new, l_new


def _stale_max(m, l, block):
    shift = torch.where(torch.isinf(m), 0.0, m)
    return m, l + torch.exp(block - shift[:, None]).sum(dim=1)


def _block_only(m, l, block):
    bm = block.amax(dim=1)
    return bm, torch.exp(block - bm[:, None]).sum(dim=1)


def _flt_max_floor(m, l, block):
    """The kernel's trick: the running max never goes below −FLT_MAX, so no shift is ever −inf."""
    m_new = torch.maximum(m, block.amax(dim=1)).clamp(min=torch.finfo(torch.float32).min)
    return m_new, l * torch.exp(m - m_new) + torch.exp(block - m_new[:, None]).sum(dim=1)


def _big_floor(m, l, block):
    """The same with a floor of one's own, −1e30."""
    m_new = torch.maximum(torch.maximum(m, block.amax(dim=1)), torch.tensor(-1e30))
    return m_new, l * torch.exp(m - m_new) + torch.exp(block - m_new[:, None]).sum(dim=1)


def _sums_wrong_dim(m, l, block):
    m_new, l_new = _right_step(m, l, block)
    return m_new, l_new.sum(dim=0, keepdim=True)


def test_online_softmax_step(capsys):
    for right in (ch04._online_softmax_step_ref, _right_step, _row_by_row_step):
        assert ch04.online_softmax_step(right) is True
        assert "✅ Exercise 4.5 (online_update): correct." in capsys.readouterr().out

    def stub(m, l, block):
        raise NotImplementedError

    for unattempted in (stub, ...):
        assert ch04.online_softmax_step(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out
    hints = [_hint(ch04.online_softmax_step, fn, match=match) for fn, match in (
        (_no_rescale, "rescaled to the new one"),
        (_upside_down, "upside down"),
        (_forgets_old_sum, "forgets the scores seen before"),
        (_stale_max, "maximum is not updated"),
        (_block_only, "only look at the new block"),
        (_no_guard, "NaN for a row that has seen only −inf"),
        (_shifted_max_returned, "must keep m_new = −inf"),
        (_flt_max_floor, "kernel's −FLT_MAX floor.*must stay −inf"),
        (_big_floor, "kernel's −FLT_MAX floor"),
        (_in_place, "changed its inputs in place"),
        (_sums_wrong_dim, "shape"),
        (lambda m, l, block: None, "returned None"),
        (lambda m, l, block: torch.stack(_right_step(m, l, block)), "pair of tensors"),
    )]
    for hint in hints:   # a kind of slip, never the code of the answer
        assert not any(code in hint for code in ("torch.", "exp(m", "maximum(", "where(")), hint


def test_online_softmax_step_ref_matches_softmax():
    """The reference, applied block by block, gives torch.softmax's normaliser."""
    torch.manual_seed(0)
    x = 5 * torch.randn(6, 40)
    x[:, :7] = float("-inf")                                 # leading masked keys
    m, l = torch.full((6,), float("-inf")), torch.zeros(6)
    for start in range(0, 40, 8):
        m, l = ch04._online_softmax_step_ref(m, l, x[:, start:start + 8])
    torch.testing.assert_close(torch.exp(x - m[:, None]) / l[:, None], torch.softmax(x, dim=1))


def test_checks_hide_their_frames():
    for check in (ch04.naive_score_traffic, ch04.online_update, ch04.causal_tiles, ch04.flash_kv_reads,
                  ch04.online_softmax_step):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
