"""Tests of the split-K matmul for decode shapes (infer_lib.kernels.matmul_splitk_kernel)."""

import pytest
import torch
import triton

from conftest import DTYPES, TOLERANCES
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.kernels.matmul_splitk_kernel import _counters, matmul_splitk, matmul_splitk_ref

DEV = device.DEVICE


def _cfg(bm=16, bn=32, bk=32, split=4, stages=1, warps=4):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split},
                         num_stages=stages, num_warps=warps)


def _close(got, a, b, dtype):
    atol, rtol = TOLERANCES[dtype]
    K = a.shape[1]
    # fp32 accumulation in a different order: error grows like √K in the output's units
    torch.testing.assert_close(got.float(), matmul_splitk_ref(a, b).float(),
                               atol=atol * max(1.0, K ** 0.5 / 4), rtol=rtol)


def _counters_idle():
    return all(bool((c == 0).all()) for c in _counters.values())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M, K, N", [(1, 100, 37), (3, 257, 70), (17, 64, 33), (5, 31, 40), (64, 130, 65)])
def test_matches_the_reference(dtype, M, K, N, poisoned_outputs):
    a = torch.randn(M, K, device=DEV, dtype=dtype)
    b = torch.randn(K, N, device=DEV, dtype=dtype)
    _close(matmul_splitk(a, b), a, b, dtype)
    assert _counters_idle()            # every tile's last program reset its counter


@pytest.mark.parametrize("split", [1, 2, 3, 7, 64])
def test_every_split_gives_the_same_product(split, poisoned_outputs):
    """Slices that do not divide K, more slices than K steps (they are merged), and no split."""
    a = torch.randn(3, 200, device=DEV)
    b = torch.randn(200, 50, device=DEV)
    _close(matmul_splitk(a, b, config=_cfg(bm=16, bn=16, bk=16, split=split)), a, b, torch.float32)
    assert _counters_idle()


def test_the_sum_is_deterministic():
    a = torch.randn(2, 333, device=DEV)
    b = torch.randn(333, 40, device=DEV)
    first = matmul_splitk(a, b, config=_cfg(split=5))
    for _ in range(2):
        assert torch.equal(matmul_splitk(a, b, config=_cfg(split=5)), first)


def test_strided_inputs(poisoned_outputs):
    a = torch.randn(90, 7, device=DEV).t()          # (7, 90), column-major
    b = torch.randn(45, 90, device=DEV).t()         # (90, 45)
    _close(matmul_splitk(a, b), a, b, torch.float32)


@pytest.mark.parametrize("where", ["first slice", "last slice", "ragged edge"])
def test_nan_and_inf_propagate_as_in_torch(where):
    M, K, N = 3, 130, 37
    a = torch.randn(M, K, device=DEV)
    b = torch.randn(K, N, device=DEV)
    k = {"first slice": 1, "last slice": K - 40, "ragged edge": K - 1}[where]
    a[1, k] = float("nan")
    b[k, N - 1] = float("inf")
    b[k + 1 if k + 1 < K else 0, 2] = float("-inf")
    got, want = matmul_splitk(a, b, config=_cfg(split=4)), a @ b
    for test in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(test(got), test(want)), test.__name__
    torch.testing.assert_close(got, want, equal_nan=True, atol=1e-4, rtol=1e-4)


def test_empty_dimensions():
    assert matmul_splitk(torch.randn(0, 5, device=DEV), torch.randn(5, 3, device=DEV)).shape == (0, 3)
    out = matmul_splitk(torch.randn(2, 0, device=DEV), torch.randn(0, 3, device=DEV))
    assert out.shape == (2, 3) and torch.equal(out, torch.zeros(2, 3, device=DEV))


@pytest.mark.parametrize("make, error, match", [
    (lambda: (torch.randn(2, 3, device=DEV), torch.randn(4, 5, device=DEV)), ValueError, "a.shape\\[1\\] must equal"),
    (lambda: (torch.randn(2, 3, 1, device=DEV), torch.randn(3, 5, device=DEV)), ValueError, "must be 2-D"),
    (lambda: (torch.randn(2, 3, device=DEV), torch.randn(3, 5, device=DEV, dtype=torch.float16)), TypeError,
     "cast them to one dtype"),
    (lambda: (torch.randn(2, 3, device=DEV, requires_grad=True), torch.randn(3, 5, device=DEV)), RuntimeError,
     "requires grad"),
])
def test_bad_input_is_refused(make, error, match):
    a, b = make()
    with pytest.raises(error, match=match):
        matmul_splitk(a, b)


@pytest.mark.parametrize("change, match", [(dict(split=0), "SPLIT_K=0"), (dict(bk=8), "BLOCK_K=8"),
                                           (dict(bn=48), "BLOCK_N=48")])
def test_bad_config_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        matmul_splitk(torch.randn(2, 3, device=DEV), torch.randn(3, 5, device=DEV), config=_cfg(**change))


def test_row_tile_covers_all_rows():
    for M in (1, 5, 16, 17, 33, 64):
        got = _tuning.SPLITK_MATMUL.candidates((9, 0), 232448, 2, {"M": M, "N": 8192, "K": 8192})
        assert got and {c.kwargs["BLOCK_M"] for c in got} == {max(16, _tuning.bucket(M))}


@pytest.mark.skipif(not device.HAS_GPU, reason="tuning and compiled configurations run only on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 3, 16, 33, 64])
def test_tuned_decode_shapes_on_the_gpu(dtype, M):
    if dtype == torch.bfloat16 and not device.supports_bf16():
        pytest.skip("bfloat16 needs compute capability 8.0")
    K, N = 4096, 4096 + 64
    a = torch.randn(M, K, device=DEV, dtype=dtype)
    b = torch.randn(K, N, device=DEV, dtype=dtype)
    _close(matmul_splitk(a, b), a, b, dtype)
    assert _counters_idle()


@pytest.mark.skipif(not device.HAS_GPU, reason="compiled configurations run only on a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_every_listed_config_on_ragged_tails(dtype):
    if dtype == torch.bfloat16 and not device.supports_bf16():
        pytest.skip("bfloat16 needs compute capability 8.0")
    smem = _tuning.max_shared_memory()
    for M in (1, 20, 50):
        a = torch.randn(M, 1000 + 7, device=DEV, dtype=dtype)
        b = torch.randn(1000 + 7, 300 + 5, device=DEV, dtype=dtype)
        for cfg in _tuning.SPLITK_MATMUL.candidates(device.capability(), smem, a.element_size(),
                                                    {"M": M, "N": b.shape[1], "K": b.shape[0]}):
            _close(matmul_splitk(a, b, config=cfg), a, b, dtype)
    assert _counters_idle()
