import pytest
import torch

from conftest import DTYPES, IEEE_WARNINGS_EXPECTED, TOLERANCES, assert_close_with_nans
from infer_lib import device
from infer_lib.kernels import _tuning, vector_add, vector_add_ref

DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
BLOCK = _tuning.VECTOR_ADD.kwargs["BLOCK_SIZE"]   # elements per program

# Odd sizes: below one block, one past a block boundary, many blocks with a
# ragged last one, and odd leading dims.
SHAPES = [(1,), (7,), (BLOCK + 1,), (98_431,), (5, 3, 7), (3, 423, 213)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(shape, dtype, poisoned_outputs):
    x = torch.randn(shape, device=DEV, dtype=dtype)
    y = torch.randn(shape, device=DEV, dtype=dtype)
    out = vector_add(x, y)
    atol, rtol = TOLERANCES[dtype]
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, torch.add(x, y), atol=atol, rtol=rtol)
    torch.testing.assert_close(out, vector_add_ref(x, y), atol=atol, rtol=rtol)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("shape", [(13,), (3, 2 * BLOCK + 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_like_torch(shape, dtype, poisoned_outputs):
    x = torch.randn(shape, device=DEV, dtype=dtype)
    y = torch.randn(shape, device=DEV, dtype=dtype)
    big = torch.finfo(dtype).max
    pairs = [(NAN, 1.0), (1.0, NAN), (INF, 2.0), (-INF, 2.0), (INF, -INF), (-INF, INF),
             (INF, INF), (-INF, -INF), (NAN, INF), (big, big), (-big, -big)]   # last two overflow to ±inf
    n = x.numel()
    # The first element, both sides of a block boundary, the ragged last block's
    # last element, then evenly spread: one place per pair.
    anchors = [i for i in (0, BLOCK - 1, BLOCK, n - 1) if i < n]
    spread = [round(i * (n - 1) / (len(pairs) - 1)) for i in range(len(pairs))]
    places = list(dict.fromkeys(anchors + spread))[:len(pairs)]
    for i, (a, b) in zip(places, pairs):
        x.view(-1)[i], y.view(-1)[i] = a, b
    out = vector_add(x, y)
    expected = torch.add(x, y)
    for i, (a, b) in zip(places, pairs):
        got, want = out.view(-1)[i], expected.view(-1)[i]
        assert got == want or (got.isnan() and want.isnan()), f"{a} + {b} gave {got.item()}, torch.add {want.item()}"
    # One rounding of an exact fp32 sum: bit-identical to torch.add. Except in the
    # interpreter in bf16, whose fp32 -> bf16 cast truncates instead of rounding
    # to nearest (triton 3.7.1): one bf16 ulp off there.
    atol, rtol = TOLERANCES[dtype] if device.INTERPRET and dtype == torch.bfloat16 else (0.0, 0.0)
    assert_close_with_nans(out, expected, atol, rtol)


def test_empty():
    x = torch.empty(0, device=DEV)
    assert vector_add(x, x).numel() == 0


# ----------------------------------------------------------------------------
# Inputs the launcher refuses
# ----------------------------------------------------------------------------

def test_shape_mismatch():
    x = torch.randn(10, device=DEV)
    with pytest.raises(ValueError, match=r"x has shape \(10,\) but y has shape \(11,\)"):
        vector_add(x, torch.randn(11, device=DEV))


def test_dtype_mismatch():
    x = torch.randn(10, device=DEV)
    with pytest.raises(TypeError, match="x is float32 but y is float16"):
        vector_add(x, x.half())


def test_unsupported_dtype():
    x = torch.arange(10, device=DEV)
    with pytest.raises(TypeError, match="dtype int64; supported dtypes are float32, float16, bfloat16"):
        vector_add(x, x)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="y must be a torch.Tensor, got list"):
        vector_add(torch.randn(3, device=DEV), [1.0, 2.0, 3.0])


def test_non_contiguous():
    x = torch.randn(8, 8, device=DEV).t()
    with pytest.raises(ValueError, match="must be contiguous"):
        vector_add(x, x)


@pytest.mark.parametrize("which", ["x", "y"])
def test_requires_grad_is_refused(which):
    t = {"x": torch.randn(5, device=DEV), "y": torch.randn(5, device=DEV)}
    t[which].requires_grad_()
    with pytest.raises(RuntimeError, match=f"{which} requires grad.*inference kernel.*no_grad"):
        vector_add(t["x"], t["y"])


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_requires_grad_runs_without_grad_mode(mode, poisoned_outputs):
    x = torch.randn(5, device=DEV, requires_grad=True)
    y = torch.randn(5, device=DEV, requires_grad=True)
    with mode():
        out = vector_add(x, y)
    assert not out.requires_grad
    torch.testing.assert_close(out, x.detach() + y.detach())


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a GPU to have tensors on two devices")
def test_different_devices():
    x = torch.randn(10, device="cuda")
    with pytest.raises(ValueError, match="on the CPU but this machine has a GPU"):
        vector_add(x, x.cpu())


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message")
def test_cuda_tensor_without_gpu_is_refused():
    x = torch.randn(10, device="meta")
    with pytest.raises(ValueError, match="is on meta"):
        vector_add(x, x)
