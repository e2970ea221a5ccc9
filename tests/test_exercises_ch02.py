"""Chapter 2's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here by hand, as a learner would, from the spec table —
not with ``infer_lib.roofline``, which the checks themselves use.
"""

import re

import pytest

from infer_lib import hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch02

H100 = hardware.SPECS["h100_sxm"]
A100 = hardware.SPECS["a100_40gb"]
BF16 = 2  # bytes


def _assert_not_attempted(capsys, match=""):
    """The check printed "not attempted yet" (for the part ``match`` names) and raised nothing."""
    lines = [line for line in capsys.readouterr().out.splitlines() if NOT_ATTEMPTED in line]
    assert lines and any(re.search(match, line) for line in lines), lines


def _linear_intensity(batch, d, flops_per_mac=2, nbytes=BF16):
    flops = flops_per_mac * batch * d * d
    traffic = (batch * d + d * d + batch * d) * nbytes   # read X and W, write Y
    return flops / traffic


# --- 2.1 -------------------------------------------------------------------------------

def test_decode_intensity(capsys):
    right = _linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D)
    assert 0.95 * ch02.DECODE_BATCH < right < ch02.DECODE_BATCH   # about B, a little under: X and Y add bytes
    ch02.decode_intensity(right)
    assert "✅ Exercise 2.1: correct." in capsys.readouterr().out
    ch02.decode_intensity(...)
    _assert_not_attempted(capsys, "replace the `...`")
    with pytest.raises(AssertionError, match="multiply-add is 2 FLOPs"):
        ch02.decode_intensity(_linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D, flops_per_mac=1))
    with pytest.raises(AssertionError, match="multiply-add is 2 FLOPs"):
        ch02.decode_intensity(_linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D, nbytes=4))
    with pytest.raises(AssertionError, match="elements, not bytes"):
        ch02.decode_intensity(_linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D, nbytes=1))
    with pytest.raises(AssertionError, match="too large"):
        ch02.decode_intensity(100.0)


# --- 2.2 -------------------------------------------------------------------------------

def test_linear_bound(capsys):
    intensity = _linear_intensity(ch02.BATCH, ch02.D_MODEL)
    a100_80 = hardware.SPECS["a100_80gb"]
    balance_80 = a100_80.bf16_TFLOPs * 1e12 / (a100_80.bandwidth_GBps * 1e9)   # ≈ 153
    balance_40 = A100.bf16_TFLOPs * 1e12 / (A100.bandwidth_GBps * 1e9)         # ≈ 201
    assert balance_80 < intensity < balance_40    # the point of the exercise: same chip, more bandwidth
    ch02.linear_bound("compute", "memory")
    out = capsys.readouterr().out
    assert "✅ Exercise 2.2 (A100 SXM4 80GB): correct." in out
    assert "✅ Exercise 2.2 (A100 SXM4 40GB): correct." in out
    ch02.linear_bound(..., ...)
    _assert_not_attempted(capsys)
    ch02.linear_bound("compute", ...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match=r"A100 SXM4 80GB.*machine balance"):
        ch02.linear_bound("memory", "memory")
    with pytest.raises(AssertionError, match=r"A100 SXM4 40GB.*machine balance"):
        ch02.linear_bound("compute", "compute")
    with pytest.raises(ValueError, match="not one of the options"):
        ch02.linear_bound("latency", "compute")


# --- 2.3 -------------------------------------------------------------------------------

def test_fusion(capsys):
    n = ch02.TOKENS * ch02.D_FF
    unfused = (2 + 3) * n * BF16   # silu: read gate, write s; mul: read s and up, write out
    fused = 3 * n * BF16           # read gate and up, write out
    ch02.fusion(unfused, fused, unfused / fused)
    out = capsys.readouterr().out
    for part in ("bytes, two kernels", "bytes, fused", "speed-up"):
        assert f"✅ Exercise 2.3 ({part}): correct." in out
    ch02.fusion(..., ..., ...)
    _assert_not_attempted(capsys)
    ch02.fusion(unfused, fused, ...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match="intermediate"):
        ch02.fusion(4 * n * BF16, fused, 4 / 3)
    with pytest.raises(AssertionError, match="reads both gate and up"):
        ch02.fusion(unfused, 2 * n * BF16, 5 / 2)
    with pytest.raises(AssertionError, match="fused ÷ unfused"):
        ch02.fusion(unfused, fused, fused / unfused)
    with pytest.raises(AssertionError, match=r"bytes, two kernels.*factor of 2"):
        ch02.fusion(2 * unfused, fused, unfused / fused)   # fp32 bytes


# --- 2.4 -------------------------------------------------------------------------------

def test_rms_norm_floor(capsys):
    h200 = hardware.SPECS["h200"]
    elements = ch02.TOKENS_NORM * ch02.D_NORM
    traffic = 2 * elements * BF16                      # read once, write once
    memory_us = traffic / (h200.bandwidth_GBps * 1e9) * 1e6
    compute_us = ch02.NORM_FLOPS * elements / (h200.bf16_TFLOPs * 1e12) * 1e6
    assert memory_us > 100 * compute_us                # memory-bound by far
    ch02.rms_norm_floor(memory_us)
    assert "✅ Exercise 2.4: correct." in capsys.readouterr().out
    ch02.rms_norm_floor(...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match="compute time"):
        ch02.rms_norm_floor(compute_us)
    with pytest.raises(AssertionError, match="only the read"):
        ch02.rms_norm_floor(memory_us / 2)
    with pytest.raises(AssertionError, match="4 bytes per element"):
        ch02.rms_norm_floor(memory_us * 2)
    with pytest.raises(AssertionError, match="H100 SXM5 80GB's bandwidth"):
        ch02.rms_norm_floor(traffic / (H100.bandwidth_GBps * 1e9) * 1e6)
    with pytest.raises(AssertionError, match="factor of 1000"):
        ch02.rms_norm_floor(memory_us / 1e3)            # answered in ms


def test_checks_hide_their_frames():
    for check in (ch02.decode_intensity, ch02.linear_bound, ch02.fusion, ch02.rms_norm_floor):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
