"""Chapter 3's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would, from the spec table and the shipped bench file.
"""

import re

import pytest

from infer_lib import hardware, measure
from infer_lib.exercises import NOT_ATTEMPTED, ch03

H100 = hardware.SPECS["h100_sxm"]
A100_80 = hardware.SPECS["a100_80gb"]


def _assert_not_attempted(capsys, match=""):
    """The check printed "not attempted yet" (for the part ``match`` names) and raised nothing."""
    lines = [line for line in capsys.readouterr().out.splitlines() if NOT_ATTEMPTED in line]
    assert lines and any(re.search(match, line) for line in lines), lines


def _b_star(bytes_per_weight, peak_tflops=H100.bf16_TFLOPs):
    return peak_tflops * 1e12 * bytes_per_weight / (2 * H100.bandwidth_GBps * 1e9)


def _intensity(B, d=4096, d_ff=11008):
    return 2 * B * d * d_ff / (2 * (B * d + d * d_ff + B * d_ff))


def _balance_a100_80():
    return A100_80.bf16_TFLOPs * 1e12 / (A100_80.bandwidth_GBps * 1e9)


def _tile_GB(only_a=False):
    n = ch03.PRODUCT_N
    per_element = 1 / ch03.TILE_BLOCK_M + (0 if only_a else 1 / ch03.TILE_BLOCK_N)
    return n**3 * per_element * 2 / 1e9


def _naive_GB(reads_per_output=2):
    return reads_per_output * ch03.PRODUCT_N**3 * 2 / 1e9


def _floor_us(bandwidth_GBps, bytes_per_weight=2):
    d, d_ff = ch03.LLAMA_D, ch03.LLAMA_FF
    nbytes = 2 * (d_ff + d) + bytes_per_weight * d_ff * d
    return nbytes / (bandwidth_GBps * 1e9) * 1e6


def _measured_copy_GBps():
    return measure.load_reference("bench")["limits"]["copy_GBps"]


# --- 3.1 -------------------------------------------------------------------------------

def test_critical_batch_int8(capsys):
    ch03.critical_batch_int8(_b_star(1))
    assert "✅ Exercise 3.1: correct." in capsys.readouterr().out
    ch03.critical_batch_int8(...)
    _assert_not_attempted(capsys, "replace the `...`")
    with pytest.raises(AssertionError, match="twice the answer: 2 bytes per weight"):
        ch03.critical_batch_int8(_b_star(2))
    with pytest.raises(AssertionError, match="four times the answer"):
        ch03.critical_batch_int8(2 * _b_star(2))
    with pytest.raises(AssertionError, match="plain FP32 peak"):
        ch03.critical_batch_int8(_b_star(1, peak_tflops=H100.fp32_TFLOPs))


def test_int8_halves_the_critical_batch():
    assert _b_star(1) == pytest.approx(_b_star(2) / 2)
    assert 140 < _b_star(1) < 155   # 989.5e12 / (2 × 3350e9)


# --- 3.2 -------------------------------------------------------------------------------

def test_llama_up_proj_bound(capsys):
    balance = _balance_a100_80()
    at_64 = "compute" if _intensity(64) >= balance else "memory"
    at_1024 = "compute" if _intensity(1024) >= balance else "memory"
    assert (at_64, at_1024) == ("memory", "compute")
    ch03.llama_up_proj_bound(at_64, at_1024)
    out = capsys.readouterr().out
    assert "✅ Exercise 3.2 (B = 64): correct." in out and "✅ Exercise 3.2 (B = 1024): correct." in out
    ch03.llama_up_proj_bound(..., ...)
    _assert_not_attempted(capsys)
    ch03.llama_up_proj_bound("memory", ...)
    _assert_not_attempted(capsys, r"B = 1024")
    with pytest.raises(AssertionError, match=r"B = 64.*63 FLOP per byte.*balance of 153"):
        ch03.llama_up_proj_bound("compute", "compute")
    with pytest.raises(AssertionError, match=r"B = 1024.*762 FLOP per byte"):
        ch03.llama_up_proj_bound("memory", "memory")
    with pytest.raises(ValueError, match="not one of the options"):
        ch03.llama_up_proj_bound("memory-bound", "compute")


# --- 3.3 -------------------------------------------------------------------------------

def test_tile_traffic(capsys):
    tiled, naive = _tile_GB(), _naive_GB()
    ch03.tile_traffic(tiled, naive - tiled)
    out = capsys.readouterr().out
    assert "✅ Exercise 3.3 (tiled kernel): correct." in out and "✅ Exercise 3.3 (saved): correct." in out
    assert "256 times less traffic" in out
    ch03.tile_traffic(..., ...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match="counts only the slabs of a"):
        ch03.tile_traffic(_tile_GB(only_a=True), naive - tiled)
    with pytest.raises(AssertionError, match="the minimum, every element read once"):
        ch03.tile_traffic(3 * ch03.PRODUCT_N**2 * 2 / 1e9, naive - tiled)
    with pytest.raises(AssertionError, match="what the naive kernel reads; subtract"):
        ch03.tile_traffic(tiled, naive)
    with pytest.raises(AssertionError, match="2·K elements per output"):
        ch03.tile_traffic(tiled, _naive_GB(reads_per_output=1) - tiled)


# --- 3.4 -------------------------------------------------------------------------------

def test_time_floor(capsys):
    # memory-bound at B = 1: the FLOPs take a tiny fraction of the byte time, so the floor is bytes / bandwidth
    datasheet, measured = _floor_us(H100.bandwidth_GBps), _floor_us(_measured_copy_GBps())
    ch03.time_floor(datasheet, measured)
    out = capsys.readouterr().out
    assert "✅ Exercise 3.4 (datasheet): correct." in out and "✅ Exercise 3.4 (measured ceilings): correct." in out
    ch03.time_floor(..., ...)
    _assert_not_attempted(capsys)
    ch03.time_floor(datasheet, ...)
    _assert_not_attempted(capsys, "measured ceilings")
    compute_us = 2 * ch03.LLAMA_D * ch03.LLAMA_FF / (H100.bf16_TFLOPs * 1e12) * 1e6
    with pytest.raises(AssertionError, match="that is the compute time"):
        ch03.time_floor(compute_us, measured)
    with pytest.raises(AssertionError, match="counts 1 byte per weight"):
        ch03.time_floor(_floor_us(H100.bandwidth_GBps, bytes_per_weight=1), measured)
    with pytest.raises(AssertionError, match="datasheet floor again"):
        ch03.time_floor(datasheet, datasheet)


def test_checks_hide_their_frames():
    for check in (ch03.critical_batch_int8, ch03.llama_up_proj_bound, ch03.tile_traffic, ch03.time_floor):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
