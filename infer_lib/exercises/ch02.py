"""Checks for chapter 2's exercises.

Each check computes its expected answer with ``infer_lib.roofline`` from the spec
table (``hardware.SPECS``), so the reader's cell does not give it away. The only
numbers typed here are the exercises' given inputs, named as in the exercise text.
A check prints ✅ when the answer is right, raises ``NotImplementedError`` while it
is still ``...``, and ``AssertionError`` with a hint when it is wrong.
"""

from __future__ import annotations

import torch

from .. import hardware, roofline
from . import check_choice, check_number

DTYPE = torch.bfloat16   # every exercise is in bf16
DECODE_BATCH = 32        # Exercise 2.1: a linear layer X (B×d) · W (d×d) in a decoding step, B
DECODE_D = 4096          # Exercise 2.1: d
BATCH = 192              # Exercise 2.2: the same kind of layer, B
D_MODEL = 8192           # Exercise 2.2: d
BOUND_GPUS = ("a100_80gb", "a100_40gb")  # Exercise 2.2: the two GPUs, same chip, different HBM
TOKENS = 4096            # Exercise 2.3: rows of the SwiGLU input
D_FF = 14336             # Exercise 2.3: width of the feed-forward layer (Llama 3 8B)
TOKENS_NORM = 16384      # Exercise 2.4: rows of the RMSNorm input (4 prompts of 4096 tokens)
D_NORM = 8192            # Exercise 2.4: d, the normalised dimension
NORM_FLOPS = 4           # Exercise 2.4: FLOPs per element of RMSNorm
GPU = "h200"             # Exercise 2.4: the GPU
OTHER_GPU = "h100_sxm"   # Exercise 2.4: the same compute, slower memory

BOUNDS = ("memory", "compute")


def _linear(batch: int, d: int) -> roofline.Op:
    return roofline.matmul(batch, d, d, DTYPE)


def decode_intensity(answer) -> None:
    """Exercise 2.1: arithmetic intensity (FLOP/byte) of ``X (32×4096) · W (4096×4096)`` in bf16,
    counting X and W read once and the output written once."""
    __tracebackhide__ = True
    op = _linear(DECODE_BATCH, DECODE_D)
    s = roofline.bytes_per_element(DTYPE)
    check_number(
        answer, op.intensity, name="Exercise 2.1", unit="FLOP/byte", rel=0.01,
        mistakes=[(op.flops / 2 / op.bytes, "half the right value: a multiply-add is 2 FLOPs (2·M·N·K in "
                                            "all), and a bf16 element is 2 bytes, not 4"),
                  (op.flops / (op.bytes / s), "that divides by elements, not bytes: bf16 takes 2 bytes each")],
        explain=f"{op.flops:.3g} FLOPs on {op.bytes / 1e6:.1f} MB: about B = {DECODE_BATCH} FLOPs per byte, "
                "because the weights dominate the bytes and each weight is used B times.")


def linear_bound(a100_80gb_answer, a100_40gb_answer) -> None:
    """Exercise 2.2: is ``X (192×8192) · W (8192×8192)`` in bf16 memory- or compute-bound on the
    A100 80GB and on the A100 40GB (datasheet peaks)? Answer ``"memory"`` or ``"compute"`` each."""
    __tracebackhide__ = True
    op = _linear(BATCH, D_MODEL)
    for key, answer in zip(BOUND_GPUS, (a100_80gb_answer, a100_40gb_answer)):
        spec = hardware.SPECS[key]
        balance = roofline.machine_balance(spec, DTYPE)
        expected = roofline.bound(op, spec, DTYPE)
        other = "compute" if expected == "memory" else "memory"
        relation = "below" if expected == "memory" else "above"
        check_choice(
            answer, expected, name=f"Exercise 2.2 ({spec.name})", options=BOUNDS,
            why={other: f"compare the op's intensity ({op.intensity:.0f} FLOP/byte) with the "
                        f"{spec.name}'s bf16 machine balance: peak FLOP/s ÷ bandwidth."},
            explain=f"{op.intensity:.0f} FLOP/byte is {relation} the {spec.name}'s machine balance "
                    f"of {balance:.0f} FLOP/byte.")


def _swiglu_bytes() -> tuple[float, float]:
    n = TOKENS * D_FF
    silu = roofline.elementwise(n, DTYPE, n_inputs=1, n_outputs=1)   # read gate, write s
    mul = roofline.elementwise(n, DTYPE, n_inputs=2, n_outputs=1)    # read s and up, write out
    return silu.bytes + mul.bytes, mul.bytes                         # fused: read gate and up, write out


def fusion(bytes_unfused, bytes_fused, speedup) -> None:
    """Exercise 2.3: HBM bytes of ``silu(gate) * up`` (each 4096×14336, bf16) as two kernels and
    as one fused kernel, and the best speed-up fusion can give a memory-bound op."""
    __tracebackhide__ = True
    unfused, fused = _swiglu_bytes()
    n = TOKENS * D_FF
    s = roofline.bytes_per_element(DTYPE)
    check_number(
        bytes_unfused, unfused, name="Exercise 2.3 (bytes, two kernels)", unit="bytes",
        mistakes=[(4 * n * s, "that leaves out one trip of the intermediate silu(gate): the first "
                              "kernel writes it to HBM and the second reads it back"),
                  (3 * n * s, "that is the fused kernel's traffic; two kernels also write and read "
                              "the intermediate")])
    check_number(
        bytes_fused, fused, name="Exercise 2.3 (bytes, fused)", unit="bytes",
        mistakes=[(2 * n * s, "the fused kernel still reads both gate and up, and writes the output")])
    check_number(
        speedup, unfused / fused, name="Exercise 2.3 (speed-up)", unit="×",
        mistakes=[(fused / unfused, "that is fused ÷ unfused: the speed-up is the time before ÷ the time after"),
                  (4 / 3, "recount the unfused bytes: gate, the intermediate twice, up, and the output")],
        explain="A memory-bound op's time is bytes ÷ bandwidth, so the speed-up is the ratio of bytes. "
                "(Two launches instead of one add overhead too: fusion helps small tensors even more.)")


def rms_norm_floor(answer_us) -> None:
    """Exercise 2.4: the least time (µs) of RMSNorm over a 16384 × 8192 bf16 activation (read once,
    written once; the weight vector is negligible) on an H200 (datasheet figures)."""
    __tracebackhide__ = True
    spec = hardware.SPECS[GPU]
    peak, bw = roofline.ceilings(spec, DTYPE)
    op = roofline.reduction(TOKENS_NORM, D_NORM, DTYPE, flops_per_element=NORM_FLOPS)
    floor_us = roofline.roofline_time(op, peak, bw) * 1e6
    other = hardware.SPECS[OTHER_GPU]
    other_us = roofline.roofline_time(op, *roofline.ceilings(other, DTYPE)) * 1e6
    check_number(
        answer_us, floor_us, name="Exercise 2.4", unit="µs",
        mistakes=[(op.flops / peak * 1e6, "that is the compute time; the floor is the larger of compute "
                                          "time and memory time"),
                  (op.bytes / 2 / bw * 1e6, "that counts only the read; RMSNorm also writes its output"),
                  (op.bytes * 2 / bw * 1e6, "that counts 4 bytes per element; bf16 takes 2"),
                  (other_us, f"that uses the {other.name}'s bandwidth; the {spec.name} has faster memory")],
        explain=f"{op.bytes / 1e6:.0f} MB at {spec.bandwidth_GBps:,.0f} GB/s: memory-bound, the "
                f"{op.flops / 1e9:.2f} GFLOP would take only {op.flops / peak * 1e6:.2f} µs. On the {other.name}, "
                f"with the same peak FLOP/s, it takes {other_us:.0f} µs: memory-bound work speeds up with "
                "bandwidth alone.")
