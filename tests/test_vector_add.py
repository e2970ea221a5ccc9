import pytest
import torch

from conftest import DTYPES, TOLERANCES
from infer_lib import device
from infer_lib.kernels import vector_add, vector_add_ref

SHAPES = [(1,), (7,), (4096,), (4097,), (98_431,), (3, 423, 213)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, dtype):
    x = torch.randn(shape, device=device.DEVICE, dtype=dtype)
    y = torch.randn(shape, device=device.DEVICE, dtype=dtype)
    out = vector_add(x, y)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, vector_add_ref(x, y), atol=atol, rtol=rtol)
    assert out.shape == x.shape and out.dtype == dtype


def test_every_element_written(poisoned_outputs):
    x = torch.randn(12_345, device=device.DEVICE)
    y = torch.randn(12_345, device=device.DEVICE)
    out = vector_add(x, y)
    assert not out.isnan().any()
    torch.testing.assert_close(out, x + y)


def test_empty():
    x = torch.empty(0, device=device.DEVICE)
    assert vector_add(x, x).numel() == 0


def test_shape_mismatch():
    x = torch.randn(10, device=device.DEVICE)
    with pytest.raises(ValueError, match=r"x has shape \(10,\) but y has shape \(11,\)"):
        vector_add(x, torch.randn(11, device=device.DEVICE))


def test_dtype_mismatch():
    x = torch.randn(10, device=device.DEVICE)
    with pytest.raises(TypeError, match="x is float32 but y is float16"):
        vector_add(x, x.half())


def test_unsupported_dtype():
    x = torch.arange(10, device=device.DEVICE)
    with pytest.raises(TypeError, match="dtype int64; supported dtypes are float32, float16, bfloat16"):
        vector_add(x, x)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="y must be a torch.Tensor, got list"):
        vector_add(torch.randn(3, device=device.DEVICE), [1.0, 2.0, 3.0])


def test_non_contiguous():
    x = torch.randn(8, 8, device=device.DEVICE).t()
    with pytest.raises(ValueError, match="must be contiguous"):
        vector_add(x, x)


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
