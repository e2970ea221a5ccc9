"""Tests of the tiled Triton matmul. Shapes are written (M, N, K): ``a`` is
``(M, K)``, ``b`` is ``(K, N)``, the product ``(M, N)``.

In the interpreter every call runs ``_tuning.MATMUL.interpreter`` (32×32×32
tiles) unless it passes ``config=``; on a GPU the tuned path, every listed
configuration and the tuning cache are tested too (the GPU-only tests below)."""

import importlib
import math
import re

import pytest
import torch

from conftest import DTYPES, IEEE_WARNINGS_EXPECTED, TOLERANCES
from infer_lib import device
from infer_lib.kernels import _tuning

# the module, not the function of the same name that infer_lib.kernels exports
mm = importlib.import_module("infer_lib.kernels.matmul_kernel")
from infer_lib.kernels.matmul_kernel import best_config, matmul, matmul_ref  # noqa: E402
import triton  # noqa: E402  (after infer_lib, which picks compiler or interpreter)

MATMUL = _tuning.MATMUL
DEV = device.DEVICE
INF, NAN = float("inf"), float("nan")
FP32 = torch.float32

#: (M, N, K) against the interpreter's 32×32×32 tile: a single element; a single column;
#: last row tiles one row high (M = 33, 65, 97); a last K step one element deep (K = 161);
#: three rows in a tile of 32; the control (64, 64, 64) without a ragged tile. Few tiles
#: each: the interpreter runs one program at a time.
SHAPES = [(1, 7, 3), (97, 1, 161), (65, 47, 99), (64, 64, 64), (33, 96, 70), (3, 213, 45)]


def _inputs(M, N, K, dtype):
    return (torch.randn(M, K, device=DEV, dtype=dtype),
            torch.randn(K, N, device=DEV, dtype=dtype))


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


def _cfg(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=1, drop=()):
    kw = {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K, "GROUP_M": GROUP_M}
    return triton.Config({k: v for k, v in kw.items() if k not in drop}, num_warps=num_warps, num_stages=num_stages)


def _cfg_id(c):
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}-g{k['GROUP_M']}-s{c.num_stages}-w{c.num_warps}"


def _ragged(config, k_steps):
    """(M, N, K) not a multiple of the config's tiles in any dimension: more row tiles than
    GROUP_M (the last group is short), two column tiles, ``k_steps`` K steps of which the
    last is partial."""
    kw = config.kwargs
    return (kw["BLOCK_M"] * (kw["GROUP_M"] + 1) + 7, kw["BLOCK_N"] + 5, kw["BLOCK_K"] * (k_steps - 1) + 3)


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "MNK=%dx%dx%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, dtype, poisoned_outputs):
    a, b = _inputs(*shape, dtype)
    _check(matmul(a, b), a, b)


def _layout(layout, M, N, K, dtype):
    """``a (M, K)`` and ``b (K, N)`` laid out in memory as ``layout`` says."""
    r = lambda *s: torch.randn(*s, device=DEV, dtype=dtype)  # noqa: E731
    if layout == "a_t":         # a column-major
        return r(K, M).t(), r(K, N)
    if layout == "b_t":         # b column-major: x @ W.T
        return r(M, K), r(N, K).t()
    if layout == "both_t":
        return r(K, M).t(), r(N, K).t()
    if layout == "strided":     # every other column of wider matrices
        return r(M, 2 * K)[:, ::2], r(K, 2 * N)[:, ::2]
    if layout == "offset":      # windows into larger matrices: misaligned data pointers, row stride > width
        return r(M + 3, K + 5)[3:, 5:], r(K + 1, N + 7)[1:, 7:]
    if layout == "broadcast":   # stride 0: one row of a repeated, one column of b repeated
        return r(1, K).expand(M, K), r(K, 1).expand(K, N)
    raise ValueError(layout)


@pytest.mark.parametrize("layout", ["a_t", "b_t", "both_t", "strided", "offset", "broadcast"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_any_strides(layout, dtype, poisoned_outputs):
    M, N, K = 37, 45, 70
    a, b = _layout(layout, M, N, K, dtype)
    assert a.shape == (M, K) and b.shape == (K, N) and not (a.is_contiguous() and b.is_contiguous())
    _check(matmul(a, b), a, b)


def test_output_is_a_fresh_contiguous_tensor():
    a, b = _inputs(20, 30, 40, FP32)
    out = matmul(a, b)
    assert out.is_contiguous() and out.device == a.device
    assert out.data_ptr() not in (a.data_ptr(), b.data_ptr())


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_dimensions(dtype, poisoned_outputs):
    for M, N in ((0, 5), (4, 0), (0, 0)):
        a, b = _inputs(M, N, 3, dtype)
        out = matmul(a, b)
        assert out.shape == (M, N) and out.dtype == dtype
    a, b = _inputs(4, 5, 0, dtype)  # K = 0: an empty sum is zero, as in torch.matmul
    out = matmul(a, b)
    assert out.shape == (4, 5) and out.dtype == dtype and (out == 0).all()


@pytest.mark.parametrize("group_m", [1, 3, 8, 2**30, 2**31 - 1])
def test_grouped_ordering_writes_every_tile(group_m, poisoned_outputs):
    # 16×16 tiles, 5 rows and 4 columns of them: groups of 3 leave a short last group,
    # 8 is one group. GROUP_M * num_pid_n once overflowed int32 (to 0 and to -4 here).
    M, N, K = 16 * 4 + 5, 16 * 3 + 3, 13
    a, b = _inputs(M, N, K, FP32)
    _check(matmul(a, b, config=_cfg(16, 16, 16, GROUP_M=group_m)), a, b)


def test_interpreter_flag():
    # UPCAST is what works around the interpreter's broken bf16 tl.dot; the GPU path must not pay for it.
    assert mm._kernel_flags(torch.bfloat16)["UPCAST"] is device.INTERPRET


@pytest.mark.parametrize("dtype", DTYPES)
def test_upcast_path(dtype, poisoned_outputs):
    # The kernel with UPCAST=True (what the interpreter always runs), on either machine.
    M, N, K = 37, 50, 70
    a, b = _inputs(M, N, K, dtype)
    c = torch.empty(M, N, device=a.device, dtype=dtype)
    cfg = MATMUL.interpreter
    mm._matmul_kernel[mm._grid(M, N, cfg)](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(),
                                           **cfg.kwargs, UPCAST=True, INPUT_PRECISION="ieee",
                                           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _check(c, a, b)


def test_fp32_precision_follows_pytorch():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert mm._kernel_flags(FP32)["INPUT_PRECISION"] == "ieee"
        torch.set_float32_matmul_precision("high")
        assert mm._kernel_flags(FP32)["INPUT_PRECISION"] == "tf32"
        a, b = _inputs(40, 40, 64, FP32)
        # TF32 keeps 10 mantissa bits: ~1e-3 relative per product
        torch.testing.assert_close(matmul(a, b), matmul_ref(a, b), atol=2e-2, rtol=5e-3)
    finally:
        torch.set_float32_matmul_precision(before)


# ----------------------------------------------------------------------------
# NaN and ±inf propagate as in torch.matmul
# ----------------------------------------------------------------------------

#: what ``_classes`` calls each element
FINITE, IS_NAN, POS_INF, NEG_INF = 0, 1, 2, 3
#: Ragged against the interpreter's 32×32×32 tile: a last row tile of 5 rows (M = 37) and
#: one of 1 row whose other 31 rows wrap (M = 1), last column tiles 1 and 13 wide, last
#: K steps 6 and 1 deep.
NAN_SHAPES = [(37, 33, 70), (1, 45, 97), (67, 33, 70)]   # M ≤ 64 runs the split-K kernel, 67 the tiled one


def _classes(x):
    """FINITE, IS_NAN, POS_INF or NEG_INF for each element."""
    x = x.float()
    out = torch.full(x.shape, FINITE, dtype=torch.int8, device=x.device)
    out[x.isnan()] = IS_NAN
    out[x == INF] = POS_INF
    out[x == -INF] = NEG_INF
    return out


def _with_specials(a, b, kind, where):
    """Put NaN, ±inf, an exact zero or huge finite values into ``a`` and ``b``; return the
    output element (i, j) they meet in. ``where``: "first" (row, column and K index 0: what
    the kernel's wrapped rows and columns re-read), "interior", or "last" (the ragged last
    row and column tiles and the masked last K step)."""
    M, K = a.shape
    N = b.shape[1]
    i, j, k = {"first": (0, 0, 0), "interior": (M // 2, N // 2, K // 2), "last": (M - 1, N - 1, K - 1)}[where]
    k2 = k - 1 if k > 0 else k + 1
    if kind == "nan":                      # a NaN row of c and a NaN column
        a[i, k], b[k2, j] = NAN, NAN
    elif kind == "inf":                    # ±inf rows and columns; inf - inf = NaN where the signs differ
        a[i, k], a[i, k2], b[k, j] = INF, INF, -INF
    elif kind == "inf_times_zero":         # 0 · inf = NaN at (i, j), ±inf elsewhere in row i
        a[i, k], b[k, j] = INF, 0.0
    elif kind == "overflow":               # finite inputs, a sum beyond the output type: -inf
        big = 4 * math.sqrt(torch.finfo(a.dtype).max)
        a[i, k], b[k, j] = big, -big
    return i, j


@pytest.fixture
def sentinel_outputs(monkeypatch):
    """Like ``poisoned_outputs``, but the launcher's output starts as a large finite
    number: a NaN poison could not show an unwritten element that should be NaN."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(-30000.0) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


def _check_specials(out, a, b):
    """Same NaN / +inf / -inf / finite pattern as ``torch.matmul`` in fp32 on the same
    inputs (rounded to the output type), and the same values where finite."""
    want = matmul_ref(a, b)
    got_cls, want_cls = _classes(out), _classes(want)
    bad = (got_cls != want_cls).nonzero().tolist()
    assert not bad, (f"{len(bad)} elements differ in kind from torch.matmul, e.g. at {bad[:5]}: "
                     f"got {[out[i, j].item() for i, j in bad[:5]]}, want {[want[i, j].item() for i, j in bad[:5]]}")
    atol, rtol = TOLERANCES[a.dtype]
    torch.testing.assert_close(out, want, atol=atol * math.sqrt(a.shape[1]), rtol=rtol, equal_nan=True)
    return want_cls


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("kind", ["nan", "inf", "inf_times_zero", "overflow"])
@pytest.mark.parametrize("shape", NAN_SHAPES, ids=lambda s: "MNK=%dx%dx%d" % s)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_like_torch(dtype, shape, kind, sentinel_outputs):
    a, b = _inputs(*shape, dtype)
    meets = [_with_specials(a, b, kind, where) for where in ("first", "interior", "last")]
    want = _check_specials(matmul(a, b), a, b)
    # the inputs do what the case says (else the test checks nothing)
    assert (want != FINITE).any()
    expected = {"nan": IS_NAN, "inf_times_zero": IS_NAN, "overflow": NEG_INF}
    if kind in expected:
        assert all(want[i, j] == expected[kind] for i, j in meets)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_never_turns_a_finite_result_into_nan(dtype, poisoned_outputs):
    # inf everywhere in the first and last rows of a and columns of b, which the wrapped
    # padding rows and columns re-read; all other outputs must stay finite.
    M, N, K = 37, 33, 70
    a, b = _inputs(M, N, K, dtype)
    a[0, :] = a[-1, :] = INF
    b[:, 0] = b[:, -1] = -INF
    want = _check_specials(matmul(a, b), a, b)
    assert (want[1:-1, 1:-1] == FINITE).all() and (want != FINITE).any()


# ----------------------------------------------------------------------------
# config= is checked
# ----------------------------------------------------------------------------

BAD_VALUES = [
    ("BLOCK_M", 48), ("BLOCK_N", 100), ("BLOCK_K", 24),      # not powers of two
    ("BLOCK_K", 8), ("BLOCK_M", 1), ("BLOCK_N", 0),          # below 16: tl.dot needs 16
    ("BLOCK_M", -32), ("BLOCK_K", 32.0), ("BLOCK_N", True), ("BLOCK_M", "32"),
    ("GROUP_M", 0), ("GROUP_M", -1), ("GROUP_M", 2.0), ("GROUP_M", True), ("GROUP_M", None),
    ("num_warps", 3), ("num_warps", 64), ("num_warps", 0), ("num_warps", 4.0), ("num_warps", True),
    ("num_stages", 0), ("num_stages", -1), ("num_stages", 2.5), ("num_stages", True),
]


@pytest.mark.parametrize("key, value", BAD_VALUES, ids=lambda v: repr(v))
def test_bad_config_values_are_refused(key, value):
    a, b = _inputs(4, 4, 4, FP32)
    with pytest.raises(ValueError, match=re.escape(f"matmul: config {key}={value!r} must be")):
        matmul(a, b, config=_cfg(**{key: value}))


@pytest.mark.parametrize("key", ["BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"])
def test_config_with_a_missing_key_is_refused(key):
    a, b = _inputs(4, 4, 4, FP32)
    with pytest.raises(ValueError, match=f"matmul: config must set BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M; it lacks {key}"):
        matmul(a, b, config=_cfg(drop=(key,)))


@pytest.mark.parametrize("config", [dict(_cfg().kwargs), "32x32x32", (32, 32, 32, 8)], ids=lambda c: type(c).__name__)
def test_config_must_be_a_triton_config(config):
    a, b = _inputs(4, 4, 4, FP32)
    with pytest.raises(TypeError, match=f"matmul: config must be a triton.Config, got {type(config).__name__}"):
        matmul(a, b, config=config)


def test_bad_config_is_refused_before_an_empty_product_returns():
    a, b = _inputs(0, 4, 4, FP32)
    with pytest.raises(ValueError, match="GROUP_M=0"):
        matmul(a, b, config=_cfg(GROUP_M=0))


@pytest.mark.parametrize("config", [_cfg(16, 16, 16, GROUP_M=1, num_warps=1, num_stages=1),
                                    _cfg(64, 16, 128, GROUP_M=2, num_warps=2, num_stages=5)], ids=_cfg_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_unusual_but_valid_configs_run(config, dtype, poisoned_outputs):
    a, b = _inputs(*_ragged(config, 2), dtype)
    _check(matmul(a, b, config=config), a, b)


# ----------------------------------------------------------------------------
# Candidates: pruning by shared memory and by shape (the lists themselves live in _tuning)
# ----------------------------------------------------------------------------

#: one GPU of each architecture class, with the shared memory per block its driver reports
CLASSES = {"hopper": ((9, 0), 232448), "ampere": ((8, 0), 166912), "small_smem": ((8, 9), 101376)}


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("element_size", [2, 4])
def test_candidates_fit_the_shared_memory(cls, element_size):
    cap, smem = CLASSES[cls]
    assert _tuning.arch_class(cap) == cls
    shape = {"M": 4096, "N": 4096}
    for limit in (smem, smem // 2, 64 * 1024):
        got = MATMUL.candidates(cap, limit, element_size, shape)
        assert got, "never empty"
        listed = MATMUL.config_list(cap)
        fitting = [c for c in listed if MATMUL.smem_bytes(c, element_size, shape) <= limit]
        if fitting:   # for a large problem: exactly the listed configurations that fit
            assert got == fitting
        else:
            assert got == [MATMUL.fixed(element_size, shape, limit)]


@pytest.mark.parametrize("cls", CLASSES)
def test_a_tiny_shared_memory_leaves_the_fixed_choice(cls):
    cap, _ = CLASSES[cls]
    shape = {"M": 4096, "N": 4096}
    assert MATMUL.candidates(cap, 1024, 4, shape) == [MATMUL.fixed(4, shape, 1024)]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("skinny", [1, 3, 16, 33])
def test_skinny_problems_drop_tiles_much_taller_than_the_problem(cls, skinny):
    cap, smem = CLASSES[cls]
    # Skinny M (decode: a few tokens) and, the same rule, skinny N.
    full = MATMUL.candidates(cap, smem, 2, {"M": 4096, "N": 4096})
    for dim, block in (("M", "BLOCK_M"), ("N", "BLOCK_N")):
        kept = MATMUL.candidates(cap, smem, 2, {"M": 4096, "N": 4096, dim: skinny})
        assert kept and all(c in full for c in kept), "keeps at least one, all from the full list"
        dropped = [c for c in full if c not in kept]
        assert all(c.kwargs[block] > _tuning.bucket(skinny) for c in dropped), "drops only tiles taller than the problem"
        # "much taller": 4x the problem, or 4x the list's shortest tile where the problem is shorter still
        much_taller = 4 * max(_tuning.bucket(skinny), min(c.kwargs[block] for c in full))
        assert all(c.kwargs[block] < much_taller for c in kept), f"keeps a tile 4x taller than {dim}={skinny}"


def test_one_bucket_one_candidate_list():
    for cap, smem in CLASSES.values():
        for lo, hi in ((257, 512), (17, 32), (1025, 2048)):
            assert _tuning.bucket(lo) == _tuning.bucket(hi)
            assert (MATMUL.candidates(cap, smem, 2, {"M": lo, "N": 4096})
                    == MATMUL.candidates(cap, smem, 2, {"M": hi, "N": 4096}))


def test_architecture_classes_share_lists():
    assert MATMUL.config_list((10, 0)) is MATMUL.config_list((9, 0))          # B200 runs the H100's list
    assert MATMUL.config_list((12, 0)) is MATMUL.config_list((8, 6))          # RTX 50: ~100 KB, like RTX 30
    assert MATMUL.config_list((8, 0)) is not MATMUL.config_list((9, 0))


# ----------------------------------------------------------------------------
# Compiled on a GPU: every listed config, the tuned path and its cache
# ----------------------------------------------------------------------------

def _device_list():
    return MATMUL.config_list(device.capability()) if device.HAS_GPU else []


@pytest.mark.skipif(not device.HAS_GPU, reason="compiles every configuration of this GPU's list; "
                    "in the interpreter warps and stages mean nothing")
@pytest.mark.parametrize("config", _device_list(), ids=_cfg_id)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_listed_config_handles_tails(config, dtype, poisoned_outputs):
    for k_steps in (1, 4):   # one masked K step; several with a partial last one
        M, N, K = _ragged(config, k_steps)
        need, have = MATMUL.smem_bytes(config, dtype.itemsize, {"M": M, "N": N}), _tuning.max_shared_memory()
        if need > have:
            pytest.skip(f"needs {need // 1024} KB of shared memory in {dtype}, this GPU has {have // 1024} KB "
                        "(never a candidate here)")
        a, b = _inputs(M, N, K, dtype)
        try:
            out = matmul(a, b, config=config)
        except triton.runtime.errors.OutOfResources as e:
            # The tuner skips such a config, so it is never picked; the estimate should have pruned it.
            pytest.skip(f"does not compile on this GPU ({e}): _tuning's shared-memory estimate is too low")
        _check(out, a, b)


SKINNY = [(1, 4096, 4096), (3, 4096, 4096), (16, 4096, 4096), (33, 4096, 4096)]   # decode-like
SQUARE = [(1024, 1024, 1024), (2048, 2048, 2048)]
ODD = [(1031, 1543, 1029), (2047, 1025, 1537), (300, 520, 260)]


@pytest.mark.skipif(not device.HAS_GPU, reason="tuning runs only on a GPU; the interpreter runs one fixed config")
@pytest.mark.parametrize("shape", SKINNY + SQUARE + ODD, ids=lambda s: "MNK=%dx%dx%d" % s)
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d.values[0] != FP32])
def test_tuned_path(shape, dtype, poisoned_outputs):
    M, N, K = shape
    assert M * N * K >= _tuning.MATMUL_TUNE_MIN_WORK, "the shape must be large enough to be tuned"
    a, b = _inputs(M, N, K, dtype)
    _check(matmul(a, b), a, b)
    picked = best_config(a, b)
    assert picked is not None, "this shape should have been tuned"
    # decode shapes (M ≤ 64) run the split-K kernel, the rest the tiled one
    configs = _tuning.SPLITK_MATMUL if M <= _tuning.SMALL_M else MATMUL
    cands = configs.candidates(device.capability(), _tuning.max_shared_memory(), dtype.itemsize,
                               {"M": M, "N": N, "K": K})
    assert picked in cands or picked in configs.fallbacks
    _check(matmul(a, b), a, b)  # the cached pick, launched again


@IEEE_WARNINGS_EXPECTED
@pytest.mark.skipif(not device.HAS_GPU, reason="tuning runs only on a GPU; the interpreter runs one fixed config")
@pytest.mark.parametrize("kind", ["nan", "inf", "inf_times_zero", "overflow"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate_through_the_tuned_path(kind, dtype, sentinel_outputs):
    a, b = _inputs(257, 515, 263, dtype)
    for where in ("first", "interior", "last"):
        _with_specials(a, b, kind, where)
    _check_specials(matmul(a, b), a, b)
    assert best_config(a, b) is not None


@pytest.mark.skipif(not device.HAS_GPU, reason="tuning runs only on a GPU; the interpreter runs one fixed config")
def test_tuning_cache_is_keyed_on_the_bucket_of_M(monkeypatch, poisoned_outputs):
    monkeypatch.setattr(MATMUL, "cache", {})
    timed = []
    real = triton.testing.do_bench_cudagraph
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", lambda *a, **k: timed.append(1) or real(*a, **k))
    N, K, dtype = 384, 520, torch.bfloat16 if device.supports_bf16() else torch.float16
    picks = {}
    for M in (300, 257, 511, 512, 513, 200):       # buckets 512, 512, 512, 512, 1024, 256
        assert M * N * K >= _tuning.MATMUL_TUNE_MIN_WORK
        before = len(timed)
        a, b = _inputs(M, N, K, dtype)
        _check(matmul(a, b), a, b)
        picks[M] = best_config(a, b)
        assert picks[M] is not None
        first_of_bucket = _tuning.bucket(M) not in {_tuning.bucket(m) for m in picks if m != M}
        assert (len(timed) > before) == first_of_bucket, f"M={M}: timed again inside a known bucket"
    assert picks[257] is picks[300] is picks[511] is picks[512]
    assert len(MATMUL.cache) == 3   # one entry per bucket: 256, 512, 1024


@pytest.mark.skipif(not device.HAS_GPU, reason="the interpreter compiles nothing")
def test_a_new_M_does_not_recompile():
    # M is do_not_specialize: Triton would otherwise compile separate kernels for M = 1,
    # M a multiple of 16 and any other M. The cached compiled kernel comes back each time.
    N, K, cfg = 256, 256, MATMUL.fallbacks[0]
    compiled = []
    for M in (1, 16, 17, 300, 1000):
        a, b = _inputs(M, N, K, torch.float16)
        c = torch.empty(M, N, device=DEV, dtype=torch.float16)
        compiled.append(mm._matmul_kernel[mm._grid(M, N, cfg)](
            a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride(), **cfg.kwargs,
            **mm._kernel_flags(a.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages))
        _check(c, a, b)
    assert all(k is compiled[0] for k in compiled)


@pytest.mark.skipif(not device.HAS_GPU, reason="on a GPU only: the interpreter never tunes")
def test_small_problems_are_not_tuned(poisoned_outputs):
    a, b = _inputs(100, 120, 130, torch.float16)
    assert 100 * 120 * 130 < _tuning.MATMUL_TUNE_MIN_WORK
    _check(matmul(a, b), a, b)
    assert best_config(a, b) is None


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU this shape would be tuned")
def test_no_tuning_in_the_interpreter(monkeypatch):
    # Every problem counts as worth tuning (a real one would take 512 interpreted tiles);
    # the interpreter still runs its fixed tile and times nothing.
    monkeypatch.setattr(_tuning, "MATMUL_TUNE_MIN_WORK", 1)
    a, b = _inputs(37, 45, 70, torch.float16)
    _check(matmul(a, b), a, b)
    assert best_config(a, b) is None and not MATMUL.cache


# ----------------------------------------------------------------------------
# Gradients: an inference kernel refuses rather than silently dropping them
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_inputs_that_require_grad_are_refused(which):
    a, b = _inputs(5, 6, 7, FP32)
    if which in ("a", "both"):
        a.requires_grad_()
    if which in ("b", "both"):
        b.requires_grad_()
    name = "b" if which == "b" else "a"
    with pytest.raises(RuntimeError, match=rf"matmul: {name} requires grad.*torch.no_grad\(\)"):
        matmul(a, b)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inputs_that_require_grad_run_without_grad_mode(mode, poisoned_outputs):
    a, b = _inputs(37, 45, 70, FP32)
    a.requires_grad_()
    b.requires_grad_()
    with mode():
        out = matmul(a, b)
        _check(out, a.detach(), b.detach())
    assert not out.requires_grad
    _check(matmul(a.detach(), b.detach()), a.detach(), b.detach())   # detached inputs pass in grad mode


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


def test_inner_dimensions_must_match():
    a = torch.randn(3, 5, device=DEV)
    b = torch.randn(6, 2, device=DEV)
    with pytest.raises(ValueError, match=r"a is \(M, K\)=\(3, 5\) but b is \(6, 2\): "
                                         r"a.shape\[1\] must equal b.shape\[0\]"):
        matmul(a, b)


@pytest.mark.parametrize("which, shape", [("a", (2, 3, 4)), ("a", (4,)), ("b", (4,)), ("b", (1, 4, 5))])
def test_inputs_must_be_2d(which, shape):
    a = torch.randn(3, 4, device=DEV)
    b = torch.randn(4, 5, device=DEV)
    bad = torch.randn(shape, device=DEV)
    a, b = (bad, b) if which == "a" else (a, bad)
    with pytest.raises(ValueError, match=re.escape(f"matmul: {which} must be 2-D, got shape {tuple(shape)}")):
        matmul(a, b)


def test_mixed_dtypes():
    a = torch.randn(3, 4, device=DEV)
    with pytest.raises(TypeError, match="a is float32 but b is float16; cast them to one dtype"):
        matmul(a, torch.randn(4, 5, device=DEV).half())


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_unsupported_dtype(dtype):
    a = torch.ones(3, 4, device=DEV, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(TypeError, match=f"a has dtype {name}; supported dtypes are float32, float16, bfloat16"):
        matmul(a, a.t())


def test_not_a_tensor():
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got list"):
        matmul(torch.randn(1, 2, device=DEV), [[1.0], [2.0]])


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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_runs_on_the_tensors_gpu_not_the_current_one(poisoned_outputs):
    torch.cuda.set_device(0)
    a = torch.randn(300, 520, device="cuda:1", dtype=torch.float16)
    b = torch.randn(520, 260, device="cuda:1", dtype=torch.float16)
    out = matmul(a, b)            # tuned on cuda:1, launched there
    assert out.device == a.device and torch.cuda.current_device() == 0
    _check(out, a, b)


# ----------------------------------------------------------------------------
# Decode shapes take the split-K kernel
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("M, split_k", [(1, True), (17, True), (_tuning.SMALL_M, True), (_tuning.SMALL_M + 1, False)])
def test_decode_shapes_run_the_split_k_kernel(M, split_k, monkeypatch, poisoned_outputs):
    from infer_lib.kernels import matmul_splitk_kernel as sk
    calls = []
    real = sk.run_tuned
    monkeypatch.setattr(sk, "run_tuned", lambda *args: calls.append(1) or real(*args))
    a, b = _inputs(M, 40, 70, FP32)
    _check(matmul(a, b), a, b)
    assert bool(calls) == split_k
    # a pinned configuration is the tiled kernel's, whatever M
    calls.clear()
    _check(matmul(a, b, config=MATMUL.fallbacks[0]), a, b)
    assert not calls
