"""Chapter 1's exercise checks: right answers pass, `...` is "not done yet", listed mistakes get their hint.

The right answers are worked out here as a learner would, from the spec table.
"""

import math
import re

import pytest
import torch

from infer_lib import device, hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch01
from infer_lib.exercises.ch01 import tl, triton   # stand-ins where Triton is not installed

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
    # 10 is both the rounded-down count and the count with 80 GiB per GPU: the hint names both
    # slips and does not say which way the answer lies ("one short" would give it away)
    binary = math.ceil(ch01.LLAMA_PARAMS * 2 / (H100.memory_GB * 2**30))
    for slip in {_gpus(2) - 1, binary}:
        with pytest.raises(AssertionError, match="rounding.*decimal GB") as err:
            ch01.gpus_for_weights(slip)
        assert "one short" not in str(err.value) and "round up" not in str(err.value)
    # one too many is not a GiB slip (GiB would lower the count): no GiB hint
    with pytest.raises(AssertionError, match="more GPUs than the weights need") as err:
        ch01.gpus_for_weights(_gpus(2) + 1)
    assert "GiB" not in str(err.value)
    with pytest.raises(AssertionError, match="whole number"):
        ch01.gpus_for_weights(ch01.LLAMA_PARAMS * 2 / (H100.memory_GB * 1e9))
    for slip in (_gpus(1), _gpus(4), _gpus(2) - 1, _gpus(2) + 1):   # no hint gives the answer away
        with pytest.raises(AssertionError) as err:
            ch01.gpus_for_weights(slip)
        assert not re.search(rf"\b{_gpus(2)}\b", str(err.value)), str(err.value)


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
    with pytest.raises(AssertionError, match="TF32 tensor-core peak"):
        ch01.machine_balance(H100.tf32_TFLOPs * 1e12 / (H100.bandwidth_GBps * 1e9))


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
    lowest = min(hardware.SPECS, key=lambda k: _balance_fp16(hardware.SPECS[k]))
    most_flops = max(hardware.SPECS, key=lambda k: hardware.peak_tflops(hardware.SPECS[k], torch.float16))
    hints = {lowest: "LOWEST balance", most_flops: "most FLOP/s"}
    for key, hint in hints.items():
        with pytest.raises(AssertionError, match=hint):
            ch01.highest_balance(key)
    for wrong in hardware.SPECS:
        if wrong == best:
            continue
        with pytest.raises(AssertionError) as err:
            ch01.highest_balance(wrong)
        message = str(err.value).split("is not right.", 1)[1]   # the hint, after the echoed answer
        # the hint names the slip, never the answer nor a balance that would decide it
        assert best not in message and hardware.SPECS[best].name not in message, message
        assert not re.search(r"\d{3}", message), message
    with pytest.raises(ValueError, match="not one of the options"):
        ch01.highest_balance("not_a_gpu")


# --- 1.6 -------------------------------------------------------------------------------

needs_triton = pytest.mark.skipif(not device.HAS_TRITON, reason="the kernel of Exercise 1.6 needs Triton")


@triton.jit
def _stub_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements  # noqa: F841
    raise NotImplementedError


@triton.jit
def _add_relu_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)


@triton.jit
def _no_relu_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _relu_first_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.maximum(tl.load(x_ptr + offs, mask=mask), 0.0)
    y = tl.maximum(tl.load(y_ptr + offs, mask=mask), 0.0)
    tl.store(out_ptr + offs, x + y, mask=mask)


@triton.jit
def _min_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    s = tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.minimum(s, 0.0), mask=mask)


@triton.jit
def _unmasked_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + offs)
    y = tl.load(y_ptr + offs)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0))


@triton.jit
def _unmasked_load_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs)           # the store is masked, the loads are not
    y = tl.load(y_ptr + offs)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)


@triton.jit
def _positional_mask_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    s = tl.load(x_ptr + offs, mask, other=0.0) + tl.load(y_ptr + offs, mask)
    tl.store(out_ptr + offs, tl.maximum(s, 0.0), mask=mask)


@triton.jit
def _first_block_kernel(x_ptr, y_ptr, out_ptr, n_elements, BLOCK_SIZE: tl.constexpr):
    offs = tl.arange(0, BLOCK_SIZE)   # forgets pid: every program does block 0
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)


@needs_triton
def test_add_relu_right_and_not_attempted(capsys):
    for right in (_add_relu_kernel, _positional_mask_kernel):
        assert ch01.add_relu(right) is True
        assert "✅ Exercise 1.6: correct." in capsys.readouterr().out
    for unattempted in (..., _stub_kernel):
        assert ch01.add_relu(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out, out


@needs_triton
@pytest.mark.parametrize("kernel, hint", [
    (_no_relu_kernel, "the ReLU is missing"),
    (_relu_first_kernel, "applied to the inputs before the add"),
    (_min_kernel, "not the smaller"),
    (_unmasked_kernel, "writes past the end"),
    (_unmasked_load_kernel, "2 tl.load calls have no mask.*read past the end of x and y"),
    (_first_block_kernel, "never written"),
])
def test_add_relu_slips(kernel, hint):
    with pytest.raises(AssertionError, match=hint) as err:
        ch01.add_relu(kernel)
    message = str(err.value)
    # the hint names the slip, not the code that fixes it
    assert "tl.maximum" not in message and "mask=mask" not in message, message


def test_unmasked_loads_counts_loads_without_a_mask():
    source = """
def k(x_ptr, y_ptr, offs, mask, n):
    a = tl.load(x_ptr + offs)
    b = tl.load(y_ptr + offs, mask=mask, other=0.0)
    c = tl.load(x_ptr + offs, mask)
    d = tl.load(x_ptr + offs, other=0.0)
    e = tl.load(block_ptr, boundary_check=(0,))
    tl.store(x_ptr + offs, a + b + c + d + e)
"""
    assert ch01._unmasked_loads(source) == 2
    assert ch01._unmasked_loads("") == 0 and ch01._unmasked_loads("def (") == 0
    assert ch01._unmasked_loads(ch01._source(_add_relu_kernel)) == 0
    assert ch01._unmasked_loads(ch01._source(_unmasked_load_kernel)) == 2


def test_add_relu_without_triton(monkeypatch, capsys):
    monkeypatch.setattr(ch01.device, "HAS_TRITON", False)
    assert ch01.add_relu(_add_relu_kernel) is False
    out = capsys.readouterr().out
    assert "needs Triton" in out and "✅" not in out, out
    assert ch01.add_relu(...) is False
    assert NOT_ATTEMPTED in capsys.readouterr().out


def test_checks_hide_their_frames():
    for check in (ch01.gpus_for_weights, ch01.machine_balance, ch01.decode_bound,
                  ch01.link_time, ch01.highest_balance, ch01.add_relu):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__


def test_add_relu_inputs_tell_the_slips_apart():
    # Each wrong kernel of the hints must differ from the right answer and from the
    # other wrong kernels on every case, whatever the random draw.
    for seed in range(50):
        torch.manual_seed(seed)
        for n in ch01.ADD_RELU_SIZES:
            x, y = ch01._add_relu_inputs(n)
            s = x + y
            assert (s > 0).any(), (seed, n)
            assert n == 1 or (s < 0).any(), (seed, n)
            assert n > 1 or x[0] < 0, (seed, n)
            right = torch.relu(s)
            # (one positive sum cannot tell a missing ReLU from a right one: n = 1 leaves it to the others)
            wrongs = [torch.clamp(s, max=0), torch.relu(x) + torch.relu(y), torch.relu(x) + y]
            if n > 1:
                wrongs.append(s)
            for i, wrong in enumerate(wrongs):
                assert not torch.allclose(wrong, right), (seed, n, i)
                # and the kernel that keeps the smaller is never taken for one without a ReLU
            assert not torch.allclose(torch.clamp(s, max=0), s), (seed, n)
