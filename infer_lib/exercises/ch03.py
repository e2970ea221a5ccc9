"""Checks for chapter 3's exercises (the linear layer and the tiled matmul).

Each check computes its expected answer from the spec table (``hardware.SPECS``),
``infer_lib.roofline`` or the shipped bench file, so the reader's cell does not
give it away. The only numbers typed here are the exercises' given inputs, named
as in the exercise text. A check prints ✅ when the answer is right, raises
``NotImplementedError`` while it is still ``...``, and ``AssertionError`` with a
hint when it is wrong.
"""

from __future__ import annotations

import torch

from .. import hardware, measure, roofline
from . import check_choice, check_number

BF16 = torch.bfloat16

# Exercise 3.1: weight-only int8 quantisation on an H100 SXM, math in bf16.
INT8_GPU = "h100_sxm"
INT8_BYTES = 1             # bytes per int8 weight

# Exercises 3.2 and 3.4: Llama-2-7B's MLP (hidden size 4096, MLP width 11008).
LLAMA_D = 4096             # hidden size d
LLAMA_FF = 11008           # MLP width: up-projection d -> 11008, down-projection 11008 -> d
BOUND_GPU = "a100_80gb"    # Exercise 3.2
BATCHES = (64, 1024)       # Exercise 3.2: 64 sequences decoding; a 1024-token prompt
FLOOR_GPU = "h100_sxm"     # Exercise 3.4

# Exercise 3.3: an 8192³ bf16 product with a 256 × 256 output tile.
PRODUCT_N = 8192          # M = N = K
TILE_BLOCK_M, TILE_BLOCK_N = 256, 256
BF16_BYTES = 2


def critical_batch_int8(answer) -> None:
    """Exercise 3.1: critical batch size of a linear layer on an H100 SXM with int8
    weights (1 byte each) dequantised and multiplied at the bf16 tensor-core peak."""
    __tracebackhide__ = True
    spec = hardware.SPECS[INT8_GPU]
    peak, bw = roofline.ceilings(spec, BF16)
    expected = roofline.critical_batch_size_from(peak, bw, bytes_per_weight=INT8_BYTES)
    bf16 = roofline.critical_batch_size(spec, BF16)
    fp32_peak = hardware.peak_tflops(spec, torch.float32) * 1e12
    check_number(
        answer, expected, name="Exercise 3.1", unit="rows",
        mistakes=[(bf16, "that is twice the answer: 2 bytes per weight (the bf16 layer), or P·s/β "
                         "without the 2 FLOPs of each multiply-add. Here a weight is 1 byte and "
                         "the math still runs at the bf16 peak"),
                  (2 * bf16, "that is four times the answer: count 1 byte per weight and 2 FLOPs "
                             "per multiply-add, B* = P·s_w / (2·β)"),
                  (roofline.critical_batch_size_from(fp32_peak, bw, INT8_BYTES),
                   "that uses the plain FP32 peak; the dequantised weights are multiplied in bf16 "
                   "on the tensor cores")],
        explain=f"B* = {peak / 1e12:g} TFLOP/s × 1 B / (2 × {bw / 1e9:g} GB/s) ≈ {expected:.0f}, half "
                f"the bf16 layer's {bf16:.0f}: halving the weight bytes halves the time of the "
                "memory-bound regime, and the layer turns compute-bound at half the batch.")


def llama_up_proj_bound(bound_at_64, bound_at_1024) -> None:
    """Exercise 3.2: is Llama-2-7B's MLP up-projection, ``X (B×4096) · W (4096×11008)``
    in bf16 on an A100 80GB, memory- or compute-bound at B = 64 and at B = 1024?"""
    __tracebackhide__ = True
    spec = hardware.SPECS[BOUND_GPU]
    balance = roofline.machine_balance(spec, BF16)
    for B, answer in zip(BATCHES, (bound_at_64, bound_at_1024)):
        op = roofline.matmul(B, LLAMA_FF, LLAMA_D, BF16)   # (B, d) @ (d, 11008)
        expected = roofline.bound(op, spec, BF16)
        wrong = "compute" if expected == "memory" else "memory"
        check_choice(
            answer, expected, name=f"Exercise 3.2 (B = {B})", options=("memory", "compute"),
            why={wrong: f"At B = {B} the layer does 2·B·d·d_ff FLOPs on (B·d + d·d_ff + B·d_ff) × 2 "
                        f"bytes: {op.intensity:.0f} FLOP per byte, against the {spec.name}'s bf16 "
                        f"machine balance of {balance:.0f}. For B ≪ d the intensity is about B."},
            explain=f"{op.intensity:.0f} FLOP/byte against a balance of {balance:.0f}.")


def tile_traffic(tiled_GB, saved_GB) -> None:
    """Exercise 3.3: HBM bytes (GB) a 256×256-tile kernel reads for an 8192³ bf16
    product, and how many GB fewer than the naive kernel (one output element at a time)."""
    __tracebackhide__ = True
    n, s = PRODUCT_N, BF16_BYTES
    naive = 2 * n**3 * s                                    # a row of a and a column of b per output
    tiled = n**3 * (1 / TILE_BLOCK_M + 1 / TILE_BLOCK_N) * s       # each slab element serves a whole tile row/column
    check_number(
        tiled_GB, tiled / 1e9, name="Exercise 3.3 (tiled kernel)", unit="GB",
        mistakes=[(n**3 / TILE_BLOCK_M * s / 1e9, "that counts only the slabs of a (or of b); a tile loads "
                                            "both, M·N·K·(1/BLOCK_M + 1/BLOCK_N) elements in all"),
                  (3 * n * n * s / 1e9, "that is the minimum, every element read once; a tile reads "
                                        "each element of a once per column of tiles, and of b once "
                                        "per row of tiles")])
    check_number(
        saved_GB, (naive - tiled) / 1e9, name="Exercise 3.3 (saved)", unit="GB", rel=1e-3,
        mistakes=[(naive / 1e9, "that is what the naive kernel reads; subtract what the tiled one reads"),
                  ((naive / 2 - tiled) / 1e9, "the naive kernel reads 2·K elements per output (a row "
                                              "of a and a column of b), 2·M·N·K in all")],
        explain=f"{naive / tiled:.0f} times less traffic than the naive kernel, but still "
                f"{tiled / (3 * n * n * s):.0f} times the minimum of reading each matrix once: "
                "the L2 cache has to catch the rest.")


def _floor_us(op: roofline.Op, peak: float, bw: float) -> float:
    return roofline.roofline_time(op, peak, bw) * 1e6


def time_floor(datasheet_us, measured_us) -> None:
    """Exercise 3.4: least time (µs) of Llama-2-7B's MLP down-projection,
    ``X (1×11008) · W (11008×4096)`` in bf16 on an H100 SXM, at the datasheet
    ceilings and at the ceilings measured in the shipped bench file."""
    __tracebackhide__ = True
    spec = hardware.SPECS[FLOOR_GPU]
    op = roofline.matmul(1, LLAMA_D, LLAMA_FF, BF16)          # (1, 11008) @ (11008, 4096)
    peak, bw = roofline.ceilings(spec, BF16)
    limits = measure.load_reference("bench")["limits"]
    m_peak, m_bw = limits["matmul_TFLOPs"]["bfloat16"] * 1e12, limits["copy_GBps"] * 1e9
    want, want_m = _floor_us(op, peak, bw), _floor_us(op, m_peak, m_bw)
    compute = "that is the compute time; at B = 1 the weights' bytes take far longer to read"
    check_number(
        datasheet_us, want, name="Exercise 3.4 (datasheet)", unit="µs",
        mistakes=[(op.flops / peak * 1e6, compute),
                  (want / 2, "that counts 1 byte per weight; bf16 takes 2"),
                  (want * 2, "that counts 4 bytes per weight; bf16 takes 2")])
    check_number(
        measured_us, want_m, name="Exercise 3.4 (measured ceilings)", unit="µs",
        mistakes=[(op.flops / m_peak * 1e6, compute),
                  (want, "that is the datasheet floor again; use limits['copy_GBps'] of the bench file"),
                  (want_m / 2, "that counts 1 byte per weight; bf16 takes 2")],
        explain=f"{op.bytes / 1e6:.1f} MB, nearly all of it weights, at "
                f"{limits['copy_GBps']:g} GB/s: a memory-bound floor {want_m / want:.2f}× the datasheet's. "
                f"The FLOPs would take {op.flops / peak * 1e6:.2f} µs.")
