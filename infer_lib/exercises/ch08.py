"""Checks for chapter 8's exercises (the CUDA programming model and kernel fusion).

Each check computes its expected answer itself — from the constants of
``infer_lib.hardware`` (``WARP_SIZE``, ``MAX_THREADS_PER_BLOCK``, which ``cuda_kernels`` uses
too), the indexing of ``infer_lib.cuda_kernels``' kernels (``blockIdx.x * blockDim.x +
threadIdx.x``, a grid rounded up to whole blocks), the HBM traffic of
``infer_lib.experiments.fusion.traffic_bytes`` and, for the kernel the reader writes, NumPy's
``x.max(axis=1)`` — so the reader's cell does not give it away. The only numbers typed here are
the exercises' given inputs, named as in the exercise text. A check prints ✅ when the answer is
right, prints "not attempted yet" and returns while the answer is still ``...`` (or the kernel
still raises ``NotImplementedError``), and raises ``AssertionError`` with a hint when it is
wrong. A hint names the kind of slip (a grid not rounded up, block and thread swapped, the
maximum block size for this launch's, AMD's 64-wide wavefront for a warp, quotient and
remainder swapped, the intermediate's round trip, a weight vector counted as a matrix, fp32's
4 bytes, MiB for MB, a running max started at 0, a missing stride loop or barrier); it never
states the expected value.

The kernel of exercise 8.4 runs where ``infer_lib.cuda_kernels``' kernels run: compiled on a
GPU, in Numba's CUDA simulator without one. numba-cuda is optional: this module imports it
only inside that check, which says how to install it when it is missing.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .. import hardware
from ..experiments import fusion
from . import _not_attempted, check_function, check_number, check_part
from . import wrap_explanation as _wrap

REL = 0.02                 # relative tolerance of every answer in MB

# Exercise 8.1: a vector of n float32 elements added one thread per element (vector_add);
# which blocks the grid has and which element thread `thread` of block `block` adds
LAUNCH = {"n": 1_000_000, "threads_per_block": 256, "block": 1234, "thread": 77}

# Exercise 8.2: the warp and the lane of thread `thread` in a block of threads_per_block
WARPS = {"threads_per_block": 512, "thread": 200}

# Exercise 8.3: HBM bytes of residual add + RMSNorm, unfused (eager) and fused, in MB
FUSION = {"op": "add_rms_norm", "rows": 16384, "cols": 4096, "dtype": "bfloat16"}

# Exercise 8.4: the reader's row_max kernel, one block of threads_per_block threads per row
# (its shared array's size: a constant of the compiled kernel, so the reader's kernel uses it)
ROW_MAX = {"threads_per_block": 32}


def _whole(answer, name: str, what: str, fraction: str) -> int:
    """``answer`` as an int when it is a whole number (a one-element tensor too); TypeError for a
    non-number, AssertionError with the hint ``fraction`` for a fraction."""
    __tracebackhide__ = True
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        raise TypeError(f"{name}: expected {what}, got {type(answer).__name__} {answer!r}")
    if not (math.isfinite(answer) and answer == int(answer)):
        raise AssertionError(f"{name}: {answer!r} is not a whole number — {fraction}")
    return int(answer)


def _check_count(answer, want: int, *, name: str, what: str, fraction: str,
                 slips: list[tuple[int, str]], recheck: str, explain: str) -> bool:
    """A whole-number part: exact, the ``slips`` (value, hint) named, else too large or small."""
    __tracebackhide__ = True
    if answer is ... or answer is None:
        return _not_attempted(name, "replace its `...`")
    got = _whole(answer, name, what, fraction)
    if got == want:
        print(f"✅ {name}: correct. " + _wrap(name, explain))
        return True
    for value, hint in slips:
        if value != want and got == value:
            raise AssertionError(f"{name}: {got} is not right — {hint}")
    direction = "too large" if got > want else "too small"
    raise AssertionError(f"{name}: {got} is {direction}. {recheck}")


# --- 8.1 ---------------------------------------------------------------------------------

def launch(blocks, global_index) -> None:
    """Exercise 8.1: ``vector_add`` on ``LAUNCH["n"]`` float32 elements with
    ``LAUNCH["threads_per_block"]`` threads per block, one thread per element: how many blocks
    the grid has, and the global index ``blockIdx.x * blockDim.x + threadIdx.x`` of thread
    ``LAUNCH["thread"]`` of block ``LAUNCH["block"]`` (the element it adds)."""
    __tracebackhide__ = True
    n, tpb, b, t = LAUNCH["n"], LAUNCH["threads_per_block"], LAUNCH["block"], LAUNCH["thread"]
    big = hardware.MAX_THREADS_PER_BLOCK
    warp = hardware.WARP_SIZE
    grid = -(-n // tpb)                                # whole blocks, the last one partly idle
    idle = grid * tpb - n
    _check_count(
        blocks, grid, name="Exercise 8.1 (blocks)", what="a whole number of blocks",
        fraction="a grid has whole blocks: round the division up (the last block is partly idle)",
        slips=[
            (n // tpb, "that rounds down: the last n mod threads_per_block elements would get no "
                       "thread — round up"),
            (grid + 1, "one block too many: rounding n / threads_per_block up is enough; the "
                       "bounds guard handles the last, partly idle block"),
            (n, "that counts threads (one per element); the question asks for blocks of "
                "threads_per_block threads"),
            (grid * tpb, "that counts the threads the grid launches; the question asks for "
                         "blocks"),
            (-(-n // big), f"that assumes blocks of {big} threads, the most a block may have; "
                           "this launch uses threads_per_block"),
            (-(-n // warp), f"that divides by the warp size ({warp}); a block here has "
                            "threads_per_block threads"),
        ],
        recheck="Divide the elements by the threads of one block, and round up.",
        explain=f"The grid launches {grid * tpb:,} threads; the last {idle} fail the guard "
                "`if i < n` and do nothing.")
    index = b * tpb + t
    _check_count(
        global_index, index, name="Exercise 8.1 (index)", what="a whole number (an index)",
        fraction="an index is whole: blockIdx.x * blockDim.x + threadIdx.x",
        slips=[
            (t * tpb + b, "that swaps block and thread: the blocks before this one hold "
                          "blockIdx.x * blockDim.x threads, and threadIdx.x counts within the "
                          "block"),
            (b * tpb, "that is the first thread of the block: add threadIdx.x"),
            (b + t, "blockIdx.x counts blocks, not threads: multiply it by the threads per "
                    "block"),
            (b * big + t, f"blockDim.x is this launch's threads per block, not the maximum of "
                          f"{big}"),
            (b * warp + t, f"blockDim.x is this launch's threads per block, not the warp size "
                           f"({warp})"),
            ((b - 1) * tpb + t, "blocks are numbered from 0, as threads are: block 0 holds the "
                                "first elements"),
            (b * tpb + t + 1, "indices count from 0: thread 0 of block 0 adds element 0"),
            (b * tpb + t - 1, "indices count from 0: thread 0 of block 0 adds element 0, "
                              "thread 1 element 1"),
        ],
        recheck="Count the threads of the blocks before this one, then add its place in its "
                "block.",
        explain=("It is below n, so the guard lets the thread through: it adds x[i] + y[i]."
                 if index < n else "It is at or past n: the guard stops the thread."))


# --- 8.2 ---------------------------------------------------------------------------------

def warp_of(warp, lane) -> None:
    """Exercise 8.2: in a block of ``WARPS["threads_per_block"]`` threads, the warp (of its
    block, from 0) and the lane (its place in the warp, from 0: ``cuda.laneid``) of thread
    ``threadIdx.x = WARPS["thread"]``, as ``cuda_kernels.warp_divergence_demo`` records them."""
    __tracebackhide__ = True
    W = hardware.WARP_SIZE
    tpb, t = WARPS["threads_per_block"], WARPS["thread"]
    w, ln = t // W, t % W
    wrong_size = [(64, f"a warp has {W} threads on every NVIDIA GPU; 64 is the wavefront of "
                       "AMD's GPUs"),
                  (16, f"a warp has {W} threads on every NVIDIA GPU, not 16 (a half-warp)")]
    _check_count(
        warp, w, name="Exercise 8.2 (warp)", what="a whole number (a warp)",
        fraction="a thread is in one warp: take the quotient, rounded down (//)",
        slips=[(t // size, hint) for size, hint in wrong_size] + [
            (ln, "that is the lane, the remainder of the division; the warp is the quotient"),
            (w + 1, f"warps are numbered from 0: threads 0 to {W - 1} are warp 0"),
            (tpb // W, "that is how many warps the whole block has; the question asks which one "
                       "this thread is in"),
            (t, f"that is threadIdx.x; a warp groups threads {W} at a time"),
        ],
        recheck="Divide threadIdx.x by the warp size and keep the quotient.",
        explain=f"Thread {t} is in warp {w} of the block's {tpb // W}, which holds threads "
                f"{w * W}–{w * W + W - 1}.")
    _check_count(
        lane, ln, name="Exercise 8.2 (lane)", what="a whole number (a lane)",
        fraction="a lane is a whole place in the warp: take the remainder (%)",
        slips=[(t % size, hint) for size, hint in wrong_size] + [
            (w, "that is the warp, the quotient of the division; the lane is the remainder"),
            (ln + 1, "lanes are numbered from 0: the warp's first thread is lane 0"),
            (t, "that is threadIdx.x, the place in the block; the lane is the place in the warp"),
            (w * W, "that is the warp's first thread; the lane counts from it"),
        ],
        recheck="Take the remainder of threadIdx.x divided by the warp size.",
        explain="lane = threadIdx.x % warp size, what cuda.laneid tells the thread.")


# --- 8.3 ---------------------------------------------------------------------------------

def fusion_bytes(unfused_MB, fused_MB) -> None:
    """Exercise 8.3: the HBM traffic of ``FUSION["op"]`` (residual add + RMSNorm: ``h = x + r``,
    then ``rms_norm(h) · weight``, returning ``h`` and the normed output) on a
    ``FUSION["rows"] × FUSION["cols"]`` activation in ``FUSION["dtype"]``, in MB (1e6 bytes):
    the unfused eager sequence (``h`` written to HBM, then read back by ``F.rms_norm``) and the
    fused kernel, as ``experiments.fusion.traffic_bytes`` counts them (each output written and
    each input read once per kernel, the weight vector once)."""
    __tracebackhide__ = True
    op, rows, cols = FUSION["op"], FUSION["rows"], FUSION["cols"]
    itemsize = getattr(torch, FUSION["dtype"]).itemsize
    MB = 1e6
    traffic = fusion.traffic_bytes(op, rows, cols, itemsize)
    unfused, fused = traffic["unfused_bytes"], traffic["fused_bytes"]
    (fr, fw), (ur, uw), _ = fusion.TRAFFIC[op]
    tensor = rows * cols * itemsize                    # one row-sized tensor, read or written
    weight = cols * itemsize if op in fusion.WEIGHTED else 0
    fp32 = fusion.traffic_bytes(op, rows, cols, torch.float32.itemsize)
    units = [
        (2**20 / MB, "that is MiB (2**20 bytes); the question asks for MB (1e6 bytes)"),
        (1 / MB, "that is bytes; the question asks for MB (1e6 bytes)"),
        (1e3, "that is GB; the question asks for MB (1e6 bytes)"),
    ]

    def slips(want: int, key: str, own: list[tuple[float, str]]) -> list[tuple[float, str]]:
        common = [
            (fp32[key], f"that counts 4-byte elements (fp32); {FUSION['dtype']} elements are "
                        f"{itemsize} bytes"),
            (want + tensor - weight, "one full-size tensor too many: the weight is a vector of "
                                     "one element per column, and each kernel reads each of "
                                     "its inputs once"),
            (want * 8, "off by a factor of 8 — that counts bits; the question asks for bytes "
                       "(in MB)"),
        ]
        scaled = [(want / MB / u, h) for u, h in units]
        return [(v / MB, h) for v, h in own + common] + scaled

    unfused_slips = slips(unfused, "unfused_bytes", [
        (fused, "that is the fused kernel's traffic: in the eager sequence h is written by the "
                "add and read back by F.rms_norm"),
        (ur * tensor + weight, "that leaves out tensors that cross HBM (only the reads, or h "
                               "left out): count what each of the two kernels reads and writes, "
                               "h included"),
        (uw * tensor, "that counts only the writes: what the two kernels read crosses HBM too"),
    ])
    fused_slips = slips(fused, "fused_bytes", [
        (unfused, "that is as much as the unfused sequence moves: the fused kernel keeps h "
                  "on chip between the add and the norm (and the weight is one vector)"),
        ((fr + fw - 1) * tensor + weight, "that leaves out the residual output: the fused kernel "
                                          "also writes h, which the next layer adds to"),
        (fr * tensor + weight, "that counts only the reads (or only the writes): count both"),
    ])
    check_part(check_number, unfused_MB, unfused / MB, name="Exercise 8.3 (unfused)", unit="MB",
               rel=REL, mistakes=[(v, h) for v, h in unfused_slips
                                  if not math.isclose(v, unfused / MB, rel_tol=REL)],
               explain=_wrap("Exercise 8.3 (unfused)", "h makes a round trip through HBM: "
                             "written by the add, read back by the norm."))
    check_part(check_number, fused_MB, fused / MB, name="Exercise 8.3 (fused)", unit="MB",
               rel=REL, mistakes=[(v, h) for v, h in fused_slips
                                  if not math.isclose(v, fused / MB, rel_tol=REL)],
               explain=_wrap("Exercise 8.3 (fused)",
                             f"Unfused moves {unfused / fused:.2f}× these bytes: were both at the "
                             "copy bandwidth, fusion would be that much faster (§8.3 measures "
                             "more: eager's norm itself runs below it)."))


# --- 8.4 (coding) ------------------------------------------------------------------------

def _names(code) -> set[str]:
    """Every global and attribute name a function's code uses, nested code included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


def _row_labels(tpb: int) -> dict[int, str]:
    return {0: "all negative, its max past the first 2·threads_per_block columns",
            1: "mixed signs, its max past the first threads_per_block columns",
            2: "mixed signs, its max among the first threads_per_block columns",
            3: "all negative, its max among the first threads_per_block columns"}


def _labelled(tpb: int) -> np.ndarray:
    """Rows of 3·tpb + 5 quarters (sums of them are exact in float32) whose maximum sits where
    each slip misses it: past the first tpb columns, off thread 0's columns, in the upper and
    the lower half of the threads (a tree that stops early), below zero."""
    rng = np.random.default_rng(8)
    width = 3 * tpb + 5
    x = rng.integers(-160, 160, size=(4, width)) / 4
    x[0] = -np.abs(x[0]) - 2
    x[3] = -np.abs(x[3]) - 2
    at = (3 * tpb - 1, tpb + tpb // 2 + 1, max(tpb - 2, 0), max(tpb // 2 - 1, 0))
    x[0, at[0]] = x[3, at[3]] = -1.25                  # every other element is at most -2
    x[1, at[1]] = x[2, at[2]] = 60                     # every other element is below 40
    return x.astype(np.float32)


def _row_max_slips(x: np.ndarray, tpb: int) -> list[tuple[np.ndarray, str]]:
    """What the usual slips make of ``x``, each with its hint."""
    head = x[:, :tpb]
    per_thread = [x[:, t::tpb] for t in range(min(tpb, x.shape[1]))]
    start = ("start each thread's running max below every element (-inf), not at 0: the "
             "rows that are all negative come out as 0")
    no_stride = ("only the first threads_per_block columns are read: a row is wider than the "
                 "block, so each thread strides over it (columns tid, tid + TPB, …)")
    return [
        (x.sum(axis=1), "that is the sum of each row: combine with max, in the loop over the "
                        "columns and in the tree"),
        (head.sum(axis=1), "that is the sum of the first threads_per_block columns: combine with "
                           "max, and stride over the whole row"),
        (np.max([p.sum(axis=1) for p in per_thread], axis=0),
         "that mixes sum and max: the loop over the columns sums; take the max there too"),
        (np.sum([p.max(axis=1) for p in per_thread], axis=0),
         "that mixes sum and max: the tree reduction adds; take the max there too"),
        (np.maximum(x.max(axis=1), 0), start),
        (head.max(axis=1), no_stride),
        (np.maximum(head.max(axis=1), 0), no_stride + "; and " + start),
        (x[:, ::tpb].max(axis=1), "only thread 0's columns reach out[row]: the tree reduction "
                                  "must combine every thread's partial max before thread 0 "
                                  "writes partial[0]"),
    ]


def _diagnose(got: np.ndarray, x: np.ndarray, tpb: int, name: str) -> None:
    """Raise with the hint for the labelled case's result ``got`` when it is not the row max."""
    __tracebackhide__ = True
    want = x.max(axis=1)
    if np.array_equal(got, want):
        return
    labels = _row_labels(tpb)
    if np.isnan(got).all():
        raise AssertionError(f"{name}: out is never written (it still holds the NaN the check "
                             "put there): after the reduction, one thread of each block "
                             "(tid == 0) writes partial[0] to out[row]")
    if np.isneginf(got).all():
        raise AssertionError(f"{name}: every row's max came out -inf: the running max never rose "
                             "above its start — combine the elements with max(acc, x[row, col]), "
                             "not with +=")
    for slip, hint in _row_max_slips(x, tpb):
        if not np.array_equal(slip, want) and np.allclose(got, slip, rtol=1e-6, atol=1e-6):
            raise AssertionError(f"{name}: {hint}.")
    wrong = [int(r) for r in np.flatnonzero(~(got == want))]
    rows = "; ".join(f"row {r} ({labels[r]})" for r in wrong)
    if np.isnan(got[wrong]).any():
        raise AssertionError(f"{name}: out[row] is not written for every row — {rows}: each "
                             "block writes its own row, out[cuda.blockIdx.x]")
    negative = {r for r in labels if (x[r] < 0).all()}
    if set(wrong) <= negative and (got[wrong] > want[wrong]).all():
        raise AssertionError(f"{name}: too large where every element is negative — {rows}: "
                             "start each thread's running max below every element (-inf)")
    foreign = [r for r in wrong if not (x[r] == got[r]).any()]
    if foreign:
        raise AssertionError(
            f"{name}: out holds values that are in no column of their row — "
            + "; ".join(f"row {r} ({labels[r]})" for r in foreign)
            + ": a thread read a slot of the shared array before it was written. Does every "
              "thread write its slot (also one with no column), and does every block wait at "
              "cuda.syncthreads() after those writes and after each level of the tree?")
    raise AssertionError(f"{name}: a smaller element than the max — {rows}: some threads' "
                         "partial maxima were never combined. Recheck the tree (stride from "
                         "TPB // 2 down to 1, tid < stride) and the barriers between its levels.")


def _launch(kernel, x: np.ndarray, tpb: int) -> np.ndarray:
    """``kernel[rows, tpb](x, out)`` with ``out`` first filled with NaN, so a row the kernel does
    not write shows; on the GPU, or in the simulator without one."""
    from numba import cuda

    d_out = cuda.to_device(np.full(x.shape[0], np.nan, np.float32))
    kernel[x.shape[0], tpb](cuda.to_device(np.ascontiguousarray(x)), d_out)
    return d_out.copy_to_host()


def row_max_kernel(kernel, threads_per_block: int = ROW_MAX["threads_per_block"]) -> bool:
    """Exercise 8.4: the reader's numba-cuda kernel ``row_max(x, out)``, one block of
    ``threads_per_block`` threads per row of a 2-D float32 ``x``, writing the largest element of
    row ``cuda.blockIdx.x`` to ``out[row]`` — ``cuda_kernels.row_sum``'s stride loop, shared
    array and tree reduction, with max. ``kernel`` is the ``@cuda.jit`` kernel (a plain Python
    function is compiled here with ``cuda.jit``); its shared array holds ``threads_per_block``
    values (``ROW_MAX["threads_per_block"]``, a power of two).

    A kernel whose code still names ``NotImplementedError`` counts as not attempted: the check
    reads its bytecode and launches nothing (on a GPU a kernel that raises compiles and does
    nothing). Otherwise it is launched (compiled on a GPU, in Numba's CUDA simulator without
    one), first on a labelled case that names the usual slips, then on fresh random inputs of
    odd widths, all-negative rows among them, against ``x.max(axis=1)`` (``check_function``)."""
    __tracebackhide__ = True
    name = "Exercise 8.4 (row max)"
    stub = "write the kernel (its body still raises NotImplementedError)"
    if kernel is ... or kernel is None:
        return _not_attempted(name, stub)
    code = getattr(getattr(kernel, "py_func", kernel), "__code__", None)
    if code is None:
        raise TypeError(f"{name}: expected the kernel, a function decorated with @cuda.jit, got "
                        f"{type(kernel).__name__}")
    names = _names(code)
    if "NotImplementedError" in names:
        return _not_attempted(name, stub)

    from .. import cuda_kernels  # needs numba-cuda: says how to install it where it is missing
    from numba import cuda

    tpb = cuda_kernels._check_threads(name, threads_per_block, power_of_two=True)
    if "shared" in names and not any(n.startswith(("syncthreads", "syncwarp")) for n in names):
        raise AssertionError(f"{name}: the threads of a block share an array but never wait for "
                             "each other: without cuda.syncthreads() a thread can read a slot "
                             "before its owner wrote it (the simulator may get lucky; a GPU "
                             "may not). Wait after writing the partial maxima and after each "
                             "level of the tree.")
    if "cuda" not in type(kernel).__module__:          # a plain function (or a CPU @njit)
        kernel = cuda.jit(getattr(kernel, "py_func", kernel))

    labelled = _labelled(tpb)
    _diagnose(_launch(kernel, labelled, tpb), labelled, tpb, name)

    g = torch.Generator().manual_seed(84)
    cases = []
    for rows, cols in ((2, 1), (3, tpb + 13), (2, 3 * tpb + 4)):
        x = torch.randn(rows, cols, generator=g)
        x[0] = -x[0].abs() - 0.5                       # a row of negative numbers only
        cases.append((x,))
    return check_function(
        lambda x: torch.from_numpy(_launch(kernel, x.numpy(), tpb)),
        lambda x: x.amax(dim=1), cases, name=name, atol=0, rtol=0,
        explain=_wrap(name, f"One block per row; a tree over {tpb} partial maxima takes "
                            f"log2({tpb}) = {tpb.bit_length() - 1} steps, a barrier after each. "
                            "In Triton, tl.max(x, axis=1) writes this reduction for you."))
