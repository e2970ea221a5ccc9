"""Tests of the tiled Triton matmul. Shapes are written (M, N, K): ``a`` is
``(M, K)``, ``b`` is ``(K, N)``, the product ``(M, N)``."""

import math

import pytest
import torch

from conftest import DTYPES, TOLERANCES
from infer_lib import device
import importlib

# the module, not the function of the same name that infer_lib.kernels exports
mm = importlib.import_module("infer_lib.kernels.matmul_kernel")
from infer_lib.kernels.matmul_kernel import matmul, matmul_ref
import triton  # after infer_lib, which picks compiler or interpreter

#: (M, N, K), none a multiple of the 32×32×32 interpreter tile except the control (64, 64, 64)
SHAPES = [(1, 7, 3), (129, 257, 65), (1000, 1, 513), (64, 64, 64), (33, 47, 200), (16, 96, 130)]


def _inputs(M, N, K, dtype):
    return (torch.randn(M, K, device=device.DEVICE, dtype=dtype),
            torch.randn(K, N, device=device.DEVICE, dtype=dtype))


def _check(out, a, b):
    """Compare with the fp32 reference. Each output is a sum of K products of
    N(0, 1) numbers, of size ~√K, so the absolute tolerance grows with √K; the
    relative one covers rounding the result to the output type (one ulp in
    16-bit, where the interpreter truncates instead of rounding)."""
    K = a.shape[1]
    atol, rtol = TOLERANCES[a.dtype]
    assert out.shape == (a.shape[0], b.shape[1]) and out.dtype == a.dtype
    assert not out.isnan().any(), "an output element was never written"
    torch.testing.assert_close(out, matmul_ref(a, b), atol=atol * math.sqrt(max(K, 1)), rtol=rtol)



@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "MNK=%dx%dx%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, dtype, poisoned_outputs):
    a, b = _inputs(*shape, dtype)
    _check(matmul(a, b), a, b)


@pytest.mark.parametrize("layout", ["a_t", "b_t", "both_t", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(layout, dtype, poisoned_outputs):
    M, N, K = 45, 70, 99
    if layout == "strided":  # every other column of wider matrices
        a = torch.randn(M, 2 * K, device=device.DEVICE, dtype=dtype)[:, ::2]
        b = torch.randn(K, 2 * N, device=device.DEVICE, dtype=dtype)[:, ::2]
    else:
        a, b = _inputs(M, N, K, dtype)
        if layout in ("a_t", "both_t"):
            a = torch.randn(K, M, device=device.DEVICE, dtype=dtype).t()  # (M, K), column-major
        if layout in ("b_t", "both_t"):
            b = torch.randn(N, K, device=device.DEVICE, dtype=dtype).t()  # (K, N), column-major: x @ W.T
    assert not (a.is_contiguous() and b.is_contiguous())
    _check(matmul(a, b), a, b)


def test_output_is_a_fresh_contiguous_tensor():
    a, b = _inputs(20, 30, 40, torch.float32)
    out = matmul(a, b)
    assert out.is_contiguous() and out.device == a.device


def test_empty_dimensions():
    a, b = _inputs(0, 5, 3, torch.float16)
    assert matmul(a, b).shape == (0, 5)
    a, b = _inputs(4, 0, 3, torch.float16)
    assert matmul(a, b).shape == (4, 0)
    a, b = _inputs(4, 5, 0, torch.float16)  # K = 0: an empty sum is zero
    out = matmul(a, b)
    assert out.shape == (4, 5) and out.dtype == torch.float16 and (out == 0).all()


# ----------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------


def _configs_to_test():
    if device.HAS_GPU:
        # Those this GPU can run, each compiled: the autotuner may pick any of them.
        cap = device.capability()
        _, smem = mm._device_limits(torch.cuda.current_device())
        return mm.configs_for(cap, smem, 2)
    # In the interpreter every list runs; only the constants differ.
    return list(dict.fromkeys(mm.HOPPER_CONFIGS + mm.AMPERE_CONFIGS + mm.SMALL_SMEM_CONFIGS))


def _cfg_id(c):
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}-s{c.num_stages}-w{c.num_warps}"


@pytest.mark.parametrize("config", _configs_to_test(), ids=_cfg_id)
def test_every_config_handles_tails(config, poisoned_outputs):
    # Not a multiple of any tile in M, N or K; one K step short of BLOCK_K on the last step.
    dtype = torch.float16
    a, b = _inputs(130, 259, 195, dtype)
    _check(matmul(a, b, config=config), a, b)


def test_config_lists_are_named_and_short():
    for name in ("HOPPER_CONFIGS", "AMPERE_CONFIGS", "SMALL_SMEM_CONFIGS"):
        configs = getattr(mm, name)
        assert 1 <= len(configs) <= 12, name
        for c in configs:
            assert set(c.kwargs) == {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"}


def test_smem_estimate():
    c = triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8)
    assert mm.smem_bytes(c, 2) == 3 * (128 * 64 + 64 * 256) * 2  # 144 KiB


def test_pruning_by_shared_memory():
    h100_smem = 232448  # 227 KiB per block
    hopper_bf16 = mm.configs_for((9, 0), h100_smem, 2)
    assert hopper_bf16 == [c for c in mm.HOPPER_CONFIGS if mm.smem_bytes(c, 2) <= h100_smem]
    assert any(c.kwargs["BLOCK_N"] == 256 for c in hopper_bf16)
    # fp32 doubles every buffer: the big tiles no longer fit
    hopper_fp32 = mm.configs_for((9, 0), h100_smem, 4)
    assert hopper_fp32 and all(mm.smem_bytes(c, 4) <= h100_smem for c in hopper_fp32)
    assert len(hopper_fp32) < len(hopper_bf16)
    # a T4: 64 KiB per block
    t4 = mm.configs_for((7, 5), 65536, 2)
    assert t4 and all(mm.smem_bytes(c, 2) <= 65536 for c in t4)
    assert mm.config_list((8, 0)) is mm.AMPERE_CONFIGS
    assert mm.config_list((10, 0)) is mm.HOPPER_CONFIGS
    # nothing fits: the small fallback, never an empty list
    assert mm.configs_for((7, 5), 1024, 4) == [mm.SMALL_PROBLEM_CONFIG]


def test_pruning_by_problem_size():
    skinny = mm.configs_for((9, 0), 232448, 2, M=16, N=8192)  # decode-like: 16 rows
    smallest = min(c.kwargs["BLOCK_M"] for c in mm.HOPPER_CONFIGS)
    assert skinny and all(c.kwargs["BLOCK_M"] == smallest for c in skinny)
    assert len(mm.configs_for((9, 0), 232448, 2, M=8192, N=8192)) == len(mm.configs_for((9, 0), 232448, 2))


def test_small_problem_config_fits_every_gpu_in_fp32():
    assert mm.smem_bytes(mm.SMALL_PROBLEM_CONFIG, 4) <= 64 * 1024  # a T4's shared memory


def test_interpreter_flag():
    # UPCAST is what works around the interpreter's broken bf16 tl.dot; the GPU path must not pay for it.
    assert mm._kernel_flags(torch.bfloat16)["UPCAST"] is device.INTERPRET


@pytest.mark.parametrize("dtype", DTYPES)
def test_upcast_path(dtype, poisoned_outputs):
    # The kernel with UPCAST=True (what the interpreter always runs), on either machine.
    M, N, K = 37, 50, 70
    a, b = _inputs(M, N, K, dtype)
    c = torch.empty(M, N, device=a.device, dtype=dtype)
    cfg = mm.INTERPRETER_CONFIG
    mm._matmul_kernel[mm._grid(M, N)](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(),
                                      **cfg.kwargs, UPCAST=True, INPUT_PRECISION="ieee")
    _check(c, a, b)


def test_fp32_precision_follows_pytorch():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert mm._kernel_flags(torch.float32)["INPUT_PRECISION"] == "ieee"
        torch.set_float32_matmul_precision("high")
        assert mm._kernel_flags(torch.float32)["INPUT_PRECISION"] == "tf32"
        a, b = _inputs(40, 40, 64, torch.float32)
        # TF32 keeps 10 mantissa bits: ~1e-3 relative per product
        torch.testing.assert_close(matmul(a, b), matmul_ref(a, b), atol=2e-2, rtol=5e-3)
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.skipif(not device.HAS_GPU, reason="autotuning runs only on a GPU; the interpreter uses INTERPRETER_CONFIG")
@pytest.mark.parametrize("dtype", DTYPES)
def test_autotuned_path(dtype, poisoned_outputs):
    M, N, K = 300, 520, 260  # above AUTOTUNE_MIN_WORK
    assert M * N * K >= mm.AUTOTUNE_MIN_WORK
    a, b = _inputs(M, N, K, dtype)
    _check(matmul(a, b), a, b)
    picked = mm.best_config(a, b)
    assert picked is not None and picked in mm.config_list(device.capability())


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_inner_dimensions_must_match():
    a = torch.randn(3, 5, device=device.DEVICE)
    b = torch.randn(6, 2, device=device.DEVICE)
    with pytest.raises(ValueError, match=r"a is \(M, K\)=\(3, 5\) but b is \(6, 2\): "
                                         r"a.shape\[1\] must equal b.shape\[0\]"):
        matmul(a, b)


@pytest.mark.parametrize("which, shape", [("a", (2, 3, 4)), ("a", (4,)), ("b", (4,)), ("b", (1, 4, 5))])
def test_inputs_must_be_2d(which, shape):
    a = torch.randn(3, 4, device=device.DEVICE)
    b = torch.randn(4, 5, device=device.DEVICE)
    bad = torch.randn(shape, device=device.DEVICE)
    a, b = (bad, b) if which == "a" else (a, bad)
    with pytest.raises(ValueError, match=rf"matmul: {which} must be 2-D, got shape {tuple(shape)}".replace("(", r"\(").replace(")", r"\)")):
        matmul(a, b)


def test_mixed_dtypes():
    a = torch.randn(3, 4, device=device.DEVICE)
    with pytest.raises(TypeError, match="a is float32 but b is float16; cast them to one dtype"):
        matmul(a, torch.randn(4, 5, device=device.DEVICE).half())


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_unsupported_dtype(dtype):
    a = torch.ones(3, 4, device=device.DEVICE, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(TypeError, match=f"a has dtype {name}; supported dtypes are float32, float16, bfloat16"):
        matmul(a, a.t())


def test_not_a_tensor():
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got list"):
        matmul(torch.randn(1, 2, device=device.DEVICE), [[1.0], [2.0]])


@pytest.mark.skipif(device.HAS_GPU, reason="checks the CPU-only message; the GPU variant is below")
def test_tensor_on_another_device_without_gpu():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError, match="b is on meta"):
        matmul(a, torch.randn(4, 5, device="meta"))


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a GPU to have tensors on two devices")
def test_tensors_on_different_devices():
    a = torch.randn(3, 4, device="cuda")
    with pytest.raises(ValueError, match="b is on the CPU but this machine has a GPU"):
        matmul(a, torch.randn(4, 5))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_two_gpus():
    a = torch.randn(3, 4, device="cuda:0")
    with pytest.raises(ValueError, match="a is on cuda:0 but b is on cuda:1"):
        matmul(a, torch.randn(4, 5, device="cuda:1"))


def test_bad_config():
    a, b = _inputs(4, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="config must set BLOCK_M, BLOCK_N, BLOCK_K and GROUP_M"):
        matmul(a, b, config=triton.Config({"BLOCK_M": 32}))


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the autotuner may have tuned this shape")
def test_no_autotuning_in_the_interpreter():
    # The interpreter always runs INTERPRETER_CONFIG: the autotuner's cache stays empty.
    a, b = _inputs(64, 64, 4096, torch.float16)
    assert 64 * 64 * 4096 >= mm.AUTOTUNE_MIN_WORK
    _check(matmul(a, b), a, b)
    assert mm.best_config(a, b) is None
