"""Chapter 4's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would, by hand from the given values.
"""

import math

import re

import pytest

from infer_lib.exercises import NOT_ATTEMPTED, ch04

BF16_BYTES = 2


# --- 4.1 -------------------------------------------------------------------------------

def _assert_not_attempted(capsys, match=""):
    """The check printed "not attempted yet" (for the part ``match`` names) and raised nothing."""
    lines = [line for line in capsys.readouterr().out.splitlines() if NOT_ATTEMPTED in line]
    assert lines and any(re.search(match, line) for line in lines), lines


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
    with pytest.raises(AssertionError, match="4 passes"):
        ch04.naive_score_traffic(_score_GB(4), 1)
    with pytest.raises(AssertionError, match="5 passes"):
        ch04.naive_score_traffic(_score_GB(5), 1)
    with pytest.raises(AssertionError, match="each kernel once"):
        ch04.naive_score_traffic(_score_GB(3), 1)
    with pytest.raises(AssertionError, match="one head"):
        ch04.naive_score_traffic(_score_GB(heads=1), 1)
    with pytest.raises(AssertionError, match="GiB"):
        ch04.naive_score_traffic(_score_GB() * 1e9 / 2**30, 1)
    with pytest.raises(AssertionError, match="also writes the output"):
        ch04.naive_score_traffic(_score_GB(), _score_GB() / _flash_GB(3))
    with pytest.raises(AssertionError, match="upside down"):
        ch04.naive_score_traffic(_score_GB(), _flash_GB() / _score_GB())


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
    with pytest.raises(AssertionError, match="old maximum"):
        ch04.online_update(m, l_new)
    with pytest.raises(AssertionError, match=r"multiply it by exp\(m_old − m_new\)"):
        ch04.online_update(m_new, l + sum(math.exp(x - m_new) for x in block))
    with pytest.raises(AssertionError, match="upside down"):
        ch04.online_update(m_new, l * math.exp(m_new - m) + sum(math.exp(x - m_new) for x in block))
    with pytest.raises(AssertionError, match="keeps the old maximum"):
        ch04.online_update(m_new, l + sum(math.exp(x - m) for x in block))
    with pytest.raises(AssertionError, match="drops the scores seen before"):
        ch04.online_update(m_new, sum(math.exp(x - m_new) for x in block))


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
    with pytest.raises(AssertionError, match="exactly one key tile"):
        ch04.causal_tiles(skipped, 2 * masked)
    with pytest.raises(ValueError, match="not one of the options"):
        ch04.causal_tiles(-1, masked)


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
    with pytest.raises(AssertionError, match="query tiles per head"):
        ch04.flash_kv_reads(per_tile / 1e6, f["B"] * f["H"] * per_tile / 1e9)
    with pytest.raises(AssertionError, match="HBM minimum"):
        ch04.flash_kv_reads(per_tile / 1e6, 2 * f["B"] * f["H_kv"] * f["S"] * f["D"] * BF16_BYTES / 1e9)


def test_checks_hide_their_frames():
    for check in (ch04.naive_score_traffic, ch04.online_update, ch04.causal_tiles, ch04.flash_kv_reads):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
