"""Tests of RMSNorm (infer_lib.kernels.rms_norm_kernel): against its fp32 reference and
``torch.nn.functional.rms_norm``, on every path of the launcher, NaN and ±inf included."""

import pytest
import torch
import torch.nn.functional as F

from conftest import (DTYPES, GPU_ONLY, IEEE_WARNINGS_EXPECTED, LOOPED, ONE_ROW, SEVERAL_ROWS, TOLERANCES,
                      assert_close_with_nans, norm_path as _path, norm_width as _width, torch_rms_norm)
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.kernels import rms_norm_kernel
from infer_lib.kernels.rms_norm_kernel import MAX_FUSED_BLOCK, rms_norm, rms_norm_ref

DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
LOOP_BLOCK = _tuning.NORM_LOOP.kwargs["BLOCK"]      # entries per step of the looped kernel


# Odd, non-power-of-two shapes; each path gets several (test_shapes_reach_every_path).
SHAPES = [(1,), (77,), (5, 7), (3, 423), (2, 5, 77), (37, 213), (2, 1, 3, 257),   # several rows per tile
          (3, 5001), (2, 16383),                                                  # one row per tile
          (2, MAX_FUSED_BLOCK + 1), (3, 20001)]                 # looped: last step 1 or 3617 wide


def _weight(d: int, dtype: torch.dtype) -> torch.Tensor:
    return (1 + 0.5 * torch.randn(d, device=DEV)).to(dtype)     # random, never all ones


def test_shapes_reach_every_path():
    for dtype in device.kernel_dtypes():
        paths = [_path(shape[-1], dtype) for shape in SHAPES]
        for path in (SEVERAL_ROWS, ONE_ROW, LOOPED):
            assert paths.count(path) >= 2, f"{dtype}: SHAPES has fewer than two shapes on the {path} path"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_and_torch(shape, dtype, poisoned_outputs):
    d = shape[-1]
    x, w = 3 * torch.randn(shape, device=DEV, dtype=dtype), _weight(d, dtype)
    eps = 1e-5 if len(shape) % 2 else 1e-6
    out = rms_norm(x, w, eps)
    atol, rtol = TOLERANCES[dtype]
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, rms_norm_ref(x, w, eps), atol=atol, rtol=rtol)
    torch.testing.assert_close(out, F.rms_norm(x, (d,), w, eps), atol=atol, rtol=rtol)


def test_eps_matters():
    # a row of tiny values: mean(x²) ~ 1e-6, so eps changes the answer
    x, w = 1e-3 * torch.randn(3, 64, device=DEV), _weight(64, torch.float32)
    for eps in (1e-6, 1e-3):
        torch.testing.assert_close(rms_norm(x, w, eps), F.rms_norm(x, (64,), w, eps))
    assert not torch.allclose(rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-3))


# ----------------------------------------------------------------------------
# NaN and ±inf: what F.rms_norm gives, in every row
# ----------------------------------------------------------------------------

def _big(dtype: torch.dtype) -> float:
    """A finite entry whose square overflows fp32 where the dtype can hold one (fp32, bf16);
    fp16's largest (its square stays finite in fp32)."""
    return 6e4 if dtype == torch.float16 else 3e19


def _cases(dtype):
    return {"nan": lambda row, p: row.__setitem__(p, NAN),
            "+inf": lambda row, p: row.__setitem__(p, INF),
            "-inf": lambda row, p: row.__setitem__(p, -INF),
            "+inf and -inf": lambda row, p: (row.__setitem__(p, INF), row.__setitem__(0, -INF)),
            "huge finite": lambda row, p: row.__setitem__(p, _big(dtype)),
            "zeros": lambda row, p: row.zero_()}


def _special_input(n_cols: int, dtype: torch.dtype, p: int) -> tuple[torch.Tensor, dict]:
    """Each special case in its own row, at column ``p``, with random rows between them."""
    cases = _cases(dtype)
    x = 3 * torch.randn(2 * len(cases) + 1, n_cols, device=DEV, dtype=dtype)
    labels = {}
    for r, (name, write) in zip(range(1, x.shape[0], 2), cases.items()):
        write(x[r], p)
        labels[r] = f"{name} at column {p}"
    return x, labels


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("where", ["first column", "middle column", "last column"])
@pytest.mark.parametrize("path", [SEVERAL_ROWS, ONE_ROW, LOOPED])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_like_torch(dtype, path, where, poisoned_outputs):
    width = _width(path)
    p = {"first column": 0, "middle column": width // 2, "last column": width - 1}[where]
    x, labels = _special_input(width, dtype, p)
    w = _weight(width, dtype)
    atol, rtol = TOLERANCES[dtype]
    out = rms_norm(x, w)
    assert_close_with_nans(out, torch_rms_norm(x, w, 1e-6), atol, rtol, labels)
    assert_close_with_nans(out, rms_norm_ref(x, w), atol, rtol, labels)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("path", [SEVERAL_ROWS, LOOPED])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_weights_like_torch(dtype, path, poisoned_outputs):
    width = _width(path)
    x, w = 3 * torch.randn(5, width, device=DEV, dtype=dtype), _weight(width, dtype)
    x[2] = 0                                         # 0 · inf = NaN in that row
    w[0], w[width // 2], w[width - 1] = NAN, INF, -INF
    atol, rtol = TOLERANCES[dtype]
    assert_close_with_nans(rms_norm(x, w), torch_rms_norm(x, w, 1e-6), atol, rtol)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_torch(dtype):
    x, labels = _special_input(9, dtype, 4)
    w = _weight(9, dtype)
    atol, rtol = TOLERANCES[dtype]
    assert_close_with_nans(rms_norm_ref(x, w), torch_rms_norm(x, w, 1e-6), atol, rtol, labels)


# ----------------------------------------------------------------------------
# Layouts and sizes
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_rows(dtype, poisoned_outputs):
    atol, rtol = TOLERANCES[dtype]
    base = torch.randn(6, 5, 300, device=DEV, dtype=dtype)
    w = _weight(257, dtype)
    x = base[::2, :, :257]                      # (3, 5, 257), row stride 300
    torch.testing.assert_close(rms_norm(x, w), F.rms_norm(x, (257,), w, 1e-6), atol=atol, rtol=rtol)
    y = base.transpose(0, 1)                    # (5, 6, 300): leading dims do not merge into one stride
    w = _weight(300, dtype)
    torch.testing.assert_close(rms_norm(y, w), F.rms_norm(y, (300,), w, 1e-6), atol=atol, rtol=rtol)
    w_strided = _weight(600, dtype)[::2]        # a weight with stride 2
    torch.testing.assert_close(rms_norm(y, w_strided), F.rms_norm(y, (300,), w_strided, 1e-6),
                               atol=atol, rtol=rtol)


def test_empty():
    assert rms_norm(torch.empty(0, 5, device=DEV), torch.ones(5, device=DEV)).shape == (0, 5)
    assert rms_norm(torch.empty(3, 0, device=DEV), torch.ones(0, device=DEV)).shape == (3, 0)


def test_norm_config_holds_rows_within_the_register_bound(monkeypatch):
    monkeypatch.setattr(_tuning.device, "INTERPRET", False)      # the GPU rule
    for esize in (2, 4):
        for width in range(1, MAX_FUSED_BLOCK + 1, 7):
            cfg = _tuning.norm_config(width, esize)
            block, rows = cfg.kwargs["BLOCK"], cfg.kwargs["ROWS"]
            assert block >= width and block & (block - 1) == 0 and rows & (rows - 1) == 0
            assert rows * block / (32 * cfg.num_warps) <= _tuning.NORM_MAX_VALUES_PER_THREAD, (width, cfg)
    with pytest.raises(ValueError, match="wider than NORM_MAX_FUSED_BLOCK"):
        _tuning.norm_config(MAX_FUSED_BLOCK + 1, 2)


# ----------------------------------------------------------------------------
# Inputs the launcher refuses
# ----------------------------------------------------------------------------

def _x():
    return torch.randn(3, 8, device=DEV)


@pytest.mark.parametrize("args, error, message", [
    (lambda: (torch.arange(8, device=DEV), torch.ones(8, device=DEV)), TypeError,
     "x has dtype int64; supported dtypes are float32, float16, bfloat16"),
    (lambda: (torch.tensor(1.0, device=DEV), torch.ones(1, device=DEV)), ValueError, "x is 0-d"),
    (lambda: ([[1.0, 2.0]], torch.ones(2, device=DEV)), TypeError, "x must be a torch.Tensor, got list"),
    (lambda: (torch.randn(8, 8, device=DEV).t(), torch.ones(8, device=DEV)), ValueError,
     "last dimension of x must be contiguous"),
    (lambda: (_x(), torch.ones(7, device=DEV)), ValueError,
     r"weight has 7 entries but the last dimension of x has 8"),
    (lambda: (_x(), torch.ones(1, 8, device=DEV)), ValueError, r"weight must be 1-D, got shape \(1, 8\)"),
    (lambda: (_x(), torch.ones(8, device=DEV, dtype=torch.float16)), TypeError,
     "x is float32 but weight is float16; cast them to one dtype"),
    (lambda: (_x(), None), TypeError, "weight must be a torch.Tensor, got NoneType"),
], ids=["int", "0-d", "list", "column-major", "weight length", "weight 2-D", "weight dtype", "no weight"])
def test_bad_input(args, error, message):
    x, w = args()
    with pytest.raises(error, match=message):
        rms_norm(x, w)


@pytest.mark.parametrize("eps, error, message", [
    (0.0, ValueError, "eps must be a finite positive number"),
    (-1e-6, ValueError, "eps must be a finite positive number"),
    (NAN, ValueError, "eps must be a finite positive number"),
    (INF, ValueError, "eps must be a finite positive number"),
    (10**400, ValueError, "eps must be a finite positive number"),
    (torch.tensor(1e-6), TypeError, r"eps must be a number, got Tensor.*pass eps.item\(\)"),
    ("1e-6", TypeError, "eps must be a number, got str"),
    (True, TypeError, "eps must be a number, got bool"),
], ids=["zero", "negative", "nan", "inf", "huge int", "tensor", "str", "bool"])
def test_bad_eps(eps, error, message):
    with pytest.raises(error, match=message):
        rms_norm(_x(), torch.ones(8, device=DEV), eps)


@pytest.mark.parametrize("which", ["x", "weight"])
def test_requires_grad_is_refused(which):
    x, w = _x(), torch.ones(8, device=DEV)
    (x if which == "x" else w).requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"{which} requires grad.*inference kernel.*no_grad"):
        rms_norm(x, w)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_requires_grad_runs_without_grad_mode(mode, poisoned_outputs):
    x = torch.randn(3, 7, device=DEV, requires_grad=True)
    w = _weight(7, torch.float32)
    with mode():
        out = rms_norm(x, w)
    assert not out.requires_grad
    torch.testing.assert_close(out, F.rms_norm(x.detach(), (7,), w, 1e-6))


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message")
def test_weight_on_another_device_is_refused():
    with pytest.raises(ValueError, match="weight is on meta"):
        rms_norm(_x(), torch.ones(8, device="meta"))


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a GPU for a tensor on another device")
def test_weight_on_the_cpu_is_refused_on_a_gpu():
    with pytest.raises(ValueError, match="weight is on the CPU but this machine has a GPU"):
        rms_norm(_x(), torch.ones(8))


# ----------------------------------------------------------------------------
# Compiled kernels (GPU only): every configuration, many rows
# ----------------------------------------------------------------------------

def _every_config() -> list:
    """One case per (dtype, configuration norm_config returns on a GPU): the narrowest and the
    widest odd width that select it."""
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        widths: dict[tuple, list[int]] = {}
        for w in range(1, MAX_FUSED_BLOCK + 1):
            cfg = _tuning.norm_config(w, torch.finfo(dtype).bits // 8)
            widths.setdefault((cfg.kwargs["BLOCK"], cfg.kwargs["ROWS"], cfg.num_warps), []).append(w)
        for (block, rows, warps), ws in widths.items():
            odd = [w for w in ws if w % 2] or ws
            for w in sorted({odd[0], odd[-1]}):
                cases.append(pytest.param(dtype, w, rows,
                                          id=f"{str(dtype)[6:]}-{w}-BLOCK{block}-ROWS{rows}-warps{warps}"))
    return cases


@GPU_ONLY
@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype, width, rows_per_tile", _every_config())
def test_every_config_on_gpu(dtype, width, rows_per_tile, poisoned_outputs):
    if dtype not in device.kernel_dtypes():
        pytest.skip(f"{dtype} is not supported on this GPU")
    atol, rtol = TOLERANCES[dtype]
    for n_rows in (1, 7, 3 * rows_per_tile + 1, 1001):
        x, w = 3 * torch.randn(n_rows, width, device=DEV, dtype=dtype), _weight(width, dtype)
        if n_rows > 1:
            x[n_rows // 2, width - 1] = NAN
            x[n_rows - 1, 0] = INF
        assert_close_with_nans(rms_norm(x, w), torch_rms_norm(x, w, 1e-6), atol, rtol)


@GPU_ONLY
@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("width", [MAX_FUSED_BLOCK + 1, 40_001, 70_000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_looped_widths_on_gpu(dtype, width, poisoned_outputs):
    atol, rtol = TOLERANCES[dtype]
    for n_rows in (1, 7, 129):
        x, w = 3 * torch.randn(n_rows, width, device=DEV, dtype=dtype), _weight(width, dtype)
        if n_rows == 129:
            x[64, width - 1], x[65, LOOP_BLOCK] = NAN, -INF
        assert_close_with_nans(rms_norm(x, w), torch_rms_norm(x, w, 1e-6), atol, rtol)


@GPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_rows_on_gpu(dtype, poisoned_outputs):
    x, w = torch.randn(131_072, 4096, device=DEV, dtype=dtype), _weight(4096, dtype)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(rms_norm(x, w), rms_norm_ref(x, w), atol=atol, rtol=rtol)


@GPU_ONLY
def test_new_row_count_does_not_recompile():
    kernel = rms_norm_kernel._rms_norm_kernel
    if not hasattr(kernel, "device_caches"):
        pytest.skip("this Triton's JITFunction has no device_caches to count compiled kernels")
    w = _weight(1000, torch.float32)
    rms_norm(torch.randn(3, 1000, device=DEV), w)
    compiled = kernel.device_caches[torch.cuda.current_device()][0]
    before = len(compiled)
    for n_rows in (1, 16, 17, 1000):
        rms_norm(torch.randn(n_rows, 1000, device=DEV), w)
    assert len(compiled) == before, f"{len(compiled) - before} new compilations for new row counts"
