"""Chapter 8's exercise checks: right answers pass, `...` is "not done yet", typical slips get
their hint, and no hint gives the answer away.

The right answers are worked out here as a learner would: the launch from the indexing of
``cuda_kernels``' kernels, the warp from its warp size, the bytes by counting the tensors each
kernel reads and writes (and checked against ``experiments.fusion.traffic_bytes``). The kernel of
8.4 runs in Numba's CUDA simulator without a GPU (compiled on one); its tests are skipped where
numba-cuda is not installed.
"""

import functools
import importlib.util
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import (assert_not_attempted as _assert_not_attempted, gives_away as _gives_away,
                      hint_matching as _hint)
from infer_lib import hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch08
from infer_lib.experiments import fusion

NEEDS_NUMBA = pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                                 reason="numba-cuda is not installed (pip install numba-cuda)")
WARP = 32                # what the chapter teaches; test_constants_are_cuda_kernels' checks it
MAX_BLOCK = 1024


def _after_number(hint: str) -> str:
    """What follows the reader's own number, which a hint echoes first."""
    return hint.split(" is ", 1)[1]


# --- 8.1 -------------------------------------------------------------------------------

def test_launch(capsys):
    n, tpb = ch08.LAUNCH["n"], ch08.LAUNCH["threads_per_block"]
    b, t = ch08.LAUNCH["block"], ch08.LAUNCH["thread"]
    blocks, index = math.ceil(n / tpb), b * tpb + t
    ch08.launch(blocks, index)
    out = capsys.readouterr().out
    assert "✅ Exercise 8.1 (blocks): correct." in out
    assert "✅ Exercise 8.1 (index): correct." in out
    ch08.launch(float(blocks), torch.tensor(index))
    assert capsys.readouterr().out.count("✅") == 2
    ch08.launch(..., ...)
    _assert_not_attempted(capsys, "Exercise 8.1")
    ch08.launch(blocks, ...)
    _assert_not_attempted(capsys, r"8\.1 \(index\)")
    hints = [
        _hint(ch08.launch, n // tpb, ..., match="rounds down"),
        _hint(ch08.launch, blocks + 1, ..., match="one block too many"),
        _hint(ch08.launch, n, ..., match="counts threads"),
        _hint(ch08.launch, blocks * tpb, ..., match="counts the threads the grid launches"),
        _hint(ch08.launch, math.ceil(n / MAX_BLOCK), ..., match="blocks of 1024"),
        _hint(ch08.launch, math.ceil(n / WARP), ..., match="warp size"),
        _hint(ch08.launch, 2 * blocks, ..., match="too large"),
        _hint(ch08.launch, ..., t * tpb + b, match="swaps block and thread"),
        _hint(ch08.launch, ..., b * tpb, match="add threadIdx.x"),
        _hint(ch08.launch, ..., b + t, match="multiply it by the threads per block"),
        _hint(ch08.launch, ..., b * MAX_BLOCK + t, match="not the maximum"),
        _hint(ch08.launch, ..., b * WARP + t, match="not the warp size"),
        _hint(ch08.launch, ..., (b - 1) * tpb + t, match="numbered from 0"),
        _hint(ch08.launch, ..., index + 1, match="count from 0"),
        _hint(ch08.launch, ..., index // 2, match="too small"),
    ]
    for hint in hints:
        assert not _gives_away(_after_number(hint), blocks, index), hint
    _hint(ch08.launch, n / tpb, ..., match="round the division up")
    _hint(ch08.launch, "many", ..., match="whole number of blocks", error=TypeError)
    _hint(ch08.launch, ..., index + 0.5, match="not a whole number")


# --- 8.2 -------------------------------------------------------------------------------

def test_warp_of(capsys):
    tpb, t = ch08.WARPS["threads_per_block"], ch08.WARPS["thread"]
    warp, lane = t // WARP, t % WARP
    ch08.warp_of(warp, lane)
    out = capsys.readouterr().out
    assert "✅ Exercise 8.2 (warp): correct." in out and "✅ Exercise 8.2 (lane): correct." in out
    ch08.warp_of(..., ...)
    _assert_not_attempted(capsys, "Exercise 8.2")
    ch08.warp_of(warp, ...)
    _assert_not_attempted(capsys, r"8\.2 \(lane\)")
    hints = [
        _hint(ch08.warp_of, t // 64, ..., match="wavefront of AMD"),
        _hint(ch08.warp_of, t // 16, ..., match="not 16"),
        _hint(ch08.warp_of, lane, ..., match="that is the lane"),
        _hint(ch08.warp_of, warp + 1, ..., match="numbered from 0"),
        _hint(ch08.warp_of, tpb // WARP, ..., match="how many warps the whole block has"),
        _hint(ch08.warp_of, t, ..., match="that is threadIdx.x"),
        _hint(ch08.warp_of, ..., warp, match="that is the warp"),
        _hint(ch08.warp_of, ..., lane + 1, match="numbered from 0"),
        _hint(ch08.warp_of, ..., t, match="place in the block"),
        _hint(ch08.warp_of, ..., warp * WARP, match="the warp's first thread"),
        _hint(ch08.warp_of, ..., lane + 3, match="too large"),
    ]
    for hint in hints:
        rest = _after_number(hint)
        assert f" {warp} " not in rest and f" {lane} " not in rest, hint
    _hint(ch08.warp_of, t / WARP, ..., match="quotient, rounded down")
    _hint(ch08.warp_of, ..., [lane], match="whole number", error=TypeError)


# --- 8.3 -------------------------------------------------------------------------------

def _MB(tensors, weight=True, itemsize=None, weight_matrix=False, unit=1e6):
    """MB that ``tensors`` row-sized tensors crossing HBM move, plus the weight vector once."""
    rows, cols = ch08.FUSION["rows"], ch08.FUSION["cols"]
    itemsize = itemsize or getattr(torch, ch08.FUSION["dtype"]).itemsize
    tensor = rows * cols * itemsize
    w = tensor if weight_matrix else cols * itemsize if weight else 0
    return (tensors * tensor + w) / unit


UNFUSED = 5     # the add reads x and r and writes h; F.rms_norm reads h and writes the output
FUSED = 4       # one kernel reads x and r, writes h and the output


def test_fusion_bytes(capsys):
    unfused, fused = _MB(UNFUSED), _MB(FUSED)
    ch08.fusion_bytes(unfused, fused)
    out = capsys.readouterr().out
    assert "✅ Exercise 8.3 (unfused): correct." in out
    assert "✅ Exercise 8.3 (fused): correct." in out
    ch08.fusion_bytes(round(unfused), round(fused))                   # whole MB: right
    assert capsys.readouterr().out.count("✅") == 2
    ch08.fusion_bytes(..., ...)
    _assert_not_attempted(capsys, "Exercise 8.3")
    ch08.fusion_bytes(unfused, ...)
    _assert_not_attempted(capsys, r"8\.3 \(fused\)")
    hints = [
        _hint(ch08.fusion_bytes, fused, ..., match="the fused kernel's traffic"),
        _hint(ch08.fusion_bytes, _MB(3), ..., match="leaves out tensors"),
        _hint(ch08.fusion_bytes, _MB(2, weight=False), ..., match="only the writes"),
        _hint(ch08.fusion_bytes, _MB(UNFUSED, weight_matrix=True), ..., match="full-size tensor too many"),
        _hint(ch08.fusion_bytes, _MB(UNFUSED, itemsize=4), ..., match="fp32"),
        _hint(ch08.fusion_bytes, _MB(UNFUSED, unit=2**20), ..., match="MiB"),
        _hint(ch08.fusion_bytes, _MB(UNFUSED, unit=1e9), ..., match="that is GB"),
        _hint(ch08.fusion_bytes, _MB(UNFUSED, unit=1), ..., match="that is bytes"),
        _hint(ch08.fusion_bytes, unfused * 8, ..., match="bits"),
        _hint(ch08.fusion_bytes, unfused * 1.3, ..., match="too large"),
        _hint(ch08.fusion_bytes, ..., unfused, match="as much as the unfused sequence"),
        _hint(ch08.fusion_bytes, ..., _MB(FUSED, weight_matrix=True), match="unfused sequence"),
        _hint(ch08.fusion_bytes, ..., _MB(3), match="residual output"),
        _hint(ch08.fusion_bytes, ..., _MB(2), match="only the reads"),
        _hint(ch08.fusion_bytes, ..., _MB(2, weight=False), match="only the writes"),
        _hint(ch08.fusion_bytes, ..., _MB(FUSED, itemsize=4), match="fp32"),
        _hint(ch08.fusion_bytes, ..., _MB(FUSED, unit=2**20), match="MiB"),
        _hint(ch08.fusion_bytes, ..., fused * 0.7, match="too small"),
    ]
    for hint in hints:
        assert not _gives_away(_after_number(hint), unfused, fused), hint


def test_fusion_bytes_are_the_experiments():
    """The learner's count is what experiments.fusion records beside each measurement."""
    f = ch08.FUSION
    traffic = fusion.traffic_bytes(f["op"], f["rows"], f["cols"],
                                   getattr(torch, f["dtype"]).itemsize)
    assert traffic["unfused_bytes"] / 1e6 == pytest.approx(_MB(UNFUSED), rel=1e-12)
    assert traffic["fused_bytes"] / 1e6 == pytest.approx(_MB(FUSED), rel=1e-12)


# --- 8.4 (coding) ----------------------------------------------------------------------

RIGHT = """
def row_max(x, out):
    partial = cuda.shared.array(TPB, float32)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    acc = float32(-math.inf)
    for col in range(tid, x.shape[1], TPB):
        acc = max(acc, x[row, col])
    partial[tid] = acc
    cuda.syncthreads()
    stride = TPB // 2
    while stride > 0:
        if tid < stride:
            partial[tid] = max(partial[tid], partial[tid + stride])
        cuda.syncthreads()
        stride //= 2
    if tid == 0:
        out[row] = partial[0]
"""

#: the right kernel with a slip: (name, what is replaced, by what)
SLIPS = {
    "sum": [("float32(-math.inf)", "float32(0)"),
            ("acc = max(acc, x[row, col])", "acc += x[row, col]"),
            ("partial[tid] = max(partial[tid], partial[tid + stride])",
             "partial[tid] += partial[tid + stride]")],
    "zero start": [("float32(-math.inf)", "float32(0)")],
    "sum from -inf": [("acc = max(acc, x[row, col])", "acc += x[row, col]")],
    "minus one start": [("float32(-math.inf)", "float32(-1)")],
    "no stride": [("for col in range(tid, x.shape[1], TPB):\n        acc = max(acc, x[row, col])",
                   "if tid < x.shape[1]:\n        acc = max(acc, x[row, tid])")],
    "no tree": [("stride = TPB // 2", "stride = 0")],
    "half a tree": [("stride = TPB // 2", "stride = TPB // 4")],
    "one row": [("row = cuda.blockIdx.x", "row = 0")],
    "never writes": [("    if tid == 0:\n        out[row] = partial[0]\n", "")],
    "no barrier": [("cuda.syncthreads()", "pass")],
    "first element start": [("float32(-math.inf)", "x[row, 0]")],          # also right
}


def _source(slip=None) -> str:
    source = RIGHT
    for old, new in SLIPS[slip] if slip else ():
        assert old in source, (slip, old)
        source = source.replace(old, new)
    return source


@functools.lru_cache(maxsize=None)
def _kernel(slip=None, jit=True, tpb=ch08.ROW_MAX["threads_per_block"]):
    """The reader's kernel (with ``slip``), ``@cuda.jit`` or the plain function. (conftest
    imported infer_lib, whose device module switched the simulator on where there is no GPU.)"""
    from numba import cuda, float32

    scope = {"cuda": cuda, "float32": float32, "math": math, "TPB": tpb}
    exec(_source(slip), scope)
    return cuda.jit(scope["row_max"]) if jit else scope["row_max"]


@NEEDS_NUMBA
def test_row_max_kernel_right(capsys):
    for kernel in (_kernel(), _kernel(jit=False), _kernel("first element start")):
        assert ch08.row_max_kernel(kernel) is True
        assert "✅ Exercise 8.4 (row max): correct." in capsys.readouterr().out


@NEEDS_NUMBA
@pytest.mark.parametrize("slip, match", [
    ("sum", "the sum of each row"),
    ("zero start", "not at 0"),
    ("sum from -inf", "never rose above its start"),
    ("minus one start", "every element is negative"),
    ("no stride", "only the first threads_per_block columns"),
    ("no tree", "only thread 0's columns"),
    ("half a tree", "never combined"),
    ("one row", "not written for every row"),
    ("never writes", "out is never written"),
    ("no barrier", "cuda.syncthreads()"),
])
def test_row_max_kernel_slips(slip, match):
    hint = _hint(ch08.row_max_kernel, _kernel(slip), match=re.escape(match))
    assert "tid == 0:\n" not in hint and "partial[tid + stride])" not in hint, hint   # no code


def test_row_max_kernel_not_attempted(capsys):
    def stub(x, out):
        raise NotImplementedError

    def half_written(x, out):
        if x.shape[1] > 1:
            raise NotImplementedError
        out[0] = x[0, 0]

    for unattempted in (stub, half_written, ...):
        assert ch08.row_max_kernel(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out
    with pytest.raises(TypeError, match="decorated with @cuda.jit"):
        ch08.row_max_kernel(42)


@NEEDS_NUMBA
def test_row_max_kernel_stub_under_cuda_jit_is_not_launched(capsys):
    from numba import cuda

    @cuda.jit
    def row_max(x, out):
        raise NotImplementedError

    assert ch08.row_max_kernel(row_max) is False
    assert NOT_ATTEMPTED in capsys.readouterr().out
    with pytest.raises(ValueError, match="must be a power of two"):
        ch08.row_max_kernel(_kernel(), 48)


def test_without_numba_the_checks_import_and_the_kernel_check_says_what_to_install():
    code = """
        import importlib.util, sys
        _real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, package=None: (
            None if name.split(".")[0] in ("numba", "numba_cuda") else _real(name, package))
        from infer_lib.exercises import ch08
        print("numba imported:", sorted(m for m in sys.modules if m.split(".")[0] == "numba"))
        ch08.warp_of(200 // 32, 200 % 32)

        def stub(x, out):
            raise NotImplementedError

        def attempted(x, out):
            out[0] = x[0, 0]

        ch08.row_max_kernel(stub)
        try:
            ch08.row_max_kernel(attempted)
        except ImportError as err:
            print("ImportError:", err)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "numba imported: []" in out
    assert "✅ Exercise 8.2 (warp): correct." in out
    assert NOT_ATTEMPTED in out
    assert "ImportError:" in out and "pip install numba-cuda" in out


@NEEDS_NUMBA
def test_constants_are_cuda_kernels():
    """The checks and the kernels use one set of CUDA limits, hardware's."""
    from infer_lib import cuda_kernels as ck

    assert hardware.WARP_SIZE == ck.WARP_SIZE == WARP
    assert hardware.MAX_THREADS_PER_BLOCK == ck.MAX_THREADS_PER_BLOCK == MAX_BLOCK


def test_checks_hide_their_frames():
    for check in (ch08.launch, ch08.warp_of, ch08.fusion_bytes, ch08.row_max_kernel):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
