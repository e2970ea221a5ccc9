"""Checks for chapter 3's exercises (the linear layer and the tiled matmul).

Each check computes its expected answer from the spec table (``hardware.SPECS``),
``infer_lib.roofline`` or the shipped bench file, so the reader's cell does not
give it away. The only numbers typed here are the exercises' given inputs, named
as in the exercise text. A check prints ✅ when the answer is right, prints
"not attempted yet" (and raises nothing) while it is still ``...``, and raises
``AssertionError`` with a hint when it is wrong: the hint names the kind of slip
(a factor of 2, bytes vs elements, a tile count not rounded up, ...) and never the
expected value or the quantities that decide it. Numbers are accepted within
``REL`` (2%): rounded answers pass.
"""

from __future__ import annotations

import math
import random

import torch

from .. import hardware, measure, roofline
from . import _not_attempted, check_choice, check_function, check_number, numbers_from

BF16 = torch.bfloat16
REL = 0.02                 # relative tolerance of every numeric answer

# Exercise 3.1: weight-only int8 quantisation on an H100 SXM, math in bf16.
INT8_GPU = "h100_sxm"
INT8_BYTES = 1             # bytes per int8 weight

# Exercises 3.2 and 3.4: Llama-2-7B's MLP (hidden size 4096, MLP width 11008).
LLAMA_D = 4096             # hidden size d
LLAMA_FF = 11008           # MLP width: up-projection d -> 11008, down-projection 11008 -> d
BOUND_GPU = "a100_80gb"    # Exercise 3.2
BATCHES = (64, 1024)       # Exercise 3.2: 64 sequences decoding; a 1024-token prompt
FLOOR_GPU = "h100_sxm"     # Exercise 3.4

# Exercise 3.3: an 8192³ bf16 product with a 256 × 256 output tile (HBM reads, and the
# ratio to the naive kernel's).
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
        answer, expected, name="Exercise 3.1", unit="rows", rel=REL,
        mistakes=[(bf16, "off by a factor of 2: that is the critical batch of bf16 weights "
                         "(2 bytes each), or a count without the 2 FLOPs of each multiply-add. "
                         "Here a weight is 1 byte, and the math still runs at the bf16 peak"),
                  (2 * bf16, "off by a factor of 4: two slips of 2 at once — the bytes per "
                             "weight (int8 is 1), and the FLOPs per multiply-add (2)"),
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
    # The hints say how to decide, never the intensity or the balance: either would give
    # the answer away. They are printed once the answer is right.
    why = {"compute": "a layer is compute-bound only when its intensity (FLOPs per byte moved, "
                      "counting X, W and the output) exceeds the GPU's machine balance (peak FLOP/s "
                      "÷ bandwidth, here the A100 80GB's in bf16). Which term dominates the bytes "
                      "when the batch is much smaller than the widths?",
           "memory": "a layer is memory-bound only when its intensity (FLOPs per byte moved, "
                     "counting X, W and the output) is below the GPU's machine balance (peak FLOP/s "
                     "÷ bandwidth, here the A100 80GB's in bf16). Recompute both: FLOPs are "
                     "2·B·d·d_ff, and each bf16 value is 2 bytes."}
    for B, answer in zip(BATCHES, (bound_at_64, bound_at_1024)):
        op = roofline.matmul(B, LLAMA_FF, LLAMA_D, BF16)   # (B, d) @ (d, 11008)
        expected = roofline.bound(op, spec, BF16)
        wrong = "compute" if expected == "memory" else "memory"
        check_choice(
            answer, expected, name=f"Exercise 3.2 (B = {B})", options=("memory", "compute"),
            why={wrong: why[wrong]},
            explain=f"{op.intensity:.0f} FLOP/byte against a balance of {balance:.0f}.")


def tile_traffic(tiled_GB, times_less) -> None:
    """Exercise 3.3: HBM bytes (GB) a 256×256-tile kernel reads for an 8192³ bf16
    product, and how many times less that is than the naive kernel reads (one output
    element at a time)."""
    __tracebackhide__ = True
    n, s = PRODUCT_N, BF16_BYTES
    naive = 2 * n**3 * s                                    # a row of a and a column of b per output
    tiled = n**3 * (1 / TILE_BLOCK_M + 1 / TILE_BLOCK_N) * s   # each slab element serves a tile row/column
    check_number(
        tiled_GB, tiled / 1e9, name="Exercise 3.3 (tiled kernel)", unit="GB", rel=REL,
        mistakes=[(n**3 / TILE_BLOCK_M * s / 1e9, "off by a factor of 2: that counts the slabs of one "
                                                  "operand only (at every step a program loads a slab "
                                                  "of a and a slab of b), or elements instead of "
                                                  "bytes (bf16: 2 per element)"),
                  (2 * tiled / 1e9, "off by a factor of 2: that is what a tile half as wide would "
                                    "read (the narrower the tile, the more tiles reread each slab), "
                                    "or 4 bytes per element; recheck the tile size the exercise gives "
                                    "and the bytes of a bf16 element"),
                  (3 * n * n * s / 1e9, "that is the minimum, every element read once; a tile reads "
                                        "each element of a once per column of tiles, and of b once "
                                        "per row of tiles")])
    check_number(
        times_less, naive / tiled, name="Exercise 3.3 (times less)", unit="×", rel=REL,
        mistakes=[(naive / tiled / 2, "off by a factor of 2: is one count in elements and the other "
                                      "in bytes? Divide bytes by bytes. Or the naive count is short: "
                                      "the naive kernel reads 2·K elements per output (a row of a "
                                      "and a column of b)"),
                  (naive / tiled * 2, "off by a factor of 2: is one count in bytes and the other in "
                                      "elements? Divide bytes by bytes (or elements by elements)"),
                  (tiled / naive, "inverted: divide what the naive kernel reads by what the tiled "
                                  "one reads")],
        explain=f"the naive kernel reads {naive / 1e9:,.0f} GB, but the tiled one still reads "
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
        datasheet_us, want, name="Exercise 3.4 (datasheet)", unit="µs", rel=REL,
        mistakes=[(op.flops / peak * 1e6, compute),
                  (want / 2, "that counts 1 byte per weight; bf16 takes 2"),
                  (want * 2, "that counts 4 bytes per weight; bf16 takes 2")])
    check_number(
        measured_us, want_m, name="Exercise 3.4 (measured ceilings)", unit="µs", rel=REL,
        mistakes=[(op.flops / m_peak * 1e6, compute),
                  (want, "that is the datasheet floor again; use limits['copy_GBps'] of the bench file"),
                  (want_m / 2, "that counts 1 byte per weight; bf16 takes 2")],
        explain=f"{op.bytes / 1e6:.1f} MB, nearly all of it weights, at "
                f"{limits['copy_GBps']:g} GB/s: a memory-bound floor {want_m / want:.2f}× the datasheet's. "
                f"At the measured matmul ceiling the FLOPs would take {op.flops / m_peak * 1e6:.2f} µs.")


# --- Exercise 3.5 (coding): the HBM reads of a tiled matmul, ragged edges included ---------

def _tiled_read_bytes_ref(M: int, N: int, K: int, BLOCK_M: int, BLOCK_N: int, elem_bytes: int) -> int:
    """Bytes of ``a (M, K)`` and ``b (K, N)`` that ``infer_lib.kernels.matmul`` loads when no
    load hits in L2: one program per ``BLOCK_M × BLOCK_N`` tile of ``c`` (the tile counts
    rounded up: a ragged edge tile is a whole program, and its wrapped rows and columns
    are loaded too), each loading ``BLOCK_M × K`` of ``a`` and ``K × BLOCK_N`` of ``b``. ``K`` is
    not rounded up to a multiple of ``BLOCK_K``: the last slab's loads past ``K`` are masked."""
    tiles = math.ceil(M / BLOCK_M) * math.ceil(N / BLOCK_N)
    return tiles * K * (BLOCK_M + BLOCK_N) * elem_bytes   # K as it is: loads past K are masked


# BLOCK_K values a reader might round K up to (the function is not given BLOCK_K): the powers
# of two the kernel's configurations use; BLOCK_M and BLOCK_N are tried too.
_BLOCK_KS = (16, 32, 64, 128, 256)


def _traffic_cases(n: int = 6, rng: random.Random | None = None) -> list[tuple[int, ...]]:
    """Fresh random cases: odd M, N, K (never multiples of a tile), power-of-two tiles, and
    1, 2 or 4 bytes per element; the first case has M smaller than BLOCK_M (a decode shape)."""
    rng = rng or random.Random()
    cases = []
    for i in range(n):
        bm, bn = rng.choice((16, 32, 64, 128, 256)), rng.choice((16, 32, 64, 128, 256))
        M = rng.randrange(1, bm, 2) if i == 0 else rng.randrange(bm + 1, 40 * bm, 2)
        N, K = rng.randrange(bn + 1, 40 * bn, 2), rng.randrange(1, 9000, 2)
        cases.append((M, N, K, bm, bn, rng.choice((1, 2, 4))))
    cases.append((3 * 64 + 1, 5 * 128 + 1, 777, 64, 128, 2))   # always one case that rounds up both ways
    return cases


def _traffic_slips(M, N, K, BM, BN, s):
    """(values, hint) of the usual wrong answers for one case: an answer matches the slip when it
    equals one of its values."""
    cm, cn = math.ceil(M / BM), math.ceil(N / BN)
    k_up = tuple(cm * cn * math.ceil(K / bk) * bk * (BM + BN) * s
                 for bk in sorted({*_BLOCK_KS, BM, BN}))
    return [(v if isinstance(v, tuple) else (v,), hint) for v, hint in [
        (k_up,
         "K is rounded up to a multiple of BLOCK_K: the last slab's loads past K are masked and "
         "read nothing; only the M and N tile counts are rounded up"),
        (M * N * K * (1 / BM + 1 / BN) * s,
         "the tile counts are not rounded up: a ragged edge tile is still a whole program that "
         "loads slabs as wide as the tile (the chapter's formula assumes sizes that are multiples "
         "of the tile)"),
        ((M // BM) * (N // BN) * K * (BM + BN) * s,
         "the tile counts are rounded down: the last, partial row and column of tiles run too"),
        (cm * cn * K * (BM + BN),
         "that counts elements; the question asks for bytes (elem_bytes per element)"),
        (cm * cn * K * BM * s, "that counts the slabs of a only; each program loads slabs of b too"),
        (cm * cn * K * BN * s, "that counts the slabs of b only; each program loads slabs of a too"),
        (math.ceil(M / BN) * math.ceil(N / BM) * K * (BM + BN) * s,
         "BLOCK_M and BLOCK_N are swapped: BLOCK_M splits the M rows of a and c, BLOCK_N the "
         "N columns of b and c"),
        ((M * K + K * N) * s,
         "that is the minimum, each matrix read once; a tiled kernel reads a row of tiles of a "
         "once per column of tiles of c, and vice versa"),
        (2 * M * N * K * s, "that is the naive kernel's traffic, one output element at a time"),
        ((cm * cn * K * (BM + BN) + M * N) * s,
         "the question is about reads: c is written, once, not read"),
    ]]


def tiled_read_bytes(fn) -> bool:
    """Exercise 3.5: the reader's ``fn(M, N, K, BLOCK_M, BLOCK_N, elem_bytes)`` against
    ``_tiled_read_bytes_ref`` on fresh random odd sizes (exact up to float rounding). A wrong
    function gets the kind of slip when it makes the same one on every case; never the code."""
    __tracebackhide__ = True
    name = "Exercise 3.5"
    if fn is ... or fn is None:
        return _not_attempted(name, "write the function (its body still raises NotImplementedError)")
    cases = _traffic_cases()
    got = numbers_from(fn, cases, name=name, what="a number of bytes")
    if got is None:
        return False
    close = [math.isclose(g, _tiled_read_bytes_ref(*a), rel_tol=1e-9) for g, a in zip(got, cases)]
    if not all(close):
        slips = [_traffic_slips(*a) for a in cases]
        for i, (_, hint) in enumerate(slips[0]):
            # the slip explains every case it can be told apart on (some coincide on some cases)
            if all(any(math.isclose(g, v, rel_tol=1e-9) for v in sl[i][0])
                   for g, sl in zip(got, slips)):
                raise AssertionError(f"{name}: {hint}.")
        bad = cases[close.index(False)]
        shown = ", ".join(f"{k}={v}" for k, v in zip(("M", "N", "K", "BLOCK_M", "BLOCK_N",
                                                      "elem_bytes"), bad))
        raise AssertionError(f"{name}: wrong for ({shown}). Count the programs (tiles of c, "
                             "ragged ones included), what one program loads of a and of b over "
                             "the whole K loop, and the bytes per element.")
    return check_function(fn, _tiled_read_bytes_ref, cases, name=name, rtol=1e-9, atol=0.5,
                          explain="A ragged edge tile is a whole program loading full-width slabs "
                                  "(on a GPU, its wrapped rows and columns mostly hit in cache); "
                                  "along K, the masked loads past the end read nothing.")
