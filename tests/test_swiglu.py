"""Tests of SwiGLU's gating (infer_lib.kernels.swiglu_kernel): against its fp32 reference and
``F.silu(gate) * up``, contiguous and strided, NaN and ±inf included."""

import pytest
import torch
import torch.nn.functional as F

from conftest import DTYPES, GPU_ONLY, IEEE_WARNINGS_EXPECTED, TOLERANCES, assert_close_with_nans
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.kernels.swiglu_kernel import swiglu, swiglu_ref

DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
BLOCK = _tuning.swiglu_config().kwargs["BLOCK"]      # elements per program here

# Odd shapes, a 0-d and a 1-D one; the last ones span several programs with a masked tail.
SHAPES = [(), (1,), (7,), (5, 7), (3, 423), (2, 5, 77), (3, 1, 5, 257), (3 * BLOCK + 1,)]


def _assert_like_torch(out, gate, up, labels=None):
    atol, rtol = TOLERANCES[gate.dtype]
    assert_close_with_nans(out, F.silu(gate) * up, atol, rtol, labels)
    assert_close_with_nans(out, swiglu_ref(gate, up), atol, rtol, labels)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_and_torch(shape, dtype, poisoned_outputs):
    gate, up = 3 * torch.randn(shape, device=DEV, dtype=dtype), torch.randn(shape, device=DEV, dtype=dtype)
    out = swiglu(gate, up)
    assert out.shape == gate.shape and out.dtype == dtype and out.is_contiguous()
    _assert_like_torch(out, gate, up)


@pytest.mark.parametrize("dtype", DTYPES)
def test_halves_of_a_fused_projection(dtype, poisoned_outputs):
    # gate, up = proj.chunk(2, -1): rows strided by 2·d, read in place (several column blocks a row)
    d = BLOCK + 77
    proj = torch.randn(2, 3, 2 * d, device=DEV, dtype=dtype)
    gate, up = proj.chunk(2, dim=-1)
    assert not gate.is_contiguous()
    _assert_like_torch(swiglu(gate, up), gate, up)
    # leading dims that do not merge into one row stride (copied once), one input contiguous
    gate_t = torch.randn(5, 4, 77, device=DEV, dtype=dtype).transpose(0, 1)
    up_c = torch.randn(4, 5, 77, device=DEV, dtype=dtype)
    _assert_like_torch(swiglu(gate_t, up_c), gate_t, up_c)


# ----------------------------------------------------------------------------
# NaN and ±inf: what F.silu(gate) * up gives
# ----------------------------------------------------------------------------

SPECIAL_GATES = [INF, -INF, NAN, -1000.0, 1000.0, 0.0, -0.5]
SPECIAL_UPS = [1.0, 0.0, INF, -INF, NAN, -2.0]


def _special(dtype, contiguous: bool):
    """Every (gate, up) pair of special values, spread over several programs and their edges."""
    pairs = [(g, u) for g in SPECIAL_GATES for u in SPECIAL_UPS]
    if contiguous:
        gate, up = (torch.randn(2 * BLOCK + 5, device=DEV, dtype=dtype) for _ in range(2))
    else:   # the halves of a projection: rows strided by twice their width
        gate, up = torch.randn(3, 2 * (BLOCK + 5), device=DEV, dtype=dtype).chunk(2, dim=-1)
    n = gate.numel()
    places = [round(i * (n - 1) / (len(pairs) - 1)) for i in range(len(pairs))]
    for i, (g, u) in zip(places, pairs):
        idx = (i,) if contiguous else divmod(i, gate.shape[-1])
        gate[idx], up[idx] = g, u
    return gate, up


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided rows"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_like_torch(dtype, contiguous, poisoned_outputs):
    gate, up = _special(dtype, contiguous)
    out = swiglu(gate, up)
    _assert_like_torch(out, gate, up)
    # exactly torch's special values, not just NaN in the same places
    expected = F.silu(gate) * up
    inf = expected.isinf()
    assert torch.equal(out[inf], expected[inf])


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_product_overflowing_the_dtype_is_inf(dtype):
    big = torch.finfo(dtype).max ** 0.5 * 4
    gate = torch.tensor([big, -big, big], device=DEV).to(dtype)
    up = torch.tensor([big, big, -big], device=DEV).to(dtype)
    out = swiglu(gate, up)
    expected = F.silu(gate) * up
    assert torch.equal(out.isinf(), expected.isinf()) and out.isinf()[[0, 2]].all()
    assert torch.equal(out[out.isinf()], expected[expected.isinf()])


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_matches_torch(dtype):
    g = torch.tensor([[x for x in SPECIAL_GATES for _ in SPECIAL_UPS]], device=DEV).to(dtype)
    u = torch.tensor([SPECIAL_UPS * len(SPECIAL_GATES)], device=DEV).to(dtype)
    atol, rtol = TOLERANCES[dtype]
    assert_close_with_nans(swiglu_ref(g, u), F.silu(g) * u, atol, rtol)


def test_empty():
    z = torch.empty(3, 0, device=DEV)
    assert swiglu(z, z).shape == (3, 0)
    z = torch.empty(0, device=DEV)
    assert swiglu(z, z).shape == (0,)


# ----------------------------------------------------------------------------
# Inputs the launcher refuses
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, error, message", [
    (lambda: (torch.randn(3, 8, device=DEV), torch.randn(3, 7, device=DEV)), ValueError,
     r"gate has shape \(3, 8\) but up has shape \(3, 7\).*does not broadcast"),
    (lambda: (torch.randn(3, 8, device=DEV), torch.randn(8, device=DEV)), ValueError,
     r"gate has shape \(3, 8\) but up has shape \(8,\)"),
    (lambda: (torch.randn(8, device=DEV), torch.randn(8, device=DEV, dtype=torch.float16)), TypeError,
     "gate is float32 but up is float16; cast them to one dtype"),
    (lambda: (torch.ones(8, device=DEV, dtype=torch.int64), torch.ones(8, device=DEV, dtype=torch.int64)),
     TypeError, "gate has dtype int64; supported dtypes are float32, float16, bfloat16"),
    (lambda: (torch.randn(8, device=DEV), [1.0] * 8), TypeError, "up must be a torch.Tensor, got list"),
    (lambda: (torch.randn(8, 8, device=DEV).t(), torch.randn(8, 8, device=DEV)), ValueError,
     "last dimension of gate must be contiguous"),
], ids=["shape", "broadcast", "dtypes differ", "int", "list", "column-major"])
def test_bad_input(args, error, message):
    gate, up = args()
    with pytest.raises(error, match=message):
        swiglu(gate, up)


@pytest.mark.parametrize("which", ["gate", "up"])
def test_requires_grad_is_refused(which):
    args = {"gate": torch.randn(8, device=DEV), "up": torch.randn(8, device=DEV)}
    args[which].requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"{which} requires grad.*inference kernel.*no_grad"):
        swiglu(**args)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_requires_grad_runs_without_grad_mode(mode, poisoned_outputs):
    gate, up = torch.randn(3, 7, device=DEV, requires_grad=True), torch.randn(3, 7, device=DEV)
    with mode():
        out = swiglu(gate, up)
    assert not out.requires_grad
    _assert_like_torch(out, gate.detach(), up)


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message")
def test_input_on_another_device_is_refused():
    with pytest.raises(ValueError, match="up is on meta"):
        swiglu(torch.randn(4, device=DEV), torch.randn(4, device="meta"))


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a GPU for a tensor on another device")
def test_input_on_the_cpu_is_refused_on_a_gpu():
    with pytest.raises(ValueError, match="up is on the CPU but this machine has a GPU"):
        swiglu(torch.randn(4, device=DEV), torch.randn(4))


# ----------------------------------------------------------------------------
# Compiled kernels (GPU only): the GPU's block size, large and strided tensors
# ----------------------------------------------------------------------------

@GPU_ONLY
@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_and_strided_on_gpu(dtype, poisoned_outputs):
    for shape in ((1,), (BLOCK - 1,), (BLOCK + 1,), (7, 14336), (4096, 3 * 14336 + 5)):
        gate, up = 3 * torch.randn(shape, device=DEV, dtype=dtype), torch.randn(shape, device=DEV, dtype=dtype)
        _assert_like_torch(swiglu(gate, up), gate, up)
    for contiguous in (True, False):
        gate, up = _special(dtype, contiguous)
        _assert_like_torch(swiglu(gate, up), gate, up)
    proj = torch.randn(512, 2 * 14336, device=DEV, dtype=dtype)
    gate, up = proj.chunk(2, dim=-1)
    _assert_like_torch(swiglu(gate, up), gate, up)
