"""Tests of int8 weight-only quantisation (infer_lib.kernels.int8_matmul_kernel): ``quantize_int8``
and the ``int8_matmul`` kernel, against ``int8_matmul_ref``.

In the interpreter every call runs ``_tuning.INT8_MATMUL.interpreter`` (16×32×32 tiles, four
K slices) unless it passes ``config=``; on a GPU the tuned path and every listed configuration
are tested too (the GPU-only tests at the end)."""

import importlib
import math
import os

import pytest
import torch
import triton

from conftest import DTYPES, IEEE_WARNINGS_EXPECTED, TOLERANCES
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.kernels.int8_matmul_kernel import best_config, int8_matmul, int8_matmul_ref, quantize_int8
from infer_lib.kernels.matmul_splitk_kernel import _counters

# the module, not the function of the same name
i8 = importlib.import_module("infer_lib.kernels.int8_matmul_kernel")

DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
FP32 = torch.float32

#: (M, K, N): one token; a few; a row tile and one row more (17 against 16-row tiles); more
#: than 64 rows (several row tiles); K and N odd, so every last K step and column tile is ragged.
SHAPES = [(1, 45, 213), (3, 213, 45), (17, 64, 33), (65, 45, 213)]


def _weights(K, N, dtype=FP32, spread=True):
    """A weight with columns of very different ranges (what per-column scales are for)."""
    w = torch.randn(K, N, device=DEV)
    if spread:
        w = w * 10.0 ** torch.empty(N, device=DEV).uniform_(-3, 2)
    return w.to(dtype)


def _operands(M, K, N, dtype):
    a = torch.randn(M, K, device=DEV, dtype=dtype)
    w_q, scales = quantize_int8(_weights(K, N, dtype, spread=False))
    return a, w_q, scales


def _check(out, a, w_q, scales):
    """Against the fp32 reference: sums of K products of magnitude ~1, so the absolute
    tolerance grows with √K; the relative one covers rounding to the output type."""
    K = a.shape[1]
    atol, rtol = TOLERANCES[a.dtype]
    assert out.shape == (a.shape[0], w_q.shape[1]) and out.dtype == a.dtype
    assert not out.isnan().any(), "an output element was never written"
    torch.testing.assert_close(out, int8_matmul_ref(a, w_q, scales), atol=atol * math.sqrt(max(K, 1)), rtol=rtol)


def _cfg(bm=16, bn=32, bk=32, split=4, stages=1, warps=4):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split},
                         num_stages=stages, num_warps=warps)


def _counters_idle():
    return all(bool((c == 0).all()) for c in _counters.values())


# ----------------------------------------------------------------------------
# quantize_int8
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_round_trip_is_within_half_a_step(dtype):
    K, N = 45, 213
    w = _weights(K, N, dtype)
    w_q, scales = quantize_int8(w)
    assert w_q.dtype == torch.int8 and w_q.shape == (K, N) and w_q.device == w.device
    assert scales.dtype == FP32 and scales.shape == (N,)
    assert int(w_q.abs().max()) <= 127 and bool((w_q != -128).all())
    # each column's largest weight becomes ±127: the whole range of levels is used
    assert torch.equal(w_q.abs().amax(dim=0), torch.full((N,), 127, dtype=torch.int8, device=DEV))
    torch.testing.assert_close(scales, w.float().abs().amax(dim=0) / 127, atol=0, rtol=1e-6)
    # within half a step; the step itself is rounded to fp32, which w_q = ±127 multiplies
    err = (w.double() - w_q.double() * scales.double()).abs()
    assert bool((err <= scales.double() / 2 * (1 + 127 * 2.0**-23)).all()), float((err / scales.double()).max())


def test_a_column_of_zeros_gets_scale_one_and_zero_weights():
    w = _weights(45, 33)
    w[:, 3] = 0.0
    w[:, 7] = 1e-45                  # so small that max / 127 underflows to 0 in fp32
    w_q, scales = quantize_int8(w)
    assert scales[3] == 1.0 and scales[7] == 1.0 and bool((w_q[:, [3, 7]] == 0).all())
    assert bool((scales > 0).all() and scales.isfinite().all())
    a = torch.randn(3, 45, device=DEV)
    out = int8_matmul(a, w_q, scales)
    assert bool((out[:, 3] == 0).all())
    _check(out, a, w_q, scales)


def test_quantize_empty_weights():
    w_q, scales = quantize_int8(torch.randn(0, 5, device=DEV))
    assert w_q.shape == (0, 5) and torch.equal(scales, torch.ones(5, device=DEV))
    w_q, scales = quantize_int8(torch.randn(4, 0, device=DEV))
    assert w_q.shape == (4, 0) and scales.shape == (0,)


def test_quantised_product_is_within_the_quantisation_error_of_the_original():
    # |a @ w - a @ (w_q s)| ≤ Σ_k |a[m, k]| · s[n] / 2: the only error is the rounding of w
    a, w = torch.randn(5, 64, device=DEV), _weights(64, 40)
    w_q, scales = quantize_int8(w)
    err = (int8_matmul(a, w_q, scales) - a @ w).abs()
    bound = a.abs().sum(dim=1, keepdim=True) * scales[None, :] / 2
    assert bool((err <= bound * 1.001 + 1e-4).all())


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_quantize_refuses_non_finite_weights(value):
    w = _weights(20, 9)
    w[13, 4] = value
    with pytest.raises(ValueError, match=r"non-finite value\(s\).*w\[13, 4\].*column 4"):
        quantize_int8(w)


@pytest.mark.parametrize("make, error, match", [
    (lambda: torch.randn(7, device=DEV), ValueError, "quantize_int8: w must be 2-D"),
    (lambda: torch.randn(2, 3, 4, device=DEV), ValueError, "must be 2-D"),
    (lambda: torch.randint(-5, 5, (4, 3), device=DEV), TypeError, "w has dtype int64; supported dtypes"),
    (lambda: torch.randn(4, 3, device=DEV).to(torch.int8), TypeError, "w has dtype int8"),
    (lambda: torch.randn(4, 3, device=DEV, requires_grad=True), RuntimeError, "requires grad"),
    (lambda: [[1.0, 2.0]], TypeError, "must be a torch.Tensor"),
])
def test_quantize_refuses_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        quantize_int8(make())


def test_quantize_under_no_grad_and_on_the_cpu():
    w = torch.randn(6, 5, device=DEV, requires_grad=True)
    with torch.no_grad():
        w_q, scales = quantize_int8(w)
    assert not scales.requires_grad
    # plain PyTorch: a CPU weight is quantised where it is, also on a GPU machine
    w_q_cpu, scales_cpu = quantize_int8(w.detach().cpu())
    assert w_q_cpu.device.type == "cpu" and torch.equal(w_q_cpu, w_q.cpu())
    torch.testing.assert_close(scales_cpu, scales.cpu())


# ----------------------------------------------------------------------------
# int8_matmul against the reference
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "MKN=%dx%dx%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_reference(shape, dtype, poisoned_outputs):
    a, w_q, scales = _operands(*shape, dtype)
    _check(int8_matmul(a, w_q, scales), a, w_q, scales)
    assert _counters_idle()            # every tile's last program reset its counter


@pytest.mark.parametrize("split", [1, 2, 3, 64])
def test_every_split_gives_the_same_product(split, poisoned_outputs):
    """No split (each program scales and writes its own tile), slices that do not divide K,
    more slices than K steps (they are merged)."""
    a, w_q, scales = _operands(3, 200, 50, FP32)
    _check(int8_matmul(a, w_q, scales, config=_cfg(bm=16, bn=16, bk=16, split=split)), a, w_q, scales)
    assert _counters_idle()


def test_the_sum_is_deterministic():
    a, w_q, scales = _operands(2, 333, 40, torch.float16)
    first = int8_matmul(a, w_q, scales, config=_cfg(split=5))
    for _ in range(2):
        assert torch.equal(int8_matmul(a, w_q, scales, config=_cfg(split=5)), first)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs(dtype, poisoned_outputs):
    M, K, N = 7, 90, 45
    a = torch.randn(K, M, device=DEV, dtype=dtype).t()                       # column-major
    w_q, scales = quantize_int8(_weights(K, N, spread=False))
    w_q = w_q.t().contiguous().t()              # a (K, N) view of an (N, K) tensor: nn.Linear's layout
    scales = torch.stack([scales, torch.full_like(scales, NAN)], dim=1)[:, 0]   # every other element
    assert not (a.is_contiguous() or w_q.is_contiguous() or scales.is_contiguous())
    _check(int8_matmul(a, w_q, scales), a, w_q, scales)


def test_more_row_tiles_than_the_grid_allows(monkeypatch, poisoned_outputs):
    # rows beyond MAX_GRID_YZ row tiles run as further launches (here 2 tiles of 16 rows each)
    monkeypatch.setattr(_tuning, "MAX_GRID_YZ", 2)
    a, w_q, scales = _operands(70, 40, 37, FP32)
    _check(int8_matmul(a, w_q, scales), a, w_q, scales)
    assert _counters_idle()


@pytest.mark.parametrize("dtype", [torch.float16, FP32])
def test_dequantise_path_without_upcast(dtype, poisoned_outputs):
    # The kernel with UPCAST=False (what a GPU runs: int8 converted to a's dtype before tl.dot),
    # on either machine; the interpreter's tl.dot is sound for fp16 and fp32, not for bf16.
    M, K, N = 5, 70, 40
    a, w_q, scales = _operands(M, K, N, dtype)
    c = torch.empty(M, N, device=a.device, dtype=dtype)
    counters = torch.zeros(64, dtype=torch.int32, device=a.device)
    for split in (1, 3):
        k_split = -(-K // (16 * split)) * 16         # a multiple of BLOCK_K; split slices cover K
        partial = torch.empty(split, M, N, device=a.device, dtype=FP32)
        i8._int8_matmul_kernel[(2, split, 1)](
            a, w_q, scales, c, partial, counters, M, N, K, k_split, *a.stride(), *w_q.stride(), scales.stride(0),
            *c.stride(), BLOCK_M=16, BLOCK_N=32, BLOCK_K=16, SPLIT_K=split, UPCAST=False,
            INPUT_PRECISION="ieee")
        _check(c, a, w_q, scales)
        assert bool((counters == 0).all())


def test_interpreter_flag():
    assert i8._kernel_flags(torch.bfloat16)["UPCAST"] is device.INTERPRET


def test_output_is_a_fresh_contiguous_tensor():
    a, w_q, scales = _operands(4, 30, 20, FP32)
    out = int8_matmul(a, w_q, scales)
    assert out.is_contiguous() and out.device == a.device and out.data_ptr() != a.data_ptr()


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_dimensions(dtype, poisoned_outputs):
    for M, N in ((0, 5), (4, 0), (0, 0)):
        a, w_q, scales = _operands(M, 3, N, dtype)
        out = int8_matmul(a, w_q, scales)
        assert out.shape == (M, N) and out.dtype == dtype
    a, w_q, scales = _operands(4, 0, 5, dtype)      # K = 0: an empty sum is zero
    out = int8_matmul(a, w_q, scales)
    assert out.shape == (4, 5) and out.dtype == dtype and bool((out == 0).all())


# ----------------------------------------------------------------------------
# NaN and ±inf in a propagate as in torch.matmul of the dequantised weights
# ----------------------------------------------------------------------------

@pytest.fixture
def sentinel_outputs(monkeypatch):
    """Like ``poisoned_outputs``, but the output starts as a large finite number: a NaN
    poison could not show an unwritten element that should be NaN."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(-30000.0) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


def _kinds(x):
    x = x.float()
    return torch.stack([x.isnan(), x == INF, x == -INF])


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("config", [None, _cfg(split=1)], ids=["split", "no-split"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_in_a_propagate_like_torch(dtype, config, sentinel_outputs):
    M, K, N = 19, 70, 37          # ragged against 16×32×32 tiles: a last row tile of 3, column tile of 5
    a, w_q, scales = _operands(M, K, N, dtype)
    w_q[K - 1, :] = 1             # the last K index meets no zero weight but in column 0
    w_q[:, 0] = 0                 # a column of zeros: inf · 0 is NaN there
    a[0, 5] = NAN                 # the first row (which wrapped padding rows re-read): NaN throughout
    a[9, 33] = INF                # an interior row: ±inf by each weight's sign, NaN in column 0
    a[M - 1, K - 1] = -INF        # the last row and K index (the masked last step)
    a[M - 2, 3], a[M - 2, 4] = INF, -INF   # inf - inf where both weights have one sign
    got, want = int8_matmul(a, w_q, scales, config=config), int8_matmul_ref(a, w_q, scales)
    assert torch.equal(_kinds(got), _kinds(want))
    assert bool(want[0].isnan().all()) and bool(want[9, 0].isnan()) and bool(want[M - 1, 0].isnan())
    assert bool((want[M - 1, 1:] == -INF).all())
    assert bool(torch.isfinite(want[1:9]).all())        # the other rows stay finite
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got, want, atol=atol * math.sqrt(K), rtol=rtol, equal_nan=True)


@IEEE_WARNINGS_EXPECTED
def test_a_bad_scale_the_launcher_did_not_read_makes_its_column_nan():
    # On a GPU without INFER_LIB_CHECKS=1 the launcher does not read the scales; the kernel
    # then turns a scale that is not a finite positive number into a NaN column.
    M, K, N = 3, 40, 37
    a, w_q, scales = _operands(M, K, N, FP32)
    bad = scales.clone()
    bad[[1, 5, 9, 36]] = torch.tensor([0.0, -0.5, INF, NAN], device=DEV)
    for split in (1, 4):
        c = torch.empty(M, N, device=DEV)
        i8._launch(a, w_q, bad, c, _cfg(split=split))
        assert bool(c[:, [1, 5, 9, 36]].isnan().all())
        keep = [n for n in range(N) if n not in (1, 5, 9, 36)]
        torch.testing.assert_close(c[:, keep], int8_matmul_ref(a, w_q, scales)[:, keep], atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

def _ok():
    return _operands(3, 8, 5, FP32)


def _with(**change):
    a, w_q, scales = _ok()
    return change.get("a", a), change.get("w_q", w_q), change.get("scales", scales)


def _bad_scale(value):
    _, _, scales = _ok()
    scales = scales.clone()
    scales[2] = value
    return scales


@pytest.mark.parametrize("make, error, match", [
    (lambda: _with(a=torch.randn(3, 8, 1, device=DEV)), ValueError, "int8_matmul: a must be 2-D"),
    (lambda: _with(a=torch.randn(8, device=DEV)), ValueError, "a must be 2-D"),
    (lambda: _with(a=torch.randint(0, 5, (3, 8), device=DEV, dtype=torch.int8)), TypeError,
     "a has dtype int8; supported dtypes are float32, float16, bfloat16"),
    (lambda: _with(a=torch.randn(3, 8, device=DEV, dtype=torch.float64)), TypeError, "a has dtype float64"),
    (lambda: _with(w_q=torch.randn(8, 5, device=DEV)), TypeError,
     "w_q has dtype float32; it must be int8.*quantize_int8"),
    (lambda: _with(w_q=torch.zeros(8, 5, device=DEV, dtype=torch.uint8)), TypeError, "w_q has dtype uint8"),
    (lambda: _with(w_q=torch.zeros(40, device=DEV, dtype=torch.int8)), ValueError, "w_q must be 2-D"),
    (lambda: _with(w_q=torch.zeros(9, 5, device=DEV, dtype=torch.int8)), ValueError,
     r"a.shape\[1\] must equal w_q.shape\[0\]"),
    (lambda: _with(scales=torch.ones(5, device=DEV, dtype=torch.float16)), TypeError,
     "scales has dtype float16; it must be float32"),
    (lambda: _with(scales=torch.ones(5, 1, device=DEV)), ValueError, "scales must be 1-D"),
    (lambda: _with(scales=torch.ones(4, device=DEV)), ValueError, "scales has 4 entries but w_q has N=5 columns"),
    (lambda: _with(scales=torch.ones(6, device=DEV)), ValueError, "scales has 6 entries"),
    (lambda: _with(scales=_bad_scale(NAN)), ValueError, r"scales\[2\] = nan is not a finite positive number"),
    (lambda: _with(scales=_bad_scale(INF)), ValueError, r"scales\[2\] = inf is not a finite positive"),
    (lambda: _with(scales=_bad_scale(0.0)), ValueError, r"scales\[2\] = 0.0 is not a finite positive"),
    (lambda: _with(scales=_bad_scale(-1.0)), ValueError, r"scales\[2\] = -1.0 is not a finite positive"),
    (lambda: _with(a=torch.randn(3, 8, device=DEV, requires_grad=True)), RuntimeError, "a requires grad"),
    (lambda: _with(scales=torch.ones(5, device=DEV, requires_grad=True)), RuntimeError, "scales requires grad"),
    (lambda: ([[0.0] * 8] * 3, *_ok()[1:]), TypeError, "a must be a torch.Tensor, got list"),
])
def test_bad_input_is_refused(make, error, match):
    if device.HAS_GPU and "scales\\[2\\]" in match:
        os.environ["INFER_LIB_CHECKS"] = "1"      # GPU scales are read only when asked to
    try:
        a, w_q, scales = make()
        with pytest.raises(error, match=match):
            int8_matmul(a, w_q, scales)
    finally:
        os.environ.pop("INFER_LIB_CHECKS", None)


def test_requires_grad_is_fine_under_no_grad():
    a, w_q, scales = _ok()
    a.requires_grad_(True)
    with torch.no_grad():
        _check(int8_matmul(a, w_q, scales), a.detach(), w_q, scales)


@pytest.mark.parametrize("change, match", [(dict(split=0), "SPLIT_K=0"), (dict(bk=8), "BLOCK_K=8"),
                                           (dict(bn=48), "BLOCK_N=48"), (dict(warps=3), "num_warps=3")])
def test_bad_config_is_refused(change, match):
    with pytest.raises(ValueError, match=f"int8_matmul: config {match}"):
        int8_matmul(*_ok(), config=_cfg(**change))


# ----------------------------------------------------------------------------
# Configurations (the lists live in _tuning)
# ----------------------------------------------------------------------------

CLASSES = {"hopper": ((9, 0), 232448), "ampere": ((8, 0), 166912), "small_smem": ((8, 9), 101376),
           "t4": ((7, 5), 65536)}


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("element_size", [2, 4])
def test_candidates_suit_the_shape_and_fit_the_shared_memory(cls, element_size):
    cap, smem = CLASSES[cls]
    for M in (1, 5, 16, 17, 33, 64, 65, 4096):
        shape = {"M": M, "N": 8192, "K": 8192}
        got = _tuning.INT8_MATMUL.candidates(cap, smem, element_size, shape)
        assert got and all(_tuning.INT8_MATMUL.smem_bytes(c, element_size, shape) <= smem for c in got)
        if M <= _tuning.SMALL_M:        # decode: one row tile holds every row, the weights are read once
            assert {c.kwargs["BLOCK_M"] for c in got} == {max(16, _tuning.bucket(M))}
        else:                           # more rows: tall tiles, no partials growing with M
            assert all(c.kwargs["BLOCK_M"] >= 64 and c.kwargs["SPLIT_K"] == 1 for c in got)


# ----------------------------------------------------------------------------
# Compiled on a GPU
# ----------------------------------------------------------------------------

@pytest.mark.skipif(not device.HAS_GPU, reason="tuning and compiled configurations run only on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3, 16, 33, 64, 200])
def test_tuned_decode_shapes_on_the_gpu(dtype, M):
    if dtype == torch.bfloat16 and not device.supports_bf16():
        pytest.skip("bfloat16 needs compute capability 8.0")
    K, N = 4096, 4096 + 64
    a, w_q, scales = _operands(M, K, N, dtype)
    _check(int8_matmul(a, w_q, scales), a, w_q, scales)
    assert best_config(a, w_q) is not None
    assert _counters_idle()


@pytest.mark.skipif(not device.HAS_GPU, reason="compiled configurations run only on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, FP32])
def test_every_listed_config_on_ragged_tails(dtype):
    if dtype == torch.bfloat16 and not device.supports_bf16():
        pytest.skip("bfloat16 needs compute capability 8.0")
    smem = _tuning.max_shared_memory()
    configs = _tuning.INT8_MATMUL
    for M in (1, 20, 50, 100):
        a, w_q, scales = _operands(M, 1000 + 7, 300 + 5, dtype)
        shape = {"M": M, "N": w_q.shape[1], "K": w_q.shape[0]}
        for cfg in configs.candidates(device.capability(), smem, a.element_size(), shape) + configs.fallbacks:
            if configs.smem_bytes(cfg, a.element_size(), shape) <= smem:
                _check(int8_matmul(a, w_q, scales, config=cfg), a, w_q, scales)
    assert _counters_idle()


@pytest.mark.skipif(not device.HAS_GPU, reason="GPU scales are read only with INFER_LIB_CHECKS=1")
def test_gpu_scales_are_checked_only_when_asked():
    a, w_q, scales = _ok()
    scales[1] = 0.0
    assert bool(int8_matmul(a, w_q, scales)[:, 1].isnan().all())     # no synchronisation: a NaN column
    os.environ["INFER_LIB_CHECKS"] = "1"
    try:
        with pytest.raises(ValueError, match=r"scales\[1\] = 0.0"):
            int8_matmul(a, w_q, scales)
    finally:
        os.environ.pop("INFER_LIB_CHECKS", None)


@pytest.mark.skipif(not device.HAS_GPU, reason="tensors on two devices need a GPU")
def test_operands_on_different_devices_are_refused():
    a, w_q, scales = _ok()
    with pytest.raises(ValueError, match="scales is on the CPU but this machine has a GPU"):
        int8_matmul(a, w_q, scales.cpu())
    if torch.cuda.device_count() > 1:
        with pytest.raises(ValueError, match="a is on cuda:0 but w_q is on cuda:1"):
            int8_matmul(a.to("cuda:0"), w_q.to("cuda:1"), scales.to("cuda:0"))


@pytest.mark.skipif(not device.HAS_GPU, reason="CUDA graphs need a GPU")
def test_captures_in_a_cuda_graph():
    a, w_q, scales = _operands(4, 4096, 4096, torch.bfloat16 if device.supports_bf16() else torch.float16)
    int8_matmul(a, w_q, scales)                       # tune and compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = int8_matmul(a, w_q, scales)
    a.copy_(torch.randn_like(a))
    graph.replay()
    _check(out, a, w_q, scales)
