"""decode_attention against its fp32 reference and against flash_attention; the same tests
run in the interpreter (CPU, 16 keys a step) and compiled (GPU).

The partial results of unused splits and the output are poisoned with NaN
(``poisoned_outputs``): a split the combine should skip, or an element nobody
writes, fails the comparison.
"""

import importlib
import os

import pytest
import torch

from conftest import DTYPES, TOLERANCES
from infer_lib import device
from infer_lib.kernels import decode_attention, flash_attention
from infer_lib.reference import attention_ref

da = importlib.import_module("infer_lib.kernels.decode_attention_kernel")
DEV = device.DEVICE
IEEE_WARNINGS_EXPECTED = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                                    "ignore:All-NaN slice encountered:RuntimeWarning",
                                                    "ignore:overflow encountered:RuntimeWarning",
                                                    "ignore:divide by zero encountered:RuntimeWarning")


def _inputs(B, H, H_kv, S_max, D, dtype, lengths):
    q = torch.randn(B, H, D, device=DEV, dtype=dtype)
    k = torch.randn(B, H_kv, S_max, D, device=DEV, dtype=dtype)
    v = torch.randn(B, H_kv, S_max, D, device=DEV, dtype=dtype)
    return q, k, v, torch.tensor(lengths, device=DEV, dtype=torch.int32)


def _check(out, q, k, v, lens, sm_scale=None):
    atol, rtol = TOLERANCES[q.dtype]
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), da.decode_attention_ref(q, k, v, lens, sm_scale).float(),
                               atol=2 * atol, rtol=2 * rtol, equal_nan=True)


# (B, H, H_kv, S_max, D, lengths): MHA, GQA with 3, 4 and 8 query heads per KV head, MQA
# (H_kv = 1, 4 and 8 heads); lengths of 1, 2, a ragged tile, exactly S_max
SHAPES = [
    (1, 2, 2, 37, 16, [37]),
    (3, 6, 2, 70, 32, [70, 1, 33]),
    (2, 8, 2, 48, 64, [2, 47]),
    (2, 4, 1, 29, 128, [29, 16]),
    (2, 16, 2, 50, 128, [50, 17]),
    (1, 8, 1, 33, 64, [33]),
]


@pytest.mark.parametrize("B, H, H_kv, S_max, D, lengths", SHAPES, ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(B, H, H_kv, S_max, D, lengths, dtype, poisoned_outputs):
    q, k, v, lens = _inputs(B, H, H_kv, S_max, D, dtype, lengths)
    _check(decode_attention(q, k, v, lens), q, k, v, lens)


@pytest.mark.parametrize("splits", [1, 2, 3, 7, 1000])
def test_every_split_count_gives_the_same_answer(splits, poisoned_outputs):
    # more splits than key tiles are merged; 1 is no split at all
    q, k, v, lens = _inputs(2, 4, 2, 90, 32, torch.float32, [90, 41])
    _check(decode_attention(q, k, v, lens, num_splits=splits), q, k, v, lens)


def test_splits_come_from_the_shapes_only():
    # never from the lengths (they stay on the GPU; a CUDA graph of a step stays valid)
    assert da.choose_splits(B=1, H_kv=8, S_max=4096, block_n=64, programs=264) == 33
    assert da.choose_splits(B=64, H_kv=8, S_max=4096, block_n=64, programs=264) == 1
    assert da.choose_splits(B=1, H_kv=1, S_max=100, block_n=64, programs=264) == 2     # 2 key tiles
    assert da.choose_splits(B=1, H_kv=1, S_max=10**6, block_n=16, programs=10**6) == da.MAX_SPLITS


def test_the_launched_layout_rounds_chunks_to_whole_tiles():
    # 33 splits asked of 32 768 keys in 64-key tiles: chunks of 1024, so 32 are launched
    assert da.split_layout(1, 8, 32768, 64, programs=264) == (32, 1024)
    assert da.split_layout(16, 1, 4096, 64, programs=264) == (16, 256)     # 17 asked
    assert da.split_layout(64, 8, 4096, 64, programs=264) == (1, 4096)
    assert da.split_layout(2, 2, 100, 16, num_splits=3) == (3, 48)
    for S_max, block_n, n in ((100, 16, 3), (4096, 64, 17), (7, 16, 5), (1, 16, 1)):
        splits, chunk = da.split_layout(1, 1, S_max, block_n, num_splits=n)
        assert chunk % block_n == 0 and splits <= n and (splits - 1) * chunk < S_max <= splits * chunk


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_caches_match_flash_attention(dtype, poisoned_outputs):
    q, k, v, lens = _inputs(2, 6, 3, 45, 64, dtype, [45, 45])
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(decode_attention(q, k, v, lens).float(),
                               flash_attention(q[:, :, None], k, v)[:, :, 0].float(), atol=2 * atol, rtol=2 * rtol)


def test_strided_caches_and_int64_lengths(poisoned_outputs):
    # a cache laid out (B, S_max, H_kv, D), as some engines keep it, seen through a transpose
    B, H, H_kv, S_max, D = 2, 4, 2, 40, 32
    k = torch.randn(B, S_max, H_kv, D, device=DEV).transpose(1, 2)
    v = torch.randn(B, S_max, H_kv, D, device=DEV).transpose(1, 2)
    q = torch.randn(B, H, 2 * D, device=DEV)[..., ::2]              # every other element
    lens = torch.tensor([40, 9], device=DEV, dtype=torch.int64)
    assert not k.is_contiguous() and not q.is_contiguous()
    _check(decode_attention(q, k, v, lens), q, k, v, lens)


def test_sm_scale(poisoned_outputs):
    q, k, v, lens = _inputs(1, 2, 1, 20, 16, torch.float32, [20])
    _check(decode_attention(q, k, v, lens, sm_scale=0.3), q, k, v, lens, sm_scale=0.3)


# ----------------------------------------------------------------------------
# NaN, ±inf, what lies past a sequence's length, broken lengths
# ----------------------------------------------------------------------------

@IEEE_WARNINGS_EXPECTED
def test_garbage_past_the_length_never_reaches_the_output(poisoned_outputs):
    q, k, v, lens = _inputs(2, 4, 2, 50, 32, torch.float32, [21, 50])
    k[0, :, 21:] = float("nan")
    v[0, :, 21:] = float("inf")
    out = decode_attention(q, k, v, lens)
    assert torch.isfinite(out).all()
    _check(out, q, k, v, lens)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("kind", ["nan query", "nan key", "nan value", "+inf key", "-inf scores"])
def test_special_values_propagate_as_in_the_reference(kind, poisoned_outputs):
    q, k, v, lens = _inputs(2, 4, 2, 50, 32, torch.float32, [50, 30])
    if kind == "nan query":
        q[1, 3, 5] = float("nan")
    elif kind == "nan key":
        k[0, 1, 40, 2] = float("nan")                 # seen by query heads 2 and 3 of sequence 0
    elif kind == "nan value":
        v[1, 0, 29, 7] = float("nan")                 # the last key of sequence 1
    elif kind == "+inf key":
        k[0, 0, 3] = float("inf")
    elif kind == "-inf scores":
        k[1, 1, :30] = float("-inf")                  # every visible key of one KV head: scores ±inf
        q[1, 2:] = q[1, 2:].abs() + 0.1               # positive queries: every score -inf
    out = decode_attention(q, k, v, lens)
    want = da.decode_attention_ref(q, k, v, lens)
    assert torch.equal(out.isnan(), want.isnan()), kind
    if kind == "-inf scores":
        assert (out[1, 2:] == 0).all()                # all -inf: zeros, as SDPA's safe softmax
    else:
        assert out.isnan().any(), kind
    _check(out, q, k, v, lens)


@pytest.mark.parametrize("bad", [0, 31, -1])
def test_broken_lengths_are_refused_where_they_can_be_read(bad):
    q, k, v, _ = _inputs(2, 4, 2, 30, 16, torch.float32, [1, 1])
    lens = torch.tensor([30, bad], device=DEV, dtype=torch.int32)
    if device.HAS_GPU:      # on a GPU the values are read only when asked: it costs a synchronisation
        os.environ["INFER_LIB_CHECKS"] = "1"
    try:
        with pytest.raises(ValueError, match=f"cache_seqlens\\[1\\] = {bad} is outside 1..30"):
            decode_attention(q, k, v, lens)
    finally:
        os.environ.pop("INFER_LIB_CHECKS", None)


@IEEE_WARNINGS_EXPECTED
def test_broken_lengths_unchecked_give_nan_for_that_sequence_only(monkeypatch, poisoned_outputs):
    # what a GPU does without INFER_LIB_CHECKS: no error (no synchronisation), but never a plausible answer
    from infer_lib.kernels import _checks
    monkeypatch.setattr(_checks, "seqlen_values_checked", lambda lens: False)
    q, k, v, _ = _inputs(4, 4, 2, 30, 16, torch.float32, [1, 1, 1, 1])
    lens = torch.tensor([30, 31, -1, 0], device=DEV, dtype=torch.int32)
    out = decode_attention(q, k, v, lens)
    assert out[1:].isnan().all() and torch.isfinite(out[0]).all()
    _check(out, q, k, v, lens)


def test_reference_is_attention_over_the_visible_keys():
    q, k, v, lens = _inputs(2, 4, 2, 12, 16, torch.float32, [12, 5])
    ref = da.decode_attention_ref(q, k, v, lens)
    torch.testing.assert_close(ref[1:], attention_ref(q[1:, :, None], k[1:, :, :5], v[1:, :, :5])[:, :, 0])


# ----------------------------------------------------------------------------
# Bad input: a clear error before anything is launched
# ----------------------------------------------------------------------------

def _ok():
    return _inputs(2, 4, 2, 16, 16, torch.float32, [16, 3])


@pytest.mark.parametrize("change, error, match", [
    (lambda q, k, v, l: (q[:, :, None], k, v, l), ValueError, "for several use flash_attention"),
    (lambda q, k, v, l: (q[0], k, v, l), ValueError, "must be 3-D"),
    (lambda q, k, v, l: (q, k[0], v, l), ValueError, "must be 4-D"),
    (lambda q, k, v, l: (q, k, v[:, :, :8], l), ValueError, "v_cache has"),
    (lambda q, k, v, l: (q, k.half(), v, l), TypeError, "cast them to one dtype"),
    (lambda q, k, v, l: (q[:1], k, v, l), ValueError, "batch"),
    (lambda q, k, v, l: (q[:, :3], k, v, l), ValueError, "not a multiple of H_kv"),
    (lambda q, k, v, l: (q, k, v, l.float()), ValueError, "int32 or int64"),
    (lambda q, k, v, l: (q, k, v, l[:1]), ValueError, "shape \\(2,\\)"),
    (lambda q, k, v, l: (q, k, v, [16, 3]), TypeError, "torch.Tensor"),
    (lambda q, k, v, l: (q.int(), k, v, l), TypeError, "dtype"),
])
def test_bad_input_is_refused(change, error, match):
    with pytest.raises(error, match=match):
        decode_attention(*change(*_ok()))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sm_scale": float("inf")}, ValueError, "finite positive"),
    ({"sm_scale": "0.5"}, TypeError, "must be a number"),
    ({"num_splits": 0}, ValueError, "num_splits"),
    ({"num_splits": 2.0}, ValueError, "num_splits"),
])
def test_bad_options_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        decode_attention(*_ok(), **kwargs)


def test_head_dims_other_than_powers_of_two_are_refused():
    q, k, v, lens = _inputs(1, 2, 1, 8, 24, torch.float32, [8])
    with pytest.raises(ValueError, match="head dim D=24"):
        decode_attention(q, k, v, lens)


def test_inputs_that_require_grad_are_refused():
    q, k, v, lens = _ok()
    with pytest.raises(RuntimeError, match="no backward pass"):
        decode_attention(q.requires_grad_(), k, v, lens)


# ----------------------------------------------------------------------------
# On a GPU: the larger shapes the interpreter is too slow for, and CUDA graphs
# ----------------------------------------------------------------------------

GPU_ONLY = pytest.mark.skipif(not device.HAS_GPU, reason="compiled kernels only on a GPU")


@GPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, H_kv, S_max, D", [(1, 32, 8, 4096, 128), (16, 32, 8, 1000, 128),
                                                  (4, 16, 16, 2049, 64), (8, 8, 1, 777, 32)])
def test_decode_shapes_on_gpu(B, H, H_kv, S_max, D, dtype, poisoned_outputs):
    lengths = torch.randint(1, S_max + 1, (B,)).tolist()
    lengths[0] = S_max
    q, k, v, lens = _inputs(B, H, H_kv, S_max, D, dtype, lengths)
    _check(decode_attention(q, k, v, lens), q, k, v, lens)


@GPU_ONLY
def test_a_captured_step_follows_the_lengths():
    # captured once, replayed as the lengths grow on the GPU: the graph never reads them on the host
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    q, k, v, lens = _inputs(4, 8, 2, 300, 64, dtype, [10, 100, 1, 297])
    decode_attention(q, k, v, lens)                       # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, lens)
    for step in range(3):
        lens.add_(1)
        graph.replay()
        _check(out, q, k, v, lens)


def test_the_triton_less_fallback_refuses_broken_lengths_too():
    from infer_lib.kernels import _fallback
    q, k, v, _ = _inputs(2, 4, 2, 30, 16, torch.float32, [1, 1])
    lens = torch.tensor([30, 0], device=DEV, dtype=torch.int32)
    if device.HAS_GPU:
        os.environ["INFER_LIB_CHECKS"] = "1"
    try:
        with pytest.raises(ValueError, match="cache_seqlens\\[1\\] = 0 is outside 1..30"):
            _fallback.decode_attention(q, k, v, lens)
    finally:
        os.environ.pop("INFER_LIB_CHECKS", None)
