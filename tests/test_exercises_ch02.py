"""Chapter 2's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here by hand, as a learner would, from the spec table —
not with ``infer_lib.roofline``, which the checks themselves use.
"""

import itertools
import math
import random
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


def _assert_no_number(message, *values):
    """The hint gives none of ``values`` away, in any usual rounding."""
    for v in values:
        for text in {f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3g}", f"{v:g}", f"{v:,.0f}"}:
            assert not re.search(rf"(?<![\d.,]){re.escape(text)}(?![\d.,]\d)", message), (text, message)


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
    # the chapter teaches "intensity ≈ B" (weights only): within the stated tolerance
    ch02.decode_intensity(ch02.DECODE_BATCH)
    ch02.decode_intensity(2 * ch02.DECODE_BATCH * ch02.DECODE_D**2 / ((ch02.DECODE_D**2 + ch02.DECODE_BATCH * ch02.DECODE_D) * BF16))
    assert capsys.readouterr().out.count("✅ Exercise 2.1: correct.") == 2
    ch02.decode_intensity(...)
    _assert_not_attempted(capsys, "replace the `...`")
    slips = [(_linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D, flops_per_mac=1), "multiply-add is 2 FLOPs"),
             (_linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D, nbytes=4), "multiply-add is 2 FLOPs"),
             (_linear_intensity(ch02.DECODE_BATCH, ch02.DECODE_D, nbytes=1), "elements, not bytes"),
             (100.0, "too large"), (3.0, "too small")]
    for answer, hint in slips:
        with pytest.raises(AssertionError, match=hint) as err:
            ch02.decode_intensity(answer)
        _assert_no_number(str(err.value), right)
        assert "factor of 3" not in str(err.value)   # the generic ratio would give the answer away


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
    assert f"{intensity:.0f} FLOP/byte" in out   # the numbers come once both are right
    ch02.linear_bound(..., ...)
    _assert_not_attempted(capsys)
    ch02.linear_bound("compute", ...)
    out = capsys.readouterr().out
    assert NOT_ATTEMPTED in out and "FLOP/byte" not in out   # half right: nothing that decides the other
    for answers, match in ((("memory", "memory"), r"A100 SXM4 80GB.*multiply-add.*own HBM bandwidth.*ridge is lower"),
                           (("compute", "compute"), r"A100 SXM4 40GB.*bytes, not elements")):
        with pytest.raises(AssertionError, match=match) as err:
            ch02.linear_bound(*answers)
        _assert_no_number(str(err.value), intensity, balance_80, balance_40)
        assert "FLOP/byte" not in capsys.readouterr().out
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
    compute_us = ch02.NORM_FLOPS * elements / (h200.fp32_TFLOPs * 1e12) * 1e6   # CUDA cores
    tensor_us = ch02.NORM_FLOPS * elements / (h200.bf16_TFLOPs * 1e12) * 1e6    # the wrong roof
    assert memory_us > 10 * compute_us                 # memory-bound on the CUDA-core roof too
    ch02.rms_norm_floor(memory_us)
    out = capsys.readouterr().out
    assert "✅ Exercise 2.4: correct." in out and "CUDA cores" in out
    ch02.rms_norm_floor(...)
    _assert_not_attempted(capsys)
    slips = [(compute_us, "compute time"), (tensor_us, "tensor cores"), (memory_us / 2, "only the read"),
             (memory_us * 2, "4 bytes per element"), (memory_us * 1.024**3, "not 2\\*\\*30"),
             (memory_us + compute_us, "compute time plus memory time"),   # summed the two
             (traffic / (H100.bandwidth_GBps * 1e9) * 1e6, "H100 SXM5 80GB's bandwidth"),
             (memory_us / 1e3, "factor of 1000"),           # answered in ms
             (memory_us * 3, "too large")]
    for answer, hint in slips:
        with pytest.raises(AssertionError, match=hint) as err:
            ch02.rms_norm_floor(answer)
        _assert_no_number(str(err.value), memory_us)


# --- 2.5 (coding) ----------------------------------------------------------------------

def _time_us(batch, M, N, K, s, peak_tflops, bandwidth_gbps):
    flops = batch * 2 * M * N * K
    nbytes = batch * (M * K + K * N + M * N) * s
    return max(flops / (peak_tflops * 1e12), nbytes / (bandwidth_gbps * 1e9)) * 1e6


FIXED_CASES = [(4, 1, 4097, 4097, 2, 989.5, 3350.0),     # memory-bound (decode-like)
               (3, 4095, 4095, 4095, 2, 989.5, 3350.0),  # compute-bound
               (17, 333, 1025, 77, 4, 312.0, 1555.0), (5, 2049, 9, 3001, 1, 121.0, 300.0)]


def test_batched_matmul_time_reference_is_the_formula():
    for case in ch02._cases(random.Random(0)) + FIXED_CASES:
        assert ch02._batched_matmul_time_us_ref(*case) == pytest.approx(_time_us(*case), rel=1e-12)
    kinds = {math.isclose(_time_us(*c), c[0] * 2 * c[1] * c[2] * c[3] / (c[5] * 1e6)) for c in ch02._cases()}
    assert kinds == {True, False}                       # the cases are memory- and compute-bound


def test_batched_matmul_time(capsys, monkeypatch):
    ch02.batched_matmul_time(_time_us)    # the check's own (seeded) cases
    assert "✅ Exercise 2.5: correct." in capsys.readouterr().out

    def stub(batch, M, N, K, bytes_per_element, peak_tflops, bandwidth_gbps):
        raise NotImplementedError

    ch02.batched_matmul_time(stub)
    _assert_not_attempted(capsys, "write the function")
    ch02.batched_matmul_time(...)
    _assert_not_attempted(capsys)

    monkeypatch.setattr(ch02, "_cases", lambda rng=None: list(FIXED_CASES))
    expected = [_time_us(*c) for c in FIXED_CASES]

    def slip(flops=lambda b, M, N, K: 2 * b * M * N * K, nbytes=lambda b, M, N, K, s: b * (M * K + K * N + M * N) * s,
             combine=max, scale=1.0):
        def fn(b, M, N, K, s, p, bw):
            return combine(flops(b, M, N, K) / (p * 1e12), nbytes(b, M, N, K, s) / (bw * 1e9)) * 1e6 * scale
        return fn

    slips = [
        (slip(flops=lambda b, M, N, K: 2 * M * N * K, nbytes=lambda b, M, N, K, s: (M * K + K * N + M * N) * s),
         "counts one product"),
        (slip(flops=lambda b, M, N, K: 2 * M * N * K), "FLOPs leave out `batch`"),
        (slip(nbytes=lambda b, M, N, K, s: (M * K + K * N + M * N) * s), "bytes leave out `batch`"),
        (slip(flops=lambda b, M, N, K: b * M * N * K), "multiply-add counts as 2 FLOPs"),
        (slip(nbytes=lambda b, M, N, K, s: b * (M * K + K * N + M * N)), "elements, not bytes"),
        (slip(nbytes=lambda b, M, N, K, s: b * (M * K + K * N + M * N) * 2), "assumes 2 bytes"),
        (slip(nbytes=lambda b, M, N, K, s: b * (M * K + K * N) * s), "output is written"),
        (slip(nbytes=lambda b, M, N, K, s: (b * M * K + K * N + b * M * N) * s), "its own"),
        (slip(combine=lambda c, m: c + m), "larger of the two"),
        (slip(combine=min), "smaller of"),
        (slip(combine=lambda c, m: m), "memory time only"),
        (slip(combine=lambda c, m: c), "compute time only"),
        (slip(scale=1e-6), "in seconds"),
        (slip(scale=1e-3), "in milliseconds"),
        (slip(nbytes=lambda b, M, N, K, s: b * (M * K + K * N + M * N) * s * 3), "memory-bound case"),
        (slip(flops=lambda b, M, N, K: 6 * b * M * N * K), "compute-bound case"),
        (lambda *args: None, "returned None"),
    ]
    for fn, hint in slips:
        with pytest.raises(AssertionError, match=hint) as err:
            ch02.batched_matmul_time(fn)
        _assert_no_number(str(err.value), *expected)
        assert "def " not in str(err.value) and "expected" not in str(err.value)


def _slip_values(cases):
    """Each named slip's values on ``cases``, and the right ones and the unit slips'."""
    values = {"right": [_time_us(*c) for c in cases]}
    for name, combine, opts, _ in ch02._SLIPS:
        values[name] = [combine(*ch02._parts(*c, **opts)) for c in cases]
    for factor, unit in ch02._UNIT_SLIPS:
        values[unit] = [v * factor for v in values["right"]]
    return values


def test_batched_matmul_time_cases_are_fixed_and_tell_the_slips_apart():
    cases = ch02._cases()
    assert cases == ch02._cases() == ch02._cases(random.Random(ch02.CASES_SEED))
    for these in (cases, FIXED_CASES):
        values = _slip_values(these)
        for a, b in itertools.combinations(values, 2):   # each pair differs by 5% somewhere
            assert not all(math.isclose(x, y, rel_tol=0.05) for x, y in zip(values[a], values[b])), (a, b)


def test_batched_matmul_time_forgotten_batch_gets_the_same_hint_every_run():
    def no_batch_in_flops(b, M, N, K, s, p, bw):
        return max(2 * M * N * K / (p * 1e12), b * (M * K + K * N + M * N) * s / (bw * 1e9)) * 1e6

    messages = set()
    for _ in range(3):
        with pytest.raises(AssertionError, match="FLOPs leave out `batch`") as err:
            ch02.batched_matmul_time(no_batch_in_flops)
        messages.add(str(err.value))
    assert len(messages) == 1, messages


def test_checks_hide_their_frames():
    for check in (ch02.decode_intensity, ch02.linear_bound, ch02.fusion, ch02.rms_norm_floor,
                  ch02.batched_matmul_time):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
