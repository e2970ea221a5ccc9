"""Checks for chapter 2's exercises.

Each check computes its expected answer with ``infer_lib.roofline`` from the spec
table (``hardware.SPECS``), so the reader's cell does not give it away. The only
numbers typed here are the exercises' given inputs, named as in the exercise text.
A check prints ✅ when the answer is right, prints "not attempted yet" (and raises
nothing) while it is still ``...``, and raises ``AssertionError`` with a hint when it is
wrong. A hint names the kind of slip (a factor of 2, bytes or elements, which roof, the
units) and never the expected value or the quantities that decide the answer.
"""

from __future__ import annotations

import math
import random

import torch

from .. import hardware, roofline
from . import _not_attempted, check_choice, check_function, check_number, check_part

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
INTENSITY_REL = 0.02     # Exercise 2.1: "intensity ≈ B" (the weights' bytes alone) is within it
RTOL_TIME = 1e-3         # Exercise 2.5: relative tolerance of the reader's function


def _number(answer, expected, *, name, unit="", rel=0.02, mistakes=(), explain=""):
    """``check_number``, except that a wrong answer matching no known slip gets a hint
    without the ratio to the expected value (the ratio would give the answer away)."""
    __tracebackhide__ = True
    try:
        return check_number(answer, expected, name=name, unit=unit, rel=rel, mistakes=mistakes,
                            explain=explain)
    except AssertionError as err:
        if "by a factor of" in str(err) and "tolerance" in str(err):
            u = f" {unit}" if unit else ""
            direction = "too large" if answer > expected else "too small"
            raise AssertionError(f"{name}: {answer:g}{u} is {direction} (tolerance ±{rel:.0%}). Recheck "
                                 "each factor of the formula (FLOPs, bytes per element, which "
                                 "tensors move) and its units.") from None
        raise


def _linear(batch: int, d: int) -> roofline.Op:
    return roofline.matmul(batch, d, d, DTYPE)


def decode_intensity(answer) -> None:
    """Exercise 2.1: arithmetic intensity (FLOP/byte) of ``X (32×4096) · W (4096×4096)`` in bf16,
    counting X and W read once and the output written once. Accepted within ±2%, so the
    approximation "intensity ≈ B" (the weights' bytes alone) counts as right."""
    __tracebackhide__ = True
    op = _linear(DECODE_BATCH, DECODE_D)
    s = roofline.bytes_per_element(DTYPE)
    _number(
        answer, op.intensity, name="Exercise 2.1", unit="FLOP/byte", rel=INTENSITY_REL,
        mistakes=[(op.flops / 2 / op.bytes, "a factor of 2 too small: a multiply-add is 2 FLOPs "
                                            "(2·M·N·K in all), and a bf16 element is 2 bytes, not 4"),
                  (op.flops / (op.bytes / s), "a factor of 2 too large: that divides by elements, not "
                                              "bytes; bf16 takes 2 bytes each")],
        explain=f"{op.flops:.3g} FLOPs on {op.bytes / 1e6:.1f} MB: about B = {DECODE_BATCH} FLOPs per "
                "byte,\n   because the weights dominate the bytes and each weight is used B times.")


#: Exercise 2.2: why each wrong choice is wrong, without the numbers that decide it
_BOUND_HINTS = {
    "a100_80gb": ("Recount: 2 FLOPs per multiply-add, 2 bytes per bf16 element, and the bytes of X, W "
                  "and the output; then compare with this card's own ridge — dense bf16 tensor-core "
                  "peak ÷ its own HBM bandwidth: its HBM bandwidth is higher than the 40GB card's, "
                  "so its ridge is lower"),
    "a100_40gb": ("Count bytes, not elements (2 per bf16 value), include X and the output besides W, and "
                  "use this card's own HBM bandwidth and the dense (not the 2:4 sparse) bf16 peak"),
}


def linear_bound(a100_80gb_answer, a100_40gb_answer) -> None:
    """Exercise 2.2: is ``X (192×8192) · W (8192×8192)`` in bf16 memory- or compute-bound on the
    A100 80GB and on the A100 40GB (datasheet peaks)? Answer ``"memory"`` or ``"compute"`` each.
    The numbers that decide it are printed only once both answers are right."""
    __tracebackhide__ = True
    op = _linear(BATCH, D_MODEL)
    right = 0
    for key, answer in zip(BOUND_GPUS, (a100_80gb_answer, a100_40gb_answer)):
        spec = hardware.SPECS[key]
        expected = roofline.bound(op, spec, DTYPE)
        other = "compute" if expected == "memory" else "memory"
        right += check_part(check_choice, answer, expected, name=f"Exercise 2.2 ({spec.name})",
                       options=BOUNDS, why={other: _BOUND_HINTS[key]})
    if right == len(BOUND_GPUS):
        balances = ", ".join(f"{roofline.machine_balance(hardware.SPECS[k], DTYPE):.0f} on the "
                             f"{hardware.SPECS[k].name}" for k in BOUND_GPUS)
        print(f"   The layer does {op.intensity:.0f} FLOP/byte; the bf16 ridges are\n   {balances}: "
              "same chip and peak, different HBM.")


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
    check_part(
        _number, bytes_unfused, unfused, name="Exercise 2.3 (bytes, two kernels)", unit="bytes",
        mistakes=[(4 * n * s, "that leaves out one trip of the intermediate silu(gate): the first "
                              "kernel writes it to HBM and the second reads it back"),
                  (3 * n * s, "that is the fused kernel's traffic; two kernels also write and read "
                              "the intermediate")])
    check_part(
        _number, bytes_fused, fused, name="Exercise 2.3 (bytes, fused)", unit="bytes",
        mistakes=[(2 * n * s, "the fused kernel still reads both gate and up, and writes the output")])
    check_part(
        _number, speedup, unfused / fused, name="Exercise 2.3 (speed-up)", unit="×",
        mistakes=[(fused / unfused, "that is fused ÷ unfused: the speed-up is the time before ÷ the time after"),
                  (4 / 3, "recount the unfused bytes: gate, the intermediate twice, up, and the output"),
                  (3 / 2, "recount the fused bytes: gate and up are read, and the output is written")],
        explain="A memory-bound op's time is bytes ÷ bandwidth,\n   so the speed-up is the ratio of "
                "bytes. (Two launches instead of one add overhead too:\n   fusion helps small tensors "
                "even more.)")


def rms_norm_floor(answer_us) -> None:
    """Exercise 2.4: the least time (µs) of RMSNorm over a 16384 × 8192 bf16 activation (read once,
    written once; the weight vector is negligible) on an H200 (datasheet figures). RMSNorm runs on
    the CUDA cores (plain FP32), not on the tensor cores."""
    __tracebackhide__ = True
    spec = hardware.SPECS[GPU]
    peak, bw = roofline.cuda_core_ceilings(spec)
    tensor_peak = roofline.ceilings(spec, DTYPE)[0]
    op = roofline.reduction(TOKENS_NORM, D_NORM, DTYPE, flops_per_element=NORM_FLOPS)
    floor_us = roofline.roofline_time(op, peak, bw) * 1e6
    other = hardware.SPECS[OTHER_GPU]
    other_us = roofline.roofline_time(op, *roofline.cuda_core_ceilings(other)) * 1e6
    _number(
        answer_us, floor_us, name="Exercise 2.4", unit="µs",
        mistakes=[(op.flops / peak * 1e6, "that is the compute time; the floor is the larger of compute "
                                          "time and memory time"),
                  (op.flops / tensor_peak * 1e6, "that is a compute time, on the tensor cores, which a "
                                                 "norm does not use; and the floor is the larger of "
                                                 "compute time and memory time"),
                  (op.bytes / 2 / bw * 1e6, "that counts only the read; RMSNorm also writes its output"),
                  (op.bytes * 2 / bw * 1e6, "that counts 4 bytes per element; bf16 takes 2"),
                  ((op.flops / peak + op.bytes / bw) * 1e6,
                   "that looks like compute time plus memory time: the two overlap, so the floor is "
                   "the larger of them, not their sum (and GB/s on the datasheet are 1e9 bytes/s, "
                   "not 2**30)"),
                  (op.bytes / (bw / 1.024**3) * 1e6, "GB/s on the datasheet are 1e9 bytes/s, not 2**30"),
                  (other_us, f"that uses the {other.name}'s bandwidth; the {spec.name} has faster memory")],
        explain=f"{op.bytes / 1e6:.0f} MB at {spec.bandwidth_GBps:,.0f} GB/s: memory-bound; the "
                f"{op.flops / 1e9:.2f} GFLOP would take\n   {op.flops / peak * 1e6:.1f} µs on the CUDA "
                f"cores (FP32, {spec.fp32_TFLOPs:g} TFLOP/s). On the {other.name},\n   with the same "
                f"FP32 peak, it takes {other_us:.0f} µs: memory-bound work speeds up with bandwidth alone.")


# ----------------------------------------------------------------------------
# Exercise 2.5 (coding): the roofline time of a batched matmul
# ----------------------------------------------------------------------------

def _batched_matmul_time_us_ref(batch, M, N, K, bytes_per_element, peak_tflops, bandwidth_gbps) -> float:
    """Least time in µs of ``batch`` independent products ``(M×K)·(K×N)`` (every operand read
    once from HBM, every output written once) on a GPU of ``peak_tflops`` and ``bandwidth_gbps``."""
    one = roofline.matmul(M, N, K, {1: "fp8", 2: "bf16", 4: "fp32"}[bytes_per_element])
    op = roofline.Op("batched matmul", batch * one.flops, batch * one.bytes)
    return roofline.roofline_time(op, peak_tflops * 1e12, bandwidth_gbps * 1e9) * 1e6


def _parts(batch, M, N, K, s, peak_tflops, bandwidth_gbps, *, flops_per_mac=2, elem_bytes=None,
           out=True, shared_rhs=False, per_batch=True, flops_batch=True, bytes_batch=True):
    """(compute µs, memory µs) with one slip switched on: the slips of ``_SLIPS``."""
    s = s if elem_bytes is None else elem_bytes
    n = batch if per_batch else 1
    nb = n if bytes_batch else 1
    rhs = K * N if shared_rhs else nb * K * N
    flops = (n if flops_batch else 1) * flops_per_mac * M * N * K
    nbytes = (nb * M * K + rhs + (nb * M * N if out else 0)) * s
    return flops / (peak_tflops * 1e6), nbytes / (bandwidth_gbps * 1e3)


#: (name, time from (compute µs, memory µs), _parts options, hint). Hints name the slip only.
_SLIPS = (
    ("one product", max, {"per_batch": False},
     "it counts one product: there are `batch` of them, each with its own FLOPs and bytes"),
    ("no batch in the FLOPs", max, {"flops_batch": False},
     "the FLOPs leave out `batch`: each of the `batch` products does its own multiply-adds"),
    ("no batch in the bytes", max, {"bytes_batch": False},
     "the bytes leave out `batch`: each of the `batch` products reads and writes its own operands"),
    ("1 FLOP per multiply-add", max, {"flops_per_mac": 1},
     "a factor of 2 in the FLOPs: a multiply-add counts as 2 FLOPs (2·M·N·K per product)"),
    ("elements, not bytes", max, {"elem_bytes": 1},
     "it counts elements, not bytes: multiply by bytes_per_element"),
    ("always 2 bytes", max, {"elem_bytes": 2},
     "it assumes 2 bytes per element: use bytes_per_element (fp8 has 1, fp32 4)"),
    ("no output", max, {"out": False},
     "the output is written to HBM too: count its M·N elements per product"),
    ("shared right-hand side", max, {"shared_rhs": True},
     "each product has its own (K×N) operand (as each attention head has its own keys): "
     "read it once per product"),
    ("sum", lambda c, m: c + m, {},
     "it adds compute time and memory time: they overlap, so the bound is the larger of the two"),
    ("min", min, {},
     "it takes the smaller of compute time and memory time: the operation needs both, so the larger"),
    ("memory only", lambda c, m: m, {},
     "it returns the memory time only: compute-bound cases take the compute time (the larger)"),
    ("compute only", lambda c, m: c, {},
     "it returns the compute time only: memory-bound cases take the memory time (the larger)"),
)

_UNIT_SLIPS = ((1e-6, "seconds"), (1e-3, "milliseconds"), (1e3, "nanoseconds"))


#: the seed of the check's cases: the same cases on every run, so a slip gets the same hint
CASES_SEED = 73   # chosen so that every slip of _SLIPS gives its own hint (a test checks)


def _cases(rng: random.Random | None = None) -> list[tuple]:
    """Random cases, drawn from ``rng`` (by default seeded with ``CASES_SEED``: the same on every
    run): odd shapes, real GPUs of the spec table, 1, 2 or 4 bytes per element; always one
    clearly memory-bound and one clearly compute-bound case."""
    rng = rng or random.Random(CASES_SEED)
    gpus = [s for s in hardware.SPECS.values() if s.fp16_TFLOPs and s.bandwidth_GBps]

    def gpu():
        spec = rng.choice(gpus)
        return spec.fp16_TFLOPs, spec.bandwidth_GBps

    def dim(lo, hi):
        return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))) | 1   # odd sizes

    cases = [(rng.randint(2, 9), dim(1, 8), dim(1000, 9000), dim(1000, 9000), 2, *gpu()),   # decode-like
             (rng.randint(2, 9), dim(2000, 9000), dim(2000, 9000), dim(2000, 9000), 2, *gpu())]
    cases += [(rng.randint(2, 64), dim(1, 9000), dim(1, 9000), dim(1, 9000), rng.choice((1, 2, 4)), *gpu())
              for _ in range(6)]
    return cases


def _close(a, b, rel=RTOL_TIME):
    return math.isclose(a, b, rel_tol=rel)


def _diagnose(name: str, got: list, cases: list) -> None:
    """Raise with a hint naming the slip when the reader's values are wrong; never show the
    expected values (or the code)."""
    __tracebackhide__ = True
    want = [_batched_matmul_time_us_ref(*c) for c in cases]
    if any(g is None for g in got):
        raise AssertionError(f"{name}: the function returned None: does it end with `return`?")
    try:
        got = [float(g) for g in got]
    except (TypeError, ValueError):
        raise AssertionError(f"{name}: the function should return one number (µs), got "
                             f"{type(got[0]).__name__}") from None
    if all(_close(g, w) for g, w in zip(got, want)):
        return
    for _, combine, opts, hint in _SLIPS:
        variant = [combine(*_parts(*c, **opts)) for c in cases]
        if all(_close(g, v) for g, v in zip(got, variant)):
            raise AssertionError(f"{name}: not right — {hint}.")
    for factor, unit in _UNIT_SLIPS:
        if all(_close(g, w * factor) for g, w in zip(got, want)):
            raise AssertionError(f"{name}: not right — the time is in {unit}, not µs: check the unit "
                                 "conversions (TFLOP/s = 1e12 FLOP/s, GB/s = 1e9 B/s, 1 s = 1e6 µs).")
    bad = next(i for i, (g, w) in enumerate(zip(got, want)) if not _close(g, w))
    compute, memory = _parts(*cases[bad])
    where = (("compute-bound", "the FLOP count and the TFLOP/s conversion") if compute >= memory
             else ("memory-bound", "the byte count (which tensors, how many bytes each) and the GB/s "
                                   "conversion"))
    raise AssertionError(f"{name}: wrong on a {where[0]} case {cases[bad]}: recheck {where[1]} "
                         f"(tolerance ±{RTOL_TIME:.1%}).")


def batched_matmul_time(fn) -> None:
    """Exercise 2.5 (coding): ``fn(batch, M, N, K, bytes_per_element, peak_tflops, bandwidth_gbps)``
    must return the roofline time in µs of ``batch`` products ``(M×K)·(K×N)``; compared with
    ``_batched_matmul_time_us_ref`` on the seeded random cases of ``_cases``, to ±0.1%."""
    __tracebackhide__ = True
    name = "Exercise 2.5"
    cases = _cases()
    stub = "write the function's body"
    if fn is ... or fn is None:
        _not_attempted(name, stub)
        return
    try:
        got = [fn(*c) for c in cases]
    except NotImplementedError:
        _not_attempted(name, stub)
        return
    _diagnose(name, got, cases)
    check_function(fn, _batched_matmul_time_us_ref, cases, name=name, rtol=RTOL_TIME, atol=0,
                          explain=f"It agrees with the reference on {len(cases)} random cases,\n"
                                  "   memory- and compute-bound.")
