"""Tests of the fused residual add + RMSNorm (infer_lib.kernels.add_rms_norm_kernel): the pair
equals PyTorch's unfused ``h = x + residual; F.rms_norm(h)``, on every path, NaN and ±inf included."""

import pytest
import torch
import torch.nn.functional as F

from conftest import (DTYPES, GPU_ONLY, IEEE_WARNINGS_EXPECTED, LOOPED, ONE_ROW, SEVERAL_ROWS, TOLERANCES,
                      assert_close_with_nans, norm_path as _path, norm_width as _width, torch_rms_norm)
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.kernels.add_rms_norm_kernel import MAX_FUSED_BLOCK, add_rms_norm, add_rms_norm_ref

DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
LOOP_BLOCK = _tuning.NORM_LOOP.kwargs["BLOCK"]


SHAPES = [(1,), (77,), (3, 423), (2, 5, 77), (37, 213),              # several rows per tile
          (3, 5001), (2, 16383),                                      # one row per tile
          (2, MAX_FUSED_BLOCK + 1), (3, 20001)]                       # looped


def _weight(d: int, dtype: torch.dtype) -> torch.Tensor:
    return (1 + 0.5 * torch.randn(d, device=DEV)).to(dtype)


def _sum_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``h`` is one rounding of the fp32 sum, as torch.add: bit-identical. Except in the
    interpreter in bf16, whose fp32 -> bf16 cast truncates instead of rounding to nearest
    (triton 3.7.1): one bf16 ulp off there (on a GPU the bit-for-bit check runs)."""
    return TOLERANCES[dtype] if device.INTERPRET and dtype == torch.bfloat16 else (0.0, 0.0)


def _assert_like_unfused(h, out, x, residual, w, eps=1e-6, labels=None):
    """``(h, out)`` is PyTorch's ``h = x + residual; F.rms_norm(h)`` in x's dtype, and the reference's."""
    d = x.shape[-1]
    atol, rtol = TOLERANCES[x.dtype]
    h_torch = x + residual
    assert_close_with_nans(h, h_torch, *_sum_tolerance(x.dtype), labels)
    assert_close_with_nans(out, torch_rms_norm(h_torch, w, eps), atol, rtol, labels)
    h_ref, out_ref = add_rms_norm_ref(x, residual, w, eps)
    assert torch.equal(h_ref.isnan(), h_torch.isnan()) and torch.equal(h_ref[~h_ref.isnan()], h_torch[~h_torch.isnan()])
    assert_close_with_nans(out, out_ref, atol, rtol, labels)


def test_shapes_reach_every_path():
    for dtype in device.kernel_dtypes():
        paths = [_path(shape[-1], dtype) for shape in SHAPES]
        for path in (SEVERAL_ROWS, ONE_ROW, LOOPED):
            assert paths.count(path) >= 2, f"{dtype}: SHAPES has fewer than two shapes on the {path} path"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_unfused_torch_and_reference(shape, dtype, poisoned_outputs):
    x, residual = 3 * torch.randn(shape, device=DEV, dtype=dtype), torch.randn(shape, device=DEV, dtype=dtype)
    w = _weight(shape[-1], dtype)
    eps = 1e-5 if len(shape) % 2 else 1e-6
    h, out = add_rms_norm(x, residual, w, eps)
    assert h.shape == out.shape == x.shape and h.dtype == out.dtype == dtype
    _assert_like_unfused(h, out, x, residual, w, eps)


# ----------------------------------------------------------------------------
# NaN and ±inf: what the unfused torch ops give
# ----------------------------------------------------------------------------

def _cases(dtype):
    big = torch.finfo(dtype).max
    return {
        "nan in x": lambda x, r, p: x.__setitem__(p, NAN),
        "nan in residual": lambda x, r, p: r.__setitem__(p, NAN),
        "+inf in x": lambda x, r, p: x.__setitem__(p, INF),
        "-inf in residual": lambda x, r, p: r.__setitem__(p, -INF),
        "+inf + -inf": lambda x, r, p: (x.__setitem__(p, INF), r.__setitem__(p, -INF)),
        # h rounds to inf: its norm is that of the rounded h (NaN throughout), where the
        # unrounded fp32 sum (in 16-bit) would give a finite row
        "sum overflows": lambda x, r, p: (x.__setitem__(p, big), r.__setitem__(p, big)),
        "sum is zero": lambda x, r, p: r.copy_(-x),
    }


def _special_input(n_cols, dtype, p):
    cases = _cases(dtype)
    n_rows = 2 * len(cases) + 1
    x = 3 * torch.randn(n_rows, n_cols, device=DEV, dtype=dtype)
    residual = torch.randn(n_rows, n_cols, device=DEV, dtype=dtype)
    labels = {}
    for row, (name, write) in zip(range(1, n_rows, 2), cases.items()):
        write(x[row], residual[row], p)
        labels[row] = f"{name} at column {p}"
    return x, residual, labels


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("where", ["first column", "middle column", "last column"])
@pytest.mark.parametrize("path", [SEVERAL_ROWS, ONE_ROW, LOOPED])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_like_unfused_torch(dtype, path, where, poisoned_outputs):
    width = _width(path)
    p = {"first column": 0, "middle column": width // 2, "last column": width - 1}[where]
    x, residual, labels = _special_input(width, dtype, p)
    w = _weight(width, dtype)
    h, out = add_rms_norm(x, residual, w)
    _assert_like_unfused(h, out, x, residual, w, labels=labels)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_weights_like_unfused_torch(dtype, poisoned_outputs):
    x, residual = torch.randn(5, 213, device=DEV, dtype=dtype), torch.randn(5, 213, device=DEV, dtype=dtype)
    residual[3] = -x[3]
    w = _weight(213, dtype)
    w[0], w[100], w[212] = NAN, INF, -INF
    h, out = add_rms_norm(x, residual, w)
    _assert_like_unfused(h, out, x, residual, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype, poisoned_outputs):
    base = torch.randn(6, 5, 300, device=DEV, dtype=dtype)
    x = base[::2, :, :257]                                        # row stride 300
    residual = torch.randn(5, 3, 257, device=DEV, dtype=dtype).transpose(0, 1)   # does not merge: copied
    w = _weight(257, dtype)
    h, out = add_rms_norm(x, residual, w)
    _assert_like_unfused(h, out, x, residual, w)


def test_empty():
    for shape in ((0, 5), (3, 0)):
        z = torch.empty(shape, device=DEV)
        h, out = add_rms_norm(z, z, torch.ones(shape[-1], device=DEV))
        assert h.shape == out.shape == shape


# ----------------------------------------------------------------------------
# Inputs the launcher refuses
# ----------------------------------------------------------------------------

def _x(*shape, dtype=torch.float32):
    return torch.randn(shape or (3, 8), device=DEV, dtype=dtype)


@pytest.mark.parametrize("args, error, message", [
    (lambda: (_x(), _x(3, 7), torch.ones(8, device=DEV)), ValueError,
     r"x has shape \(3, 8\) but residual has shape \(3, 7\)"),
    (lambda: (_x(), _x(8), torch.ones(8, device=DEV)), ValueError, "they must match.*does not broadcast"),
    (lambda: (_x(), _x(dtype=torch.float16), torch.ones(8, device=DEV)), TypeError,
     "x is float32 but residual is float16"),
    (lambda: (_x().to(torch.int32), _x().to(torch.int32), torch.ones(8, device=DEV)), TypeError,
     "x has dtype int32"),
    (lambda: (_x(), "r", torch.ones(8, device=DEV)), TypeError, "residual must be a torch.Tensor, got str"),
    (lambda: (torch.tensor(1.0, device=DEV), torch.tensor(1.0, device=DEV), torch.ones(1, device=DEV)),
     ValueError, "x is 0-d"),
    (lambda: (_x(), _x(8, 3).t(), torch.ones(8, device=DEV)), ValueError,
     "last dimension of residual must be contiguous"),
    (lambda: (_x(), _x(), torch.ones(9, device=DEV)), ValueError, "weight has 9 entries but the last dimension"),
    (lambda: (_x(), _x(), torch.ones(8, 1, device=DEV)), ValueError, "weight must be 1-D"),
    (lambda: (_x(), _x(), torch.ones(8, device=DEV, dtype=torch.bfloat16)), TypeError,
     "x is float32 but weight is bfloat16"),
], ids=["shape", "broadcast", "dtypes differ", "int", "str", "0-d", "column-major residual",
        "weight length", "weight 2-D", "weight dtype"])
def test_bad_input(args, error, message):
    x, residual, w = args()
    with pytest.raises(error, match=message):
        add_rms_norm(x, residual, w)


@pytest.mark.parametrize("eps", [0, -1.0, NAN, INF])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="add_rms_norm: eps must be a finite positive number"):
        add_rms_norm(_x(), _x(), torch.ones(8, device=DEV), eps)


@pytest.mark.parametrize("which", ["x", "residual", "weight"])
def test_requires_grad_is_refused(which):
    args = {"x": _x(), "residual": _x(), "weight": torch.ones(8, device=DEV)}
    args[which].requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"{which} requires grad.*inference kernel.*no_grad"):
        add_rms_norm(**args)


def test_requires_grad_runs_under_no_grad(poisoned_outputs):
    x, residual = _x().requires_grad_(True), _x()
    w = _weight(8, torch.float32)
    with torch.no_grad():
        h, out = add_rms_norm(x, residual, w)
    assert not h.requires_grad and not out.requires_grad
    _assert_like_unfused(h, out, x.detach(), residual, w)


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message")
def test_residual_on_another_device_is_refused():
    with pytest.raises(ValueError, match="residual is on meta"):
        add_rms_norm(_x(), torch.empty(3, 8, device="meta"), torch.ones(8, device=DEV))


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a GPU for a tensor on another device")
def test_residual_on_the_cpu_is_refused_on_a_gpu():
    with pytest.raises(ValueError, match="residual is on the CPU but this machine has a GPU"):
        add_rms_norm(_x(), torch.randn(3, 8), torch.ones(8, device=DEV))


# ----------------------------------------------------------------------------
# Compiled kernels (GPU only)
# ----------------------------------------------------------------------------

@GPU_ONLY
@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("width", [1, 7, 257, 1024, 4095, 8191, 16383, MAX_FUSED_BLOCK, MAX_FUSED_BLOCK + 1,
                                   40_001, 70_000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_widths_on_gpu(dtype, width, poisoned_outputs):
    # Every tiling norm_config picks (and the looped kernel), bit-for-bit sums in every dtype.
    for n_rows in (1, 7, 129, 1001):
        x = 3 * torch.randn(n_rows, width, device=DEV, dtype=dtype)
        residual = torch.randn(n_rows, width, device=DEV, dtype=dtype)
        if n_rows > 1:
            x[n_rows // 2, width - 1], residual[n_rows - 1, 0] = NAN, INF
        w = _weight(width, dtype)
        h, out = add_rms_norm(x, residual, w)
        _assert_like_unfused(h, out, x, residual, w)


@GPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_rows_on_gpu(dtype, poisoned_outputs):
    x, residual = (torch.randn(131_072, 4096, device=DEV, dtype=dtype) for _ in range(2))
    w = _weight(4096, dtype)
    h, out = add_rms_norm(x, residual, w)
    _assert_like_unfused(h, out, x, residual, w)
