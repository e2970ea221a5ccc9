import pytest
import torch

from conftest import DTYPES, TOLERANCES
from infer_lib import device
from infer_lib.kernels.softmax_kernel import MAX_FUSED_BLOCK, softmax, softmax_ref

DEV = device.DEVICE

# Odd widths; 70000 > MAX_FUSED_BLOCK takes the online (two-pass) kernel.
WIDTHS = [1, 7, 1000, 5000, 70_000]
assert WIDTHS[-1] > MAX_FUSED_BLOCK


def _rows_for(width: int) -> int:
    return 3 if width > MAX_FUSED_BLOCK else 37   # few rows, several tiles of them



@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(width, dtype, poisoned_outputs):
    x = 3 * torch.randn(_rows_for(width), width, device=DEV, dtype=dtype)
    out = softmax(x)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, softmax_ref(x), atol=atol, rtol=rtol)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out.float().sum(-1), torch.ones(x.shape[0], device=DEV), atol=1e-2, rtol=0)


@pytest.mark.parametrize("shape", [(13,), (3, 9), (2, 3, 5, 33), (2, 1, 3, 4, 257)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dims(shape, dtype, poisoned_outputs):
    x = torch.randn(shape, device=DEV, dtype=dtype)
    out = softmax(x)
    atol, rtol = TOLERANCES[dtype]
    assert out.shape == x.shape
    torch.testing.assert_close(out, softmax_ref(x), atol=atol, rtol=rtol)


def test_strided_rows():
    # rows with a stride (a slice of a wider buffer) and leading dims that do not merge
    base = torch.randn(6, 4, 300, device=DEV)
    x = base[::2, :, :257]                      # (3, 4, 257), row stride 300
    torch.testing.assert_close(softmax(x), softmax_ref(x))
    y = base.transpose(0, 1)                    # (4, 6, 300): leading dims do not merge into one stride
    torch.testing.assert_close(softmax(y), softmax_ref(y))


def test_reference_matches_torch_softmax():
    x = 5 * torch.randn(9, 1000, device=DEV)
    torch.testing.assert_close(softmax_ref(x), torch.softmax(x, dim=-1))


@pytest.mark.parametrize("width", [7, 1000, 70_000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_entries(width, dtype, poisoned_outputs):
    x = torch.randn(3, width, device=DEV, dtype=dtype)
    masked = torch.rand(3, width, device=DEV) < 0.5
    masked[:, 0] = False                        # every row keeps at least one entry
    x = x.masked_fill(masked, float("-inf"))
    out = softmax(x)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, softmax_ref(x), atol=atol, rtol=rtol)
    assert (out[masked] == 0).all(), "masked entries get probability exactly 0"
    torch.testing.assert_close(out, torch.softmax(x.float(), -1).to(dtype), atol=atol, rtol=rtol)


@pytest.mark.parametrize("width", [1, 7, 1000, 70_000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_are_zero(width, dtype, poisoned_outputs):
    x = torch.randn(4, width, device=DEV, dtype=dtype)
    x[1] = float("-inf")
    x[3] = float("-inf")
    out = softmax(x)
    assert not out.isnan().any()
    assert (out[1] == 0).all() and (out[3] == 0).all()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, softmax_ref(x), atol=atol, rtol=rtol)
    torch.testing.assert_close(out[0::2], torch.softmax(x[0::2].float(), -1).to(dtype), atol=atol, rtol=rtol)


@pytest.mark.parametrize("width", [7, 1000, 70_000])
@pytest.mark.parametrize("dtype, magnitude", [
    pytest.param(torch.float32, 1e4, id="float32-1e4"),
    pytest.param(torch.float16, 6e4, id="float16-6e4"),
    pytest.param(torch.bfloat16, 1e30, id="bfloat16-1e30"),
])
def test_large_magnitudes_do_not_overflow(width, dtype, magnitude):
    if dtype not in device.kernel_dtypes():
        pytest.skip(f"{dtype} is not supported on this GPU")
    x = (magnitude * (2 * torch.rand(3, width, device=DEV) - 1)).to(dtype)
    x[:, 1 % width] = magnitude                  # a large maximum in every row
    out = softmax(x)
    assert torch.isfinite(out).all()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out, softmax_ref(x), atol=atol, rtol=rtol)
    torch.testing.assert_close(out.float().sum(-1), torch.ones(3, device=DEV), atol=1e-2, rtol=0)


def test_empty():
    assert softmax(torch.empty(0, 5, device=DEV)).shape == (0, 5)
    assert softmax(torch.empty(3, 0, device=DEV)).shape == (3, 0)


@pytest.mark.parametrize("bad, error, message", [
    (lambda: torch.arange(10, device=DEV), TypeError, "dtype int64; supported dtypes are float32, float16, bfloat16"),
    (lambda: torch.tensor(1.0, device=DEV), ValueError, "x is 0-d"),
    (lambda: [[1.0, 2.0]], TypeError, "x must be a torch.Tensor, got list"),
    (lambda: torch.randn(8, 8, device=DEV).t(), ValueError, "last dimension of x must be contiguous"),
], ids=["int", "0-d", "list", "column-major"])
def test_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        softmax(bad())


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message")
def test_non_cpu_tensor_without_gpu_is_refused():
    with pytest.raises(ValueError, match="is on meta"):
        softmax(torch.randn(4, device="meta"))
