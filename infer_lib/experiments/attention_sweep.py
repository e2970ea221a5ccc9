"""Attention against sequence length: the measurements and the counts of chapter 4.

Three implementations of ``softmax(Q Kᵀ / √D) V`` are compared:

* ``naive PyTorch`` — ``infer_lib.reference.naive_attention``: every step a
  separate kernel, the ``S × S`` score matrix written to HBM and read back by
  the next step;
* ``SDPA`` — ``torch.nn.functional.scaled_dot_product_attention``, PyTorch's
  fused attention (a FlashAttention-style kernel on recent GPUs);
* ``triton flash_attention`` — ``infer_lib.kernels.flash_attention``, the
  course's FlashAttention-2 forward kernel.

``sweep`` measures, for each sequence length ``S`` (``S_q = S_k = S``), each
implementation's time (``measure.bench_us``: median, L2 flushed) and its peak
memory: the most memory allocated during one call beyond what was allocated
before it (the inputs), i.e. the call's intermediates and its output.
``time_naive_steps`` times the naive version's steps one by one, to place each
on the roofline. Both need a CUDA GPU; without one they raise RuntimeError and
the chapter shows the shipped measurement ``infer_lib/data/attention_sweep_<gpu>.json``,
written by

    python -m infer_lib.experiments.attention_sweep --out-dir DIR

(B = 1, H = 32, D = 128, bf16, causal, S from 512 to 16384, and the naive steps
timed one by one at S = 4096; meant to take well under two minutes on an H100).
The counts run anywhere: ``naive_steps`` (each step of the naive version as a
``roofline.Op``), ``flash_bytes``, the peak-memory models ``naive_peak_bytes``
and ``flash_peak_bytes``, and ``tile_map``, which tiles of a causal
FlashAttention kernel run masked, unmasked or not at all. The chapter's live
sizes per profile are ``device.Profile.attention``.

FLOPs are ``roofline.attention_flops``, as in FlashAttention's papers and the
benchmark: ``4 · B · H · S_q · S_k · D`` for the two matmuls, halved with
causal masking (the useful half; the naive version computes the masked half
too and throws it away).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import device, measure, roofline

#: The implementations, with the names the benchmark (``bench/attention_cases.py``) uses.
NAIVE, SDPA, FLASH = "naive PyTorch", "SDPA", "triton flash_attention"
IMPLS = (NAIVE, SDPA, FLASH)
#: The copy line of ``softmax_sweep``.
COPY = "copy"

#: The shipped sweep: sequence lengths and the fixed shape.
SEQ_LENS = tuple(2**p for p in range(9, 15))   # 512 … 16384
PARAMS = {"B": 1, "H": 32, "D": 128, "dtype": "bfloat16", "causal": True}
#: Sequence length at which the naive version's steps are timed one by one.
STEPS_S = 4096



# ----------------------------------------------------------------------------
# Counts (run anywhere)
# ----------------------------------------------------------------------------

def _scaled(op: roofline.Op, n: int, extra_bytes: int = 0) -> roofline.Op:
    return roofline.Op(op.name, op.flops * n, op.bytes * n + extra_bytes)


def naive_steps(B: int, H: int, S: int, D: int, dtype, causal: bool, S_k: int | None = None) -> list[roofline.Op]:
    """The steps of ``reference.naive_attention`` for ``B · H`` heads, as roofline Ops.

    Each step is a separate kernel and moves at least its inputs and its output:

    * ``QKᵀ``: a matmul ``(S_q, D) @ (D, S_k)`` per head — reads q and k, *writes* the scores;
    * ``scale``: reads the scores, writes them scaled (1 FLOP per score);
    * ``mask`` (causal only): reads the scores and the ``S_q × S_k`` boolean mask
      (once: it is shared by every head), writes the masked scores (1 FLOP per score);
    * ``softmax``: reads the scores, writes the probabilities P (≈ 5 FLOPs per score);
    * ``PV``: a matmul ``(S_q, S_k) @ (S_k, D)`` per head — reads P and v, writes the output.

    The matmuls count every score, masked or not: the naive version computes them all.
    """
    S_q, S_k = S, S if S_k is None else S_k
    n = B * H
    scores = S_q * S_k
    steps = [
        _scaled(roofline.matmul(S_q, S_k, D, dtype, name="QKᵀ"), n),
        _scaled(roofline.elementwise(scores, dtype, flops_per_element=1, name="scale"), n),
    ]
    if causal:
        steps.append(_scaled(roofline.elementwise(scores, dtype, flops_per_element=1, name="mask"), n,
                             extra_bytes=scores))   # + the bool mask, 1 byte a score
    steps += [
        _scaled(roofline.reduction(S_q, S_k, dtype, name="softmax"), n),
        _scaled(roofline.matmul(S_q, D, S_k, dtype, name="PV"), n),
    ]
    return steps


def flash_bytes(B: int, H: int, S_q: int, S_k: int, D: int, dtype, H_kv: int | None = None) -> int:
    """The least HBM traffic of fused attention: q, k, v read once and the output written once."""
    H_kv = H if H_kv is None else H_kv
    s = roofline.bytes_per_element(dtype)
    return (2 * B * H * S_q * D + 2 * B * H_kv * S_k * D) * s


def naive_peak_bytes(B: int, H: int, S_q: int, S_k: int, D: int, dtype, causal: bool) -> int:
    """Memory ``naive_attention`` allocates at its peak, beyond its inputs (a model, for comparison
    with the measured peak).

    Each step allocates a new score matrix while its input is still alive: two
    ``B·H·S_q·S_k`` matrices at once (the scores and the probabilities coexist to the
    end, as both stay bound to local names), plus, when causal, the boolean mask and
    its negation (``S_q · S_k`` bytes each), plus the output ``B·H·S_q·D``.
    """
    s = roofline.bytes_per_element(dtype)
    matrices = 2 * B * H * S_q * S_k * s
    masks = 2 * S_q * S_k if causal else 0
    return matrices + masks + B * H * S_q * D * s


def flash_peak_bytes(B: int, H: int, S_q: int, S_k: int, D: int, dtype) -> int:
    """Memory ``flash_attention`` allocates beyond its inputs: the output, nothing of size ``S_q × S_k``."""
    return B * H * S_q * D * roofline.bytes_per_element(dtype)


FULL, MASKED, SKIPPED = "full", "masked", "skipped"


def tile_map(S_q: int, S_k: int, BLOCK_M: int, BLOCK_N: int, causal: bool = True) -> list[list[str]]:
    """For each (query tile, key tile) pair, what ``_flash_attention_kernel`` does with it.

    ``"full"``: loaded and computed without any mask; ``"masked"``: loaded, with the
    element-wise mask (the causal diagonal or the ragged end of the keys);
    ``"skipped"``: never loaded, because no query of the tile may see any of its keys.
    The bounds are the kernel's: with ``diag = S_k − S_q`` (bottom-right alignment, query
    ``i`` sees keys ``j ≤ i + diag``), query tile ``m`` runs mask-free up to
    ``⌊min(max(m·BLOCK_M + diag + 1, 0), S_k) / BLOCK_N⌋ · BLOCK_N`` and stops at
    ``min(max((m+1)·BLOCK_M + diag, 0), S_k)``.
    """
    for name, v in (("S_q", S_q), ("S_k", S_k), ("BLOCK_M", BLOCK_M), ("BLOCK_N", BLOCK_N)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    n_m, n_n = math.ceil(S_q / BLOCK_M), math.ceil(S_k / BLOCK_N)
    rows = []
    for m in range(n_m):
        first_row = m * BLOCK_M
        if causal:
            diag = S_k - S_q
            full_end = min(max(first_row + diag + 1, 0), S_k) // BLOCK_N * BLOCK_N
            end = min(max(first_row + BLOCK_M + diag, 0), S_k)
        else:
            full_end, end = S_k // BLOCK_N * BLOCK_N, S_k
        rows.append([FULL if (n + 1) * BLOCK_N <= full_end else MASKED if n * BLOCK_N < end else SKIPPED
                     for n in range(n_n)])
    return rows


def tile_counts(S_q: int, S_k: int, BLOCK_M: int, BLOCK_N: int, causal: bool = True) -> dict[str, int]:
    """How many (query tile, key tile) pairs ``tile_map`` puts in each class."""
    flat = [t for row in tile_map(S_q, S_k, BLOCK_M, BLOCK_N, causal) for t in row]
    return {kind: flat.count(kind) for kind in (FULL, MASKED, SKIPPED)}


# ----------------------------------------------------------------------------
# Measurements (GPU only)
# ----------------------------------------------------------------------------

def _impl_fn(impl: str, q, k, v, causal: bool):
    if impl == NAIVE:
        from ..reference import naive_attention
        return lambda: naive_attention(q, k, v, causal=causal)
    if impl == SDPA:
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if impl == FLASH:
        from ..kernels import flash_attention
        return lambda: flash_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")


def peak_extra_bytes(fn) -> int:
    """Most memory allocated during one call of ``fn`` beyond what was allocated before it (GPU only)."""
    measure._require_gpu("peak_extra_bytes")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def _free_bytes() -> int:
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    return free


def sweep(seq_lens=SEQ_LENS, B: int = PARAMS["B"], H: int = PARAMS["H"], D: int = PARAMS["D"],
          dtype=None, causal: bool = PARAMS["causal"], impls=IMPLS, skipped: list | None = None) -> list[dict]:
    """Time and peak memory of each implementation at each ``S`` in ``seq_lens`` (GPU only).

    Returns records ``{S, impl, us, TFLOPs, peak_bytes}``. The naive version is left
    out at sizes where its score matrices would not fit in free memory (or where it
    runs out of memory anyway); each such size is appended to ``skipped`` (if given)
    as ``{S, impl, reason}``. ``dtype`` defaults to ``device.default_dtype()``.
    """
    measure._require_gpu("sweep")
    dtype = device.default_dtype() if dtype is None else device.dtype_from_name(dtype)
    skipped = [] if skipped is None else skipped
    records = []
    for S in seq_lens:
        q, k, v = (torch.randn(B, H, S, D, device=device.DEVICE, dtype=dtype) for _ in range(3))
        flops = roofline.attention_flops(B, H, S, S, D, causal)
        for impl in impls:
            if impl == NAIVE:
                need = naive_peak_bytes(B, H, S, S, D, dtype, causal)
                free = _free_bytes()
                if need > 0.85 * free:
                    skipped.append({"S": S, "impl": impl,
                                    "reason": f"needs ≈{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"})
                    continue
            fn = _impl_fn(impl, q, k, v, causal)
            try:
                fn()                                  # compile / autotune / allocate workspaces first
                peak = peak_extra_bytes(fn)
                us = measure.bench_us(fn)
            except torch.OutOfMemoryError as err:
                torch.cuda.empty_cache()
                skipped.append({"S": S, "impl": impl, "reason": f"out of memory ({str(err).splitlines()[0]})"})
                continue
            records.append({"S": S, "impl": impl, "us": us, "TFLOPs": flops / us / 1e6, "peak_bytes": peak})
        del q, k, v
    return records


def time_naive_steps(S: int = STEPS_S, B: int = PARAMS["B"], H: int = PARAMS["H"], D: int = PARAMS["D"],
                     dtype=None, causal: bool = PARAMS["causal"]) -> list[dict]:
    """Each step of ``naive_attention`` timed on its own (GPU only): ``{step, flops, bytes, us}``,
    with the FLOPs and bytes of ``naive_steps``."""
    measure._require_gpu("time_naive_steps")
    from ..reference import causal_mask

    dtype = device.default_dtype() if dtype is None else device.dtype_from_name(dtype)
    q, k, v = (torch.randn(B, H, S, D, device=device.DEVICE, dtype=dtype) for _ in range(3))
    sm_scale = 1.0 / math.sqrt(D)
    scores = q @ k.transpose(-2, -1)
    hidden = ~causal_mask(S, S, device=q.device)
    fns = {
        "QKᵀ": lambda: q @ k.transpose(-2, -1),
        "scale": lambda: scores * sm_scale,
        "mask": lambda: scores.masked_fill(hidden, float("-inf")),
        "softmax": lambda: torch.softmax(scores, dim=-1),
        "PV": lambda: scores @ v,      # the probabilities' shape and dtype: the time is the same
    }
    out = []
    for op in naive_steps(B, H, S, D, dtype, causal):
        out.append({"step": op.name, "flops": op.flops, "bytes": op.bytes, "us": measure.bench_us(fns[op.name])})
    return out


def softmax_sweep(widths, dtype=None, total_bytes: int = 2**28) -> list[dict]:
    """GB/s of ``kernels.softmax`` and ``torch.softmax`` on ``rows × width`` inputs of ``total_bytes``,
    and of a copy of a buffer of that size (``measure.copy_bandwidth``: the most a kernel that reads
    and writes each byte once can reach) (GPU only): ``{width, rows, impl, us, GBps}``, bytes read +
    written. The softmaxes are timed with ``measure.bench_us`` (L2 flushed), the copy as
    ``measure.copy_bandwidth`` times it (L2 warm): for inputs larger than the L2, as here, nearly
    the same thing."""
    measure._require_gpu("softmax_sweep")
    from ..kernels import softmax

    dtype = device.default_dtype() if dtype is None else device.dtype_from_name(dtype)
    esize = roofline.bytes_per_element(dtype)
    out = []
    for width in widths:
        rows = max(1, total_bytes // (width * esize))
        x = torch.randn(rows, width, device=device.DEVICE, dtype=dtype)
        nbytes = 2 * rows * width * esize
        for impl, fn in (("triton softmax", lambda: softmax(x)),
                         ("torch.softmax", lambda: torch.softmax(x, dim=-1))):
            us = measure.bench_us(fn)
            out.append({"width": width, "rows": rows, "impl": impl, "us": us, "GBps": nbytes / us / 1e3})
        del x
        copy = measure.copy_bandwidth(rows * width * esize, dtype)
        out.append({"width": width, "rows": rows, "impl": COPY, "us": copy["us"], "GBps": copy["GBps"]})
    return out


def run(seq_lens=SEQ_LENS, steps_S: int = STEPS_S) -> dict:
    """The shipped measurement: the sweep at ``PARAMS`` and the naive steps at ``steps_S`` (GPU only)."""
    measure._require_gpu("attention_sweep.run")
    params = dict(PARAMS)
    if not device.supports_bf16():
        params["dtype"] = "float16"
    dtype = device.dtype_from_name(params["dtype"])
    skipped: list[dict] = []
    records = sweep(seq_lens, params["B"], params["H"], params["D"], dtype, params["causal"], skipped=skipped)
    steps = time_naive_steps(steps_S, params["B"], params["H"], params["D"], dtype, params["causal"])
    return {
        "provenance": measure.provenance(),
        "timing": "triton.testing.do_bench, L2 flushed, median; peak memory: "
                  "torch.cuda.max_memory_allocated during one call minus the memory allocated before it",
        "params": params,
        "records": records,
        "skipped": skipped,
        "naive_steps": {"S": steps_S, "records": steps},
    }


#: attention_sweep_<gpu>.json
SCHEMA = measure.Schema(
    "attention sweep file",
    keys=("params", "records", "params.dtype", "params.causal"),
    numbers=("params.B", "params.H", "params.D"),
    records=(
        measure.Records("records", numbers=("S", "us", "TFLOPs", "peak_bytes"), keys=("impl",)),
        measure.Records("naive_steps.records", numbers=("flops", "bytes", "us"), keys=("step",), optional=True),
    ),
)


def validate(doc: dict) -> None:
    """Raise ValueError naming the first thing that does not follow the file's layout: ``SCHEMA``,
    known implementations, and SDPA and ours measured at every sequence length."""
    measure.validate(doc, SCHEMA)

    def need(cond, what):
        if not cond:
            raise ValueError(f"{SCHEMA.name}: {what}")

    for i, r in enumerate(doc["records"]):
        need(r["impl"] in IMPLS, f"records[{i}]: impl {r['impl']!r} not one of {IMPLS}")
    every_S = {r["S"] for r in doc["records"]}
    for impl in (SDPA, FLASH):
        need({r["S"] for r in doc["records"] if r["impl"] == impl} == every_S, f"{impl} must be measured at every S")


def main(argv=None) -> None:
    """``python -m infer_lib.experiments.attention_sweep --out-dir DIR``: measure and write ``DIR/attention_sweep_<gpu>.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m infer_lib.experiments.attention_sweep",
        description="Time and peak memory of naive attention, SDPA and the Triton FlashAttention "
                    "kernel against sequence length (chapter 4); writes attention_sweep_<gpu>.json.",
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for attention_sweep_<gpu>.json")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS),
                        help=f"sequence lengths (default: {' '.join(map(str, SEQ_LENS))})")
    args = parser.parse_args(argv)
    if not device.HAS_GPU:
        parser.exit(2, "python -m infer_lib.experiments.attention_sweep needs a CUDA GPU: timings of the CPU say "
                       "nothing about GPU performance. The shipped reference measurement is "
                       "infer_lib/data/attention_sweep_h100_sxm.json.\n")
    t0 = time.perf_counter()
    payload = run(tuple(args.seq_lens))
    validate(payload)
    path = measure.save(payload, args.out_dir / f"attention_sweep_{measure.gpu_key()}.json")
    p = payload["params"]
    print(f"{payload['provenance']['gpu']}, B={p['B']} H={p['H']} D={p['D']} {p['dtype']} "
          f"{'causal' if p['causal'] else 'full'}, {time.perf_counter() - t0:.0f} s:")
    for r in payload["records"]:
        print(f"  S={r['S']:6d} {r['impl']:24s} {r['us']:10.1f} µs {r['TFLOPs']:7.1f} TFLOP/s "
              f"{r['peak_bytes'] / 2**20:10.1f} MiB")
    for s in payload["skipped"]:
        print(f"  S={s['S']:6d} {s['impl']:24s} skipped: {s['reason']}")
    for r in payload["naive_steps"]["records"]:
        print(f"  naive step {r['step']:8s} at S={payload['naive_steps']['S']}: {r['us']:9.1f} µs")
    print(f"  -> {path}")


if __name__ == "__main__":
    main()
