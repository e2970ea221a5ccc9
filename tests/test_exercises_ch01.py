"""Chapter 1's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would, from the spec table.
"""

import math
import re

import pytest
import torch

from infer_lib import hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch01

H100 = hardware.SPECS["h100_sxm"]


def _assert_not_attempted(capsys, match=""):
    """The check printed "not attempted yet" (for the part ``match`` names) and raised nothing."""
    lines = [line for line in capsys.readouterr().out.splitlines() if NOT_ATTEMPTED in line]
    assert lines and any(re.search(match, line) for line in lines), lines


def _gpus(bytes_per_param):
    return math.ceil(ch01.LLAMA_PARAMS * bytes_per_param / (H100.memory_GB * 1e9))


def _balance_bf16():
    return H100.bf16_TFLOPs * 1e12 / (H100.bandwidth_GBps * 1e9)


def _token_ms(bytes_per_param=2):
    return ch01.PARAMS_7B * bytes_per_param / (H100.bandwidth_GBps * 1e9) * 1e3


def _link_ms(bidirectional_GBps, one_way=True):
    gbps = bidirectional_GBps / 2 if one_way else bidirectional_GBps
    return ch01.NBYTES / (gbps * 1e9) * 1e3


def _balance_fp16(spec):
    return hardware.peak_tflops(spec, torch.float16) * 1e12 / (spec.bandwidth_GBps * 1e9)


def _most_starved():
    return max(hardware.SPECS, key=lambda k: _balance_fp16(hardware.SPECS[k]))


# --- 1.1 -------------------------------------------------------------------------------

def test_gpus_for_weights(capsys):
    ch01.gpus_for_weights(_gpus(2))
    assert "✅ Exercise 1.1: correct." in capsys.readouterr().out
    ch01.gpus_for_weights(...)
    _assert_not_attempted(capsys, "replace the `...`")
    with pytest.raises(AssertionError, match="counts 1 byte per parameter"):
        ch01.gpus_for_weights(_gpus(1))
    with pytest.raises(AssertionError, match=r"counts 4 bytes per parameter \(fp32\)"):
        ch01.gpus_for_weights(_gpus(4))
    with pytest.raises(AssertionError, match="round up"):
        ch01.gpus_for_weights(_gpus(2) - 1)


# --- 1.2 -------------------------------------------------------------------------------

def test_machine_balance(capsys):
    ch01.machine_balance(_balance_bf16())
    assert "✅ Exercise 1.2: correct." in capsys.readouterr().out
    ch01.machine_balance(...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match="sparse peak"):
        ch01.machine_balance(2 * _balance_bf16())
    with pytest.raises(AssertionError, match="plain FP32 peak"):
        ch01.machine_balance(H100.fp32_TFLOPs * 1e12 / (H100.bandwidth_GBps * 1e9))


# --- 1.3 -------------------------------------------------------------------------------

def test_decode_bound(capsys):
    ms = _token_ms()
    ch01.decode_bound(ms, 1e3 / ms)
    out = capsys.readouterr().out
    assert "✅ Exercise 1.3 (time per token): correct." in out
    assert "✅ Exercise 1.3 (tokens/s): correct." in out
    ch01.decode_bound(..., ...)
    _assert_not_attempted(capsys)
    ch01.decode_bound(ms, ...)
    _assert_not_attempted(capsys, r"tokens/s")
    with pytest.raises(AssertionError, match=r"time per token.*counts 1 byte per parameter"):
        ch01.decode_bound(_token_ms(1), 1e3 / _token_ms(1))
    with pytest.raises(AssertionError, match=r"tokens/s.*counts 1 byte per parameter"):
        ch01.decode_bound(ms, 1e3 / _token_ms(1))


# --- 1.4 -------------------------------------------------------------------------------

def test_link_time(capsys):
    nvlink, pcie = _link_ms(H100.nvlink_GBps), _link_ms(H100.pcie_GBps)
    ch01.link_time(nvlink, pcie)
    out = capsys.readouterr().out
    assert "✅ Exercise 1.4 (NVLink): correct." in out and "✅ Exercise 1.4 (PCIe): correct." in out
    ch01.link_time(..., ...)
    _assert_not_attempted(capsys)
    with pytest.raises(AssertionError, match=r"NVLink.*sum of both directions"):
        ch01.link_time(_link_ms(H100.nvlink_GBps, one_way=False), pcie)
    with pytest.raises(AssertionError, match=r"PCIe.*sum of both directions"):
        ch01.link_time(nvlink, _link_ms(H100.pcie_GBps, one_way=False))


# --- 1.5 -------------------------------------------------------------------------------

def test_highest_balance(capsys):
    best = _most_starved()
    ch01.highest_balance(best)
    assert "✅ Exercise 1.5: correct." in capsys.readouterr().out
    ch01.highest_balance(...)
    _assert_not_attempted(capsys)
    wrong = next(k for k in hardware.SPECS if k != best)
    with pytest.raises(AssertionError, match=re.escape(hardware.SPECS[wrong].name) + " does .* another GPU does more"):
        ch01.highest_balance(wrong)
    with pytest.raises(ValueError, match="not one of the options"):
        ch01.highest_balance("not_a_gpu")


def test_checks_hide_their_frames():
    for check in (ch01.gpus_for_weights, ch01.machine_balance, ch01.decode_bound,
                  ch01.link_time, ch01.highest_balance):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
