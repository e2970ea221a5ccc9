"""Chapter 3's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would, from the spec table and the shipped bench file.
"""

import math
import random
import re

import pytest

from conftest import assert_not_given as _assert_not_given, hint_of as _hint
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
    right = _b_star(1)
    ch03.critical_batch_int8(right)
    assert "✅ Exercise 3.1: correct." in capsys.readouterr().out
    ch03.critical_batch_int8(round(right))                      # rounded: inside the 2% tolerance
    ch03.critical_batch_int8(right * 1.015)
    assert capsys.readouterr().out.count("✅") == 2
    ch03.critical_batch_int8(...)
    _assert_not_attempted(capsys, "replace the `...`")
    for wrong, match in ((_b_star(2), "factor of 2: .*bf16 weights"),
                         (2 * _b_star(2), "factor of 4: two slips"),
                         (_b_star(1, peak_tflops=H100.fp32_TFLOPs), "plain FP32 peak")):
        hint = _hint(ch03.critical_batch_int8, wrong)
        assert re.search(match, hint), hint
        _assert_not_given(hint.split("is not right")[-1], right)
    assert "twice the answer" not in _hint(ch03.critical_batch_int8, _b_star(2))


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
    # a wrong choice says how to decide, never the intensity or the balance that decide it
    for args, match in ((("compute", "compute"), r"B = 64.*compute-bound only when.*dominates"),
                        (("memory", "memory"), r"B = 1024.*memory-bound only when")):
        hint = _hint(ch03.llama_up_proj_bound, *args)
        assert re.search(match, hint), hint
        _assert_not_given(hint.split("is not right")[-1], _intensity(64), _intensity(1024), balance)
    with pytest.raises(ValueError, match="not one of the options"):
        ch03.llama_up_proj_bound("memory-bound", "compute")


# --- 3.3 -------------------------------------------------------------------------------

def test_tile_traffic(capsys):
    tiled, naive = _tile_GB(), _naive_GB()
    ch03.tile_traffic(tiled, naive / tiled)
    out = capsys.readouterr().out
    assert "✅ Exercise 3.3 (tiled kernel): correct." in out and "✅ Exercise 3.3 (times less): correct." in out
    ch03.tile_traffic(round(tiled, 1), round(naive / tiled))     # rounded answers pass
    assert capsys.readouterr().out.count("✅") == 2
    ch03.tile_traffic(..., ...)
    _assert_not_attempted(capsys)
    ch03.tile_traffic(tiled, ...)
    _assert_not_attempted(capsys, "times less")
    slips = [((_tile_GB(only_a=True), naive / tiled), "slabs of one operand only"),
             ((3 * ch03.PRODUCT_N**2 * 2 / 1e9, naive / tiled), "the minimum, every element read once"),
             ((tiled / 2, naive / tiled), "or elements instead of bytes"),
             ((tiled * 2**30 / 1e9, naive / tiled), "GiB"),
             ((tiled * 2, naive / tiled), "a tile half as wide"),
             ((tiled, _naive_GB(reads_per_output=1) / tiled), "the naive kernel reads 2·K"),
             # elements over bytes, and bytes over elements
             ((tiled, (naive / 2) / tiled), "one count in elements and the other in bytes"),
             ((tiled, naive / (tiled / 2)), "one count in bytes and the other in elements"),
             ((tiled, tiled / naive), "inverted")]
    for args, match in slips:
        hint = _hint(ch03.tile_traffic, *args)
        assert match in hint, hint
        _assert_not_given(hint.split("is not right")[-1].split(" is off")[-1], tiled, naive / tiled)
    # a byte count off by 2 never gets the FLOPs hint of the generic factor-of-2 message
    assert "FLOPs" not in _hint(ch03.tile_traffic, tiled * 2, naive / tiled)


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
    # the success line of the measured part speaks of the measured ceilings only
    ch03.time_floor(datasheet, measured)
    out = capsys.readouterr().out.splitlines()[-1]
    limits = measure.load_reference("bench")["limits"]
    m_compute_us = 2 * ch03.LLAMA_D * ch03.LLAMA_FF / (limits["matmul_TFLOPs"]["bfloat16"] * 1e12) * 1e6
    assert "measured matmul ceiling" in out and f"{m_compute_us:.2f} µs" in out, out


# --- 3.5 (coding) ----------------------------------------------------------------------

def _reads(M, N, K, BLOCK_M, BLOCK_N, elem_bytes):
    """A learner's right answer: programs × what each loads over the K loop × bytes."""
    programs = -(-M // BLOCK_M) * -(-N // BLOCK_N)
    return programs * (BLOCK_M * K + K * BLOCK_N) * elem_bytes


def test_tiled_read_bytes_right(capsys):
    assert ch03.tiled_read_bytes(_reads)
    assert "✅ Exercise 3.5: correct." in capsys.readouterr().out
    # float arithmetic with math.ceil is accepted too
    assert ch03.tiled_read_bytes(lambda M, N, K, bm, bn, s: math.ceil(M / bm) * math.ceil(N / bn) * K * (bm + bn) * s * 1.0)


def test_tiled_read_bytes_not_attempted(capsys):
    def stub(M, N, K, BLOCK_M, BLOCK_N, elem_bytes):
        raise NotImplementedError

    assert ch03.tiled_read_bytes(stub) is False
    assert ch03.tiled_read_bytes(...) is False
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 2 and "✅" not in out


def test_tiled_read_bytes_cases_are_odd_and_ragged():
    for case in ch03._traffic_cases(rng=random.Random(0)) + ch03._traffic_cases():
        M, N, K, bm, bn, s = case
        assert M % 2 and N % 2 and K % 2 and M % bm and N % bn, case
    first = ch03._traffic_cases(rng=random.Random(1))[0]
    assert first[0] < first[3]   # a decode shape: M smaller than BLOCK_M


_SLIPS = {
    "tile counts are not rounded up": lambda M, N, K, bm, bn, s: M * N * K * (1 / bm + 1 / bn) * s,
    "rounded down": lambda M, N, K, bm, bn, s: (M // bm) * (N // bn) * K * (bm + bn) * s,
    "counts elements": lambda M, N, K, bm, bn, s: _reads(M, N, K, bm, bn, 1),
    "slabs of a only": lambda M, N, K, bm, bn, s: -(-M // bm) * -(-N // bn) * K * bm * s,
    "slabs of b only": lambda M, N, K, bm, bn, s: -(-M // bm) * -(-N // bn) * K * bn * s,
    "swapped": lambda M, N, K, bm, bn, s: _reads(M, N, K, bn, bm, s),
    "the minimum": lambda M, N, K, bm, bn, s: (M * K + K * N) * s,
    "naive kernel": lambda M, N, K, bm, bn, s: 2 * M * N * K * s,
    "c is written": lambda M, N, K, bm, bn, s: _reads(M, N, K, bm, bn, s) + M * N * s,
    # K rounded up to a multiple of BLOCK_K (not an argument: a reader picks one, or reuses a tile side)
    "K is rounded up": lambda M, N, K, bm, bn, s: _reads(M, N, -(-K // 64) * 64, bm, bn, s),
}


@pytest.mark.parametrize("block_k", [16, 32, 128, "BLOCK_M", "BLOCK_N"])
def test_tiled_read_bytes_k_rounded_up(block_k):
    def rounds_k_up(M, N, K, bm, bn, s):
        bk = {"BLOCK_M": bm, "BLOCK_N": bn}.get(block_k, block_k)
        return _reads(M, N, math.ceil(K / bk) * bk, bm, bn, s)

    hint = _hint(ch03.tiled_read_bytes, rounds_k_up)
    assert "K is rounded up" in hint and "masked" in hint, hint
    assert "return " not in hint and "ceil(" not in hint and "//" not in hint


@pytest.mark.parametrize("slip", list(_SLIPS))
def test_tiled_read_bytes_slips(slip):
    hint = _hint(ch03.tiled_read_bytes, _SLIPS[slip])
    assert slip in hint, hint
    assert "return " not in hint and "ceil(" not in hint and "//" not in hint   # no code given away


def test_tiled_read_bytes_other_mistakes():
    with pytest.raises(AssertionError, match="Count the programs"):
        ch03.tiled_read_bytes(lambda M, N, K, bm, bn, s: _reads(M, N, K, bm, bn, s) + 1)
    with pytest.raises(AssertionError, match="returned None"):
        ch03.tiled_read_bytes(lambda *args: None)
    with pytest.raises(TypeError, match="expected a number"):
        ch03.tiled_read_bytes(lambda *args: "many")


def test_checks_hide_their_frames():
    for check in (ch03.critical_batch_int8, ch03.llama_up_proj_bound, ch03.tile_traffic, ch03.time_floor,
                  ch03.tiled_read_bytes):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
