"""Checks for chapter 1's exercises.

Each check computes its expected answer from the spec table (``hardware.SPECS``),
so the reader's cell does not give it away. The only numbers typed here are the
exercises' given inputs, named as in the exercise text. A check prints ✅ when the
answer is right, raises ``NotImplementedError`` while it is still ``...``, and
``AssertionError`` with a hint when it is wrong.
"""

from __future__ import annotations

import math

import torch

from .. import hardware
from . import check_choice, check_number

GPU = "h100_sxm"      # the GPU of Exercises 1.1-1.4
LLAMA_PARAMS = 405e9  # Exercise 1.1: Llama 3.1 405B
PARAMS_7B = 7e9       # Exercise 1.3: a 7-billion-parameter model
BF16_BYTES = 2        # Exercises 1.1 and 1.3: bytes per bf16 parameter
NBYTES = 1e9          # Exercise 1.4: 1 GB, in one direction


def gpus_for_weights(answer) -> None:
    """Exercise 1.1: H100 SXM GPUs needed to hold Llama 3.1 405B's weights in bf16."""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    exact = LLAMA_PARAMS * BF16_BYTES / (h100.memory_GB * 1e9)
    check_number(
        answer, math.ceil(exact), name="Exercise 1.1", unit="GPUs", integer=True,
        mistakes=[(math.ceil(exact / BF16_BYTES), "that counts 1 byte per parameter; bf16 takes 2 bytes"),
                  (math.ceil(exact * 2), "that counts 4 bytes per parameter (fp32); bf16 takes 2 bytes")],
        explain=f"{exact:.2f} GPUs' worth of memory means {math.ceil(exact)} GPUs: more than one 8-GPU node, "
                "before a single byte of KV cache.")


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
                   "that is the plain FP32 peak; the question asks for bf16 on tensor cores")],
        explain=f"An operation must do about {balance_bf16:.0f} FLOPs per byte it moves to keep the tensor "
                "cores busy; below that it is memory-bound.")


def decode_bound(time_ms, tokens_per_s) -> None:
    """Exercise 1.3: least time per token (ms) and most tokens/s of batch-1 decoding
    of a 7B-parameter bf16 model on an H100 SXM, set by HBM bandwidth alone."""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    min_ms = PARAMS_7B * BF16_BYTES / (h100.bandwidth_GBps * 1e9) * 1e3
    check_number(time_ms, min_ms, name="Exercise 1.3 (time per token)", unit="ms",
                 mistakes=[(min_ms / BF16_BYTES, "that counts 1 byte per parameter; bf16 takes 2")])
    check_number(tokens_per_s, 1e3 / min_ms, name="Exercise 1.3 (tokens/s)", unit="tokens/s",
                 mistakes=[(BF16_BYTES * 1e3 / min_ms, "that counts 1 byte per parameter; bf16 takes 2")],
                 explain="A bound set by bandwidth alone: batch-1 decoding is memory-bound. "
                         "Chapter 9 measures how close a real decoder gets.")


def link_time(nvlink_ms, pcie_ms) -> None:
    """Exercise 1.4: ms to move 1 GB one way over NVLink and over PCIe to/from an H100 SXM."""
    __tracebackhide__ = True
    h100 = hardware.SPECS[GPU]
    one_way = {"NVLink": h100.nvlink_GBps / 2, "PCIe": h100.pcie_GBps / 2}   # the table is bidirectional
    expected_ms = {link: NBYTES / (gbps * 1e9) * 1e3 for link, gbps in one_way.items()}
    half = "the table's figure is the sum of both directions; one direction gets half of it"
    check_number(nvlink_ms, expected_ms["NVLink"], name="Exercise 1.4 (NVLink)", unit="ms",
                 mistakes=[(expected_ms["NVLink"] / 2, half)])
    check_number(pcie_ms, expected_ms["PCIe"], name="Exercise 1.4 (PCIe)", unit="ms",
                 mistakes=[(expected_ms["PCIe"] / 2, half)],
                 explain=f"PCIe is {expected_ms['PCIe'] / expected_ms['NVLink']:.0f}x slower: "
                         "data that must cross it during inference costs dearly.")


def _balance_fp16(spec: hardware.GPUSpec) -> float:
    return hardware.peak_tflops(spec, torch.float16) * 1e12 / (spec.bandwidth_GBps * 1e9)


def highest_balance(answer) -> None:
    """Exercise 1.5: the key of the GPU in ``hardware.SPECS`` with the highest dense fp16 machine balance."""
    __tracebackhide__ = True
    most_starved = max(hardware.SPECS, key=lambda key: _balance_fp16(hardware.SPECS[key]))
    top = hardware.SPECS[most_starved]
    check_choice(
        answer, most_starved, name="Exercise 1.5", options=list(hardware.SPECS),
        why={key: f"The {s.name} does {_balance_fp16(s):.0f} FLOP per byte; another GPU does more."
             for key, s in hardware.SPECS.items()},
        explain=f"The {top.name} does {_balance_fp16(top):.0f} "
                "FLOP per byte: fine for compute-bound work, slow at memory-bound decoding.")
