"""Checks for chapter 1's exercises.

Each check computes its expected answer from the spec table (``hardware.SPECS``),
so the reader's cell does not give it away. The only numbers typed here are the
exercises' given inputs, named as in the exercise text. A check prints ✅ when the
answer is right, prints "not attempted yet" (and raises nothing) while it is still
``...``, and raises ``AssertionError`` with a hint when it is wrong. A hint names the
kind of slip, never the expected value nor the quantities that decide it.

Exercise 1.6 is a Triton kernel: ``triton`` and ``tl`` below are the real modules
where Triton is installed, and stand-ins that only let the reader's cell define
the kernel where it is not (the check then says the exercise needs Triton).
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
import types

import torch

from .. import device, hardware
from . import _not_attempted, check_choice, check_function, check_number, check_part

if device.HAS_TRITON:
    import triton
    import triton.language as tl
else:  # stand-ins: enough for `@triton.jit` and `BLOCK_SIZE: tl.constexpr` to be defined
    triton = types.SimpleNamespace(jit=lambda fn=None, **_: fn if fn is not None else (lambda f: f))
    tl = types.SimpleNamespace(constexpr=int)

GPU = "h100_sxm"      # the GPU of Exercises 1.1-1.4
LLAMA_PARAMS = 405e9  # Exercise 1.1: Llama 3.1 405B
PARAMS_7B = 7e9       # Exercise 1.3: a 7-billion-parameter model
BF16_BYTES = 2        # Exercises 1.1 and 1.3: bytes per bf16 parameter
NBYTES = 1e9          # Exercise 1.4: 1 GB, in one direction


def _wrap(text: str) -> str:
    """An explanation on its own lines under the ✅ line, wrapped to fit 100 characters."""
    return "\n" + textwrap.fill(text, 100, initial_indent="   ", subsequent_indent="   ")


def gpus_for_weights(answer) -> None:
    """Exercise 1.1: H100 SXM GPUs needed to hold Llama 3.1 405B's weights in bf16, with the
    datasheet's capacity taken at face value in decimal GB (``memory_GB`` × 1e9 bytes), as the
    exercise says. (The 80 GB are nominally binary, 80 GiB; read so, the count can only fall.)"""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    exact = LLAMA_PARAMS * BF16_BYTES / (h100.memory_GB * 1e9)
    binary = LLAMA_PARAMS * BF16_BYTES / (h100.memory_GB * 2**30)
    mistakes = [(math.ceil(exact / BF16_BYTES), "that counts 1 byte per parameter; bf16 takes 2 bytes"),
                (math.ceil(exact * 2), "that counts 4 bytes per parameter (fp32); bf16 takes 2 bytes"),
                (math.ceil(exact) + 1, "that is more GPUs than the weights need: recheck the division, "
                                       "and round up only the fraction left over (the weights alone, "
                                       "no room for anything else)")]
    # Rounding down and reading the capacity as GiB can give the same count: one hint names both,
    # without saying which way the right answer lies.
    neutral = ("recheck two things: the rounding (a fraction of a GPU's worth still takes a whole "
               "GPU) and the exercise's convention, the datasheet's capacity taken as decimal GB "
               "(1e9 bytes each)")
    mistakes += [(value, neutral) for value in {math.floor(exact), math.ceil(binary),
                                                math.floor(binary)} if value != math.ceil(exact)]
    check_number(
        answer, math.ceil(exact), name="Exercise 1.1", unit="GPUs", integer=True, mistakes=mistakes,
        explain=_wrap(f"{exact:.2f} GPUs' worth of memory means {math.ceil(exact)} GPUs: more than "
                      "one 8-GPU node, before a single byte of KV cache."))


def machine_balance(answer) -> None:
    """Exercise 1.2: the H100 SXM's dense bf16 machine balance, in FLOP per byte."""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    balance_bf16 = h100.bf16_TFLOPs * 1e12 / (h100.bandwidth_GBps * 1e9)
    check_number(
        answer, balance_bf16, name="Exercise 1.2", unit="FLOP/byte",
        mistakes=[(2 * balance_bf16, "that uses the sparse peak (2:4 sparsity), twice the dense one; "
                                     "ordinary matmuls get the dense figure"),
                  (h100.fp32_TFLOPs * 1e12 / (h100.bandwidth_GBps * 1e9),
                   "that is the plain FP32 peak; the question asks for bf16 on tensor cores"),
                  (h100.tf32_TFLOPs * 1e12 / (h100.bandwidth_GBps * 1e9),
                   "that is the TF32 tensor-core peak; the question asks for bf16, which the tensor "
                   "cores run faster")],
        explain=_wrap(f"An operation must do about {balance_bf16:.0f} FLOPs per byte it moves to keep "
                      "the tensor cores busy; below that it is memory-bound."))


def decode_bound(time_ms, tokens_per_s) -> None:
    """Exercise 1.3: least time per token (ms) and most tokens/s of batch-1 decoding
    of a 7B-parameter bf16 model on an H100 SXM, set by HBM bandwidth alone."""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    min_ms = PARAMS_7B * BF16_BYTES / (h100.bandwidth_GBps * 1e9) * 1e3
    check_part(check_number, time_ms, min_ms, name="Exercise 1.3 (time per token)", unit="ms",
          mistakes=[(min_ms / BF16_BYTES, "that counts 1 byte per parameter; bf16 takes 2")])
    check_part(check_number, tokens_per_s, 1e3 / min_ms, name="Exercise 1.3 (tokens/s)",
          unit="tokens/s",
          mistakes=[(BF16_BYTES * 1e3 / min_ms, "that counts 1 byte per parameter; bf16 takes 2")],
          explain=_wrap("A bound set by bandwidth alone: batch-1 decoding is memory-bound. "
                        "Chapter 9 measures how close a real decoder gets."))


def link_time(nvlink_ms, pcie_ms) -> None:
    """Exercise 1.4: ms to move 1 GB one way over NVLink and over PCIe to/from an H100 SXM."""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    one_way = {"NVLink": h100.nvlink_GBps / 2, "PCIe": h100.pcie_GBps / 2}   # the table is bidirectional
    expected_ms = {link: NBYTES / (gbps * 1e9) * 1e3 for link, gbps in one_way.items()}
    half = "the table's figure is the sum of both directions; one direction gets half of it"
    check_part(check_number, nvlink_ms, expected_ms["NVLink"], name="Exercise 1.4 (NVLink)",
          unit="ms", mistakes=[(expected_ms["NVLink"] / 2, half)])
    check_part(check_number, pcie_ms, expected_ms["PCIe"], name="Exercise 1.4 (PCIe)", unit="ms",
          mistakes=[(expected_ms["PCIe"] / 2, half)],
          explain=_wrap(f"PCIe is {expected_ms['PCIe'] / expected_ms['NVLink']:.0f}x slower: "
                        "data that must cross it during inference costs dearly."))


def _balance_fp16(spec: hardware.GPUSpec) -> float:
    return hardware.peak_tflops(spec, torch.float16) * 1e12 / (spec.bandwidth_GBps * 1e9)


def _balance_hints() -> dict[str, str]:
    """For each wrong key, the kind of slip it suggests, without any GPU's balance."""
    specs = hardware.SPECS
    fp16 = {k: hardware.peak_tflops(s, torch.float16) for k, s in specs.items()}
    most_flops = {k for k in specs if fp16[k] == max(fp16.values())}
    least_bw = {k for k in specs if specs[k].bandwidth_GBps == min(s.bandwidth_GBps for s in specs.values())}
    lowest = min(specs, key=lambda k: _balance_fp16(specs[k]))
    hints = {}
    for key in specs:
        if key == lowest:
            hints[key] = ("that GPU has the LOWEST balance, the most bandwidth per FLOP: did you divide "
                          "bandwidth by FLOP/s, or take the minimum?")
        elif key in most_flops:
            hints[key] = ("that GPU has the most FLOP/s, but the balance divides them by the bandwidth, "
                          "and it has plenty of that; compute the ratio for every row.")
        elif key in least_bw:
            hints[key] = ("that GPU has the least bandwidth, but also few FLOP/s; the ratio, not either "
                          "number alone, decides. Compute it for every row.")
        else:
            hints[key] = ("another GPU does more dense 16-bit FLOPs per byte; compute the ratio for every "
                          "row (fp16 on tensor cores, dense, TFLOP/s x 1e12 / (GB/s x 1e9)) and compare.")
    return hints


def highest_balance(answer) -> None:
    """Exercise 1.5: the key of the GPU in ``hardware.SPECS`` with the highest dense fp16 machine balance."""
    __tracebackhide__ = True
    most_starved = max(hardware.SPECS, key=lambda key: _balance_fp16(hardware.SPECS[key]))
    top = hardware.SPECS[most_starved]
    check_choice(
        answer, most_starved, name="Exercise 1.5", options=list(hardware.SPECS), why=_balance_hints(),
        explain=_wrap(f"The {top.name} does {_balance_fp16(top):.0f} "
                      "FLOP per byte: fine for compute-bound work, slow at memory-bound decoding."))


# --- Exercise 1.6: a fused add + ReLU kernel ----------------------------------------------

#: the check's block size (the reader's kernel takes it as its BLOCK_SIZE constexpr)
ADD_RELU_BLOCK = 256
#: element counts of the check: odd, one below a block, one past a block, several blocks and a tail
ADD_RELU_SIZES = (1, ADD_RELU_BLOCK + 1, 3 * ADD_RELU_BLOCK - 23)
_OUT_PAD = -7.0   # a ReLU never writes a negative number: padding that changes was written


def _add_relu_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max(x + y, 0)``, elementwise: the reference of Exercise 1.6."""
    return torch.relu(x + y)


def _add_relu_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh random ``x, y`` of ``n`` elements whose sums have both signs whenever
    ``n`` ≥ 2 (one positive sum of a negative ``x`` when ``n`` = 1), so that each
    wrong kernel of the hints differs from the others (a kernel that keeps the
    smaller of the sum and 0 would pass for one with no ReLU on sums that are all
    negative)."""
    x, y = torch.randn(n, device=device.DEVICE), torch.randn(n, device=device.DEVICE)
    if n == 1:   # x < 0 < x + y: no wrong kernel of the hints gives the right answer
        x[0] = -x[0].abs() - 0.1
        y[0] = -x[0] + y[0].abs() + 0.1
    elif n >= 2:
        s = x + y
        x[0] += 1.0 - s[0] if s[0] <= 0 else 0.0       # sum 1: positive
        x[1] += -1.0 - s[1] if s[1] >= 0 else 0.0      # sum -1: negative
    return x, y


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=1e-6, rtol=1e-5))


def _launch_add_relu(kernel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Run the reader's kernel on ``x`` and ``y``; raise with a hint on the usual slips.

    The buffers are one block longer than ``n``, so a load or store that forgets its
    mask lands in padding the check owns instead of crashing the process: a store there
    shows in ``out``'s padding, a load only in the kernel's source (``_unmasked_loads``)."""
    __tracebackhide__ = True
    n, pad = x.numel(), ADD_RELU_BLOCK
    xb = torch.cat([x, torch.full((pad,), -1.0, dtype=x.dtype, device=x.device)])
    yb = torch.cat([y, torch.full((pad,), -1.0, dtype=y.dtype, device=y.device)])
    outb = torch.full((n + pad,), _OUT_PAD, dtype=x.dtype, device=x.device)
    outb[:n] = float("nan")                      # poisoned: an element never written stays NaN
    try:
        kernel[(triton.cdiv(n, ADD_RELU_BLOCK),)](xb, yb, outb, n, BLOCK_SIZE=ADD_RELU_BLOCK)
    except NotImplementedError:
        raise
    except Exception as err:                     # the interpreter wraps what the kernel raised
        if "NotImplementedError" in f"{type(err).__name__}: {err}":
            raise NotImplementedError from None
        raise
    out = outb[:n]
    sizes = f"on {n} element{'s' if n != 1 else ''} in blocks of {ADD_RELU_BLOCK}"
    if (outb[n:] != _OUT_PAD).any():
        raise AssertionError(f"Exercise 1.6: {sizes}, the kernel writes past the end of `out`: "
                             "the last block is partly outside the tensor. Which argument of tl.store "
                             "switches those lanes off?")
    unmasked = _unmasked_loads(_source(kernel))
    if unmasked:
        which = "a tl.load has" if unmasked == 1 else f"{unmasked} tl.load calls have"
        raise AssertionError(f"Exercise 1.6: {which} no mask. The last block is partly outside "
                             "the tensors, so on a GPU its unmasked loads read past the end of x "
                             "and y (here the check's padding hid it; on a GPU it reads whatever "
                             "lies beyond, or faults). Which argument of tl.load switches those "
                             "lanes off?")
    if out.isnan().any():
        raise AssertionError(f"Exercise 1.6: {sizes}, some elements of `out` are never written (they "
                             "still hold the NaN the check filled it with). Does every program store "
                             "its whole block, at its own offsets?")
    if _close(out, _add_relu_ref(x, y)):
        return out
    if _close(out, x + y):
        raise AssertionError("Exercise 1.6: negative sums come out negative: the ReLU is missing.")
    if any(_close(out, wrong) for wrong in (torch.relu(x) + torch.relu(y), torch.relu(x) + y,
                                            x + torch.relu(y))):
        raise AssertionError("Exercise 1.6: the ReLU is applied to the inputs before the add; "
                             "it belongs on the sum.")
    if _close(out, torch.clamp(x + y, max=0)):
        raise AssertionError("Exercise 1.6: positive sums come out as 0 and negative ones survive: "
                             "the ReLU keeps the larger of the sum and 0, not the smaller.")
    return out


def _source(kernel) -> str:
    """The source of the reader's kernel (a @triton.jit function or a plain one), or ''."""
    try:
        return inspect.getsource(getattr(kernel, "fn", kernel))
    except (OSError, TypeError):
        return ""


def _unmasked_loads(source: str) -> int:
    """How many ``tl.load`` calls of ``source`` have neither a mask (keyword or second
    positional argument) nor a ``boundary_check`` (block pointers); 0 if it does not parse.

    The check pads ``x`` and ``y``, so an unmasked load of the last block reads the padding
    and the output still comes out right: only the source shows the slip."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except (SyntaxError, ValueError):
        return 0
    count = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name != "load":
            continue
        keywords = {k.arg for k in node.keywords}
        if len(node.args) < 2 and not keywords & {"mask", "boundary_check", None}:
            count += 1
    return count


def add_relu(kernel) -> bool:
    """Exercise 1.6: a Triton kernel computing ``out = max(x + y, 0)``, checked against
    ``_add_relu_ref`` on fresh random fp32 inputs of odd sizes."""
    __tracebackhide__ = True
    name = "Exercise 1.6"
    if kernel is ... or kernel is None:
        return _not_attempted(name, "write the kernel's body")
    if "raise NotImplementedError" in _source(kernel):
        return _not_attempted(name, "write the kernel's body")
    if not device.HAS_TRITON:
        print(f"⏭ {name} needs Triton, which is not installed here (there are no Triton wheels\n"
              "   for macOS): run it on Linux or in Colab.")
        return False
    if not hasattr(kernel, "__getitem__"):
        raise TypeError(f"{name}: pass the kernel itself, the function decorated with @triton.jit, "
                        f"not {type(kernel).__name__} {kernel!r}")
    cases = [_add_relu_inputs(n) for n in ADD_RELU_SIZES]
    return check_function(
        lambda x, y: _launch_add_relu(kernel, x, y), _add_relu_ref, cases, name=name,
        explain=_wrap("One read of x and y, one write of out: the ReLU costs no extra trip to HBM, "
                      "which two separate kernels (an add, then a ReLU) would."))
