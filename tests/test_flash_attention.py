"""flash_attention against its fp32 reference; the same tests run in the interpreter (CPU) and compiled (GPU).

In the interpreter every test runs the UPCAST path (Q, K, V, P in fp32 before
``tl.dot``) with the interpreter's 32×32 tiles; on a GPU the same tests run
16-bit tensor-core matmuls with the fixed configuration of small problems, and
the GPU-only tests below run every configuration and the tuned path.

What NaN and ±inf must give is defined in ``test_reference.py``: SDPA's math
backend on the keys each query sees, which the reference is checked against.
"""

import importlib
import math

import numpy as np
import pytest
import torch
import triton

from conftest import DTYPES, TOLERANCES, poison
from infer_lib import device
from infer_lib.kernels import _tuning
from infer_lib.reference import causal_mask
from test_reference import SPECIAL_KINDS, check_special_effect, special_qkv, special_shapes

# the module (reference, _launch, _grid), not the launcher infer_lib.kernels exports under the same name
fa = importlib.import_module("infer_lib.kernels.flash_attention_kernel")
DEV = device.DEVICE
CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]
GPU_ONLY = pytest.mark.skipif(not device.HAS_GPU, reason="compiled kernels and tuning: GPU only "
                                                         "(the interpreter runs one fixed configuration)")
#: The interpreter computes with numpy, which warns where a GPU silently makes NaN or inf.
IEEE_WARNINGS_EXPECTED = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                                    "ignore:All-NaN slice encountered:RuntimeWarning",
                                                    "ignore:overflow encountered:RuntimeWarning",
                                                    "ignore:divide by zero encountered:RuntimeWarning")
SIXTEEN_BIT = [dt for dt in (torch.float16, torch.bfloat16) if dt in device.kernel_dtypes()]


def _qkv(B, H, H_kv, S_q, S_k, D, dtype):
    q = torch.randn(B, H, S_q, D, device=DEV, dtype=dtype)
    k = torch.randn(B, H_kv, S_k, D, device=DEV, dtype=dtype)
    v = torch.randn(B, H_kv, S_k, D, device=DEV, dtype=dtype)
    return q, k, v


def _hidden_nonfinite_values(q, k, v, causal):
    """(B, H, S_q, D): True where a value the causal mask hides from the query (in a key it does
    not see) is NaN or ±inf in that column. The kernel may return NaN there (module docstring:
    p = 0 in a diagonal tile, and 0 · NaN = NaN); never for a query that sees no key."""
    B, H, S_q, D = q.shape
    if not causal:
        return torch.zeros(B, H, S_q, D, dtype=torch.bool, device=q.device)
    hidden = ~causal_mask(S_q, k.shape[2], device=q.device)                  # (S_q, S_k)
    bad = (~torch.isfinite(v.float())).repeat_interleave(H // k.shape[1], 1)  # (B, H, S_k, D)
    reached = (hidden.float() @ bad.float()) > 0
    return reached & hidden.logical_not().any(-1)[:, None]


def _check(out, q, k, v, causal, sm_scale=None):
    """``out`` is flash_attention's: right shape, dtype and device; zeros for queries that see no
    key; the reference's values and NaN (allowed in addition only where a hidden value is NaN/inf)."""
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    want = fa.flash_attention_ref(q, k, v, causal=causal, sm_scale=sm_scale)
    if causal:
        blind = ~causal_mask(q.shape[2], k.shape[2], device=q.device).any(-1)  # queries that see no key
        assert (out[:, :, blind] == 0).all()
    may_be_nan = _hidden_nonfinite_values(q, k, v, causal) & out.isnan()
    atol, rtol = TOLERANCES[q.dtype]
    torch.testing.assert_close(torch.where(may_be_nan, want, out), want, atol=atol, rtol=rtol, equal_nan=True)
    return want


def _run(q, k, v, causal, sm_scale=None):
    out = fa.flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    _check(out, q, k, v, causal, sm_scale)
    return out


# ----------------------------------------------------------------------------
# Random inputs: every path, odd shapes, every dtype
# ----------------------------------------------------------------------------

#: (B, H, H_kv, S_q, S_k, D). With the interpreter's 32×32 tiles: one decoding
#: query against a ragged key tile; a square problem with a ragged diagonal
#: tile; S_q < S_k (full tiles, then the diagonal); S_q > S_k (with causal
#: masking the first S_q − S_k queries see no key); a single key.
SHAPES = {
    "decode-MQA": (2, 2, 1, 1, 47, 32),
    "square-GQA": (1, 4, 2, 33, 33, 16),
    "short-MHA": (2, 2, 2, 40, 97, 64),
    "long-MQA": (1, 2, 1, 97, 40, 16),
    "one-key-MHA": (1, 2, 2, 33, 1, 128),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(shape, causal, dtype, poisoned_outputs):
    _run(*_qkv(*shape, dtype), causal)


@pytest.mark.parametrize("sm_scale", [0.05, 1.7, 1, np.float32(0.3)], ids=["0.05", "1.7", "int-1", "numpy-0.3"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_custom_scale(sm_scale, causal, poisoned_outputs):
    _run(*_qkv(1, 2, 1, 40, 50, 32, torch.float16), causal, sm_scale=sm_scale)


def test_large_scores_do_not_overflow(poisoned_outputs):
    # scores around ±1e3 after scaling: exp without the running max would overflow
    q, k, v = _qkv(1, 1, 1, 37, 70, 64, torch.float16)
    _run(q * 8, k * 8, v, causal=True)


@pytest.mark.parametrize("causal", CAUSAL)
def test_non_contiguous_views(causal, poisoned_outputs):
    # Packed (B, S, 3, H, D) projections viewed as (B, H, S, D) without a copy,
    # and a (B, S, H_kv, D) cache layout transposed: the strides reach the kernel.
    B, S, H, H_kv, D = 2, 37, 2, 1, 32
    qkv = torch.randn(B, S, 3, H, D, device=DEV, dtype=torch.float16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    _run(q, k, v, causal)
    k2 = torch.randn(B, S + 10, H_kv, D, device=DEV, dtype=torch.float16).transpose(1, 2)
    v2 = torch.randn(B, S + 10, H_kv, D, device=DEV, dtype=torch.float16).transpose(1, 2)
    _run(q, k2, v2, causal)


def test_empty_and_keyless(poisoned_outputs):
    for shape in ((1, 2, 2, 0, 5, 16), (0, 2, 2, 5, 5, 16)):
        q, k, v = _qkv(*shape, torch.float16)
        assert fa.flash_attention(q, k, v).shape == q.shape
    q, k, v = _qkv(1, 2, 1, 5, 0, 16, torch.float16)
    for causal in (False, True):
        out = fa.flash_attention(q, k, v, causal=causal)
        assert out.shape == (1, 2, 5, 16) and (out == 0).all()


# ----------------------------------------------------------------------------
# NaN and ±inf in the first, a middle and the last (ragged) key tile
# ----------------------------------------------------------------------------

def _fixed_block_n(dtype, D) -> int:
    """BLOCK_N of the configuration flash_attention runs small problems with on this machine."""
    configs = _tuning.FLASH_ATTENTION_FP32 if dtype == torch.float32 else _tuning.FLASH_ATTENTION
    return configs.fixed(torch.empty((), dtype=dtype).element_size(), {"D": D}).kwargs["BLOCK_N"]


def _dtype(i: int) -> torch.dtype:
    dtypes = device.kernel_dtypes()
    return dtypes[i % len(dtypes)]


# Every kind of special value with causal masking and without, each on one of the three shapes
# and dtypes in turn (the references meet SDPA on all of them, in test_reference.py); the bug
# of a first key tile that scores -inf throughout, and NaN values, on every shape.
SPECIAL_SHAPE_NAMES = ("MHA-square", "GQA-short", "MQA-long")
SPECIAL_CASES = [(kind, SPECIAL_SHAPE_NAMES[i % 3], _dtype(i)) for i, kind in enumerate(SPECIAL_KINDS)]
SPECIAL_CASES += [(kind, name, _dtype(i + 1)) for kind in ("neginf_tile", "nan_v")
                  for i, name in enumerate(SPECIAL_SHAPE_NAMES) if (kind, name) not in
                  {(c[0], c[1]) for c in SPECIAL_CASES}]


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("kind, shape, dtype", SPECIAL_CASES,
                         ids=[f"{k}-{s}-{device.dtype_name(d)}" for k, s, d in SPECIAL_CASES])
@pytest.mark.parametrize("causal", CAUSAL)
def test_special_values(kind, shape, dtype, causal, poisoned_outputs):
    D = 16
    block_n = _fixed_block_n(dtype, D)
    q, k, v = special_qkv(kind, *special_shapes(block_n)[shape], D=D, block_n=block_n, dtype=dtype)
    out = fa.flash_attention(q, k, v, causal=causal)
    check_special_effect(kind, _check(out, q, k, v, causal).float())


@IEEE_WARNINGS_EXPECTED
def test_hidden_nan_value_reaches_no_query_tile_that_ends_before_it(poisoned_outputs):
    # A NaN in the value of the last key, which the causal mask hides from every other
    # query. It may reach a query (as NaN) only through a diagonal tile that a later query
    # of the same query tile sees. With 16×32 tiles query tile 64…79 loads key tile
    # 64…95 but stops reading at key 80, so rows 0…79 stay finite.
    q, k, v = _qkv(1, 1, 1, 96, 96, 16, torch.float32)
    v[..., 95, 3] = float("nan")
    out = poison(torch.empty_like(q))
    fa._launch(q, k, v, out, True, 0.25, triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}))
    _check(out, q, k, v, causal=True, sm_scale=0.25)
    assert torch.isfinite(out[..., :80, :]).all() and out[..., 95, 3].isnan()


# ----------------------------------------------------------------------------
# Tile shapes, configurations, the tuned path
# ----------------------------------------------------------------------------

def _tile_shapes():
    """Every (BLOCK_M, BLOCK_N) a configuration list, fallback or the interpreter may run."""
    configs = [c for kc in (_tuning.FLASH_ATTENTION, _tuning.FLASH_ATTENTION_FP32)
               for c in (*[c for lst in kc.lists.values() for c in lst], *kc.fallbacks, kc.interpreter)]
    return sorted({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in configs})


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU test_every_config_on_ragged_tails runs each full configuration")
@pytest.mark.parametrize("block_m, block_n", _tile_shapes(), ids=lambda b: str(b))
@pytest.mark.parametrize("causal", CAUSAL)
def test_every_tile_shape(block_m, block_n, causal, poisoned_outputs):
    # The masking of ragged and diagonal tiles depends on BLOCK_M and BLOCK_N:
    # the interpreter runs each tile shape a GPU may pick, bypassing the choice.
    S_q, S_k = (70, 45) if causal else (45, 70)      # causal and S_q > S_k: queries that see no key
    q, k, v = _qkv(1, 2, 1, S_q, S_k, 16, torch.float32)
    out = poison(torch.empty_like(q))
    fa._launch(q, k, v, out, causal, 0.25, triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}))
    _check(out, q, k, v, causal, sm_scale=0.25)


def _fitting(configs, dtype, D):
    """The configurations whose pipeline fits this GPU's shared memory."""
    limit = _tuning.max_shared_memory()
    esize = torch.empty((), dtype=dtype).element_size()
    return [c for c in configs if _tuning.FLASH_ATTENTION.smem_bytes(c, esize, {"D": D}) <= limit]


@GPU_ONLY
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", SIXTEEN_BIT, ids=device.dtype_name)
def test_every_config_on_ragged_tails(dtype, causal, D):
    # Every configuration of this GPU's list that fits its shared memory, launched
    # directly, on lengths that are no multiple of any tile, S_q < S_k and S_q > S_k.
    configs = _fitting(_tuning.FLASH_ATTENTION.config_list(device.capability()), dtype, D)
    assert configs, "no configuration of the list fits this GPU"
    failed = []
    for config in configs:
        for S_q, S_k in [(200, 300), (300, 200)]:
            q, k, v = _qkv(1, 2, 1, S_q, S_k, D, dtype)
            out = poison(torch.empty_like(q))
            fa._launch(q, k, v, out, causal, D ** -0.5, config)
            try:
                _check(out, q, k, v, causal, sm_scale=D ** -0.5)
            except AssertionError as e:
                failed.append(f"{config} S_q={S_q} S_k={S_k}: {str(e).splitlines()[0]}")
    assert not failed, "\n".join(failed)


@GPU_ONLY
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", CAUSAL)
def test_fp32_fixed_configs_on_ragged_tails(causal, D):
    configs = _fitting(_tuning.FLASH_ATTENTION_FP32.fallbacks, torch.float32, D)
    assert configs
    for config in configs:
        for S_q, S_k in [(100, 150), (150, 100)]:
            q, k, v = _qkv(1, 2, 1, S_q, S_k, D, torch.float32)
            out = poison(torch.empty_like(q))
            fa._launch(q, k, v, out, causal, D ** -0.5, config)
            _check(out, q, k, v, causal, sm_scale=D ** -0.5)


@GPU_ONLY
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", CAUSAL)
def test_tuned_path_and_its_cache(D, causal, monkeypatch, poisoned_outputs):
    # Long enough to be tuned (S_q · S_k ≥ FLASH_ATTENTION_TUNE_MIN_SCORES); two prompt
    # lengths of one power-of-two bucket share one tuned pick.
    dtype = device.default_dtype()
    monkeypatch.setattr(_tuning.FLASH_ATTENTION, "cache", {})
    S1 = math.isqrt(_tuning.FLASH_ATTENTION_TUNE_MIN_SCORES) + 37          # 1061: bucket 2048
    S2 = _tuning.bucket(S1) - 29                                          # 2019: the same bucket
    assert _tuning.bucket(S2) == _tuning.bucket(S1) and S1 * S1 >= _tuning.FLASH_ATTENTION_TUNE_MIN_SCORES
    for S in (S1, S2):
        _run(*_qkv(1, 4, 2, S, S, D, dtype), causal)
        assert len(_tuning.FLASH_ATTENTION.cache) == 1, list(_tuning.FLASH_ATTENTION.cache)
    # S_q ≠ S_k (a prompt after a cached prefix) in another bucket pair (2048, 4096): its own pick
    _run(*_qkv(2, 4, 1, 1100, 2100, D, dtype), causal)
    assert len(_tuning.FLASH_ATTENTION.cache) == 2, list(_tuning.FLASH_ATTENTION.cache)


@pytest.mark.parametrize("gpu, smem", [("H100", 232448), ("A100", 166912), ("L4", 101376), ("T4", 65536)])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("esize", [2, 4], ids=["16-bit", "fp32"])
def test_configurations_fit_the_shared_memory(gpu, smem, D, esize, monkeypatch):
    # What each GPU class would time (16-bit, tuned) and run untuned: never a
    # configuration whose pipeline overflows its shared memory.
    shape = {"D": D}
    for cap in ((9, 0), (8, 0), (7, 5)):
        for configs in (_tuning.FLASH_ATTENTION, _tuning.FLASH_ATTENTION_FP32):
            candidates = configs.candidates(cap, smem, esize, shape)
            assert candidates, "nothing to run"
            assert all(configs.smem_bytes(c, esize, shape) <= smem for c in candidates), candidates
            if any(configs.smem_bytes(c, esize, shape) <= smem for c in configs.config_list(cap)):
                assert all(c in configs.config_list(cap) for c in candidates)
    monkeypatch.setattr(device, "INTERPRET", False)   # the choice a GPU makes, not the interpreter's tile
    for configs in (_tuning.FLASH_ATTENTION, _tuning.FLASH_ATTENTION_FP32):
        assert configs.smem_bytes(configs.fixed(esize, shape, smem), esize, shape) <= smem


def test_launch_flags_follow_the_machine(monkeypatch):
    # UPCAST (fp32 tl.dot) exactly when interpreting; 16-bit operands on a GPU; a 1-D grid.
    seen = {}

    class Recorder:
        def __getitem__(self, grid):
            seen["grid"] = grid
            return lambda *args, **meta: seen.update(meta)

    monkeypatch.setattr(fa, "_flash_attention_kernel", Recorder())
    q, k, v = _qkv(3, 5, 1, 8, 8, 16, torch.float16)
    fa._launch(q, k, v, torch.empty_like(q), False, 0.25, _tuning.FLASH_ATTENTION.fallbacks[0])
    assert seen["UPCAST"] is device.INTERPRET
    assert seen["DOT_PRECISION"] == ("ieee" if device.INTERPRET else "tf32")
    assert seen["HEAD_DIM"] == 16 and seen["IS_CAUSAL"] is False
    assert len(seen["grid"]) == 1 and seen["grid"][0] >= 3 * 5


# ----------------------------------------------------------------------------
# The grid: B·H beyond CUDA's 65 535 limit on the second grid dimension
# ----------------------------------------------------------------------------

def test_grid_is_one_dimensional_beyond_65535_heads():
    # a decoding batch: B·H = 2048·33 (query, batch) pairs, one query each
    grid = fa._grid(2048, 33, 1, 16)
    assert len(grid) == 1 and _tuning.MAX_GRID_YZ < 2048 * 33 <= grid[0] <= fa.MAX_PROGRAMS
    assert fa._grid(1, 1, 1, 16) == (1,)


def test_grid_refuses_more_programs_than_cuda_allows():
    with pytest.raises(ValueError, match=r"programs exceed CUDA's grid limit of 2\*\*31 − 1; split the batch"):
        fa._grid(2**16, 2**8, 2**16, 16)


@pytest.mark.parametrize("causal", CAUSAL)
def test_programs_cover_every_batch_head_and_tile(causal, poisoned_outputs):
    # B·H·(query tiles) programs on one grid axis: each (batch, head, tile) exactly once
    # (a wrong decomposition of the program id leaves poisoned NaN or wrong heads).
    _run(*_qkv(3, 2, 1, 50, 60, 16, torch.float16), causal)


@GPU_ONLY
@pytest.mark.parametrize("causal", CAUSAL)
def test_more_than_65535_heads(causal, poisoned_outputs):
    q, k, v = _qkv(2048, 33, 3, 1, 64, 64, device.default_dtype())    # B·H = 67 584 (GQA)
    _run(q, k, v, causal)


# ----------------------------------------------------------------------------
# Bad input and gradients
# ----------------------------------------------------------------------------

def _t(*shape, dtype=torch.float16):
    return torch.randn(*shape, device=DEV, dtype=dtype)


@pytest.mark.parametrize("args, error, message", [
    (lambda: (_t(2, 16, 64), _t(2, 16, 64), _t(2, 16, 64)), ValueError, r"q must be 4-D \(B, H, S_q, D\)"),
    (lambda: (_t(1, 2, 8, 64), _t(1, 2, 8, 64), _t(1, 2, 9, 64)), ValueError, "k has shape .* but v has shape"),
    (lambda: (_t(2, 2, 8, 64), _t(1, 2, 8, 64), _t(1, 2, 8, 64)), ValueError, "q has batch B=2 but k and v have B=1"),
    (lambda: (_t(1, 2, 8, 64), _t(1, 2, 8, 32), _t(1, 2, 8, 32)), ValueError,
     "q has head dim D=64 but k and v have D=32"),
    (lambda: (_t(1, 12, 8, 64), _t(1, 5, 8, 64), _t(1, 5, 8, 64)), ValueError,
     "H=12 query heads is not a multiple of H_kv=5 key/value heads"),
    (lambda: (_t(1, 0, 8, 64), _t(1, 0, 8, 64), _t(1, 0, 8, 64)), ValueError,
     r"q has H=0 query heads \(shape \(1, 0, 8, 64\)\); attention needs at least one head"),
    (lambda: (_t(1, 4, 8, 64), _t(1, 0, 8, 64), _t(1, 0, 8, 64)), ValueError,
     r"k and v have H_kv=0 key/value heads .* every query head needs a key/value head"),
    (lambda: (_t(1, 2, 8, 80), _t(1, 2, 8, 80), _t(1, 2, 8, 80)), ValueError,
     "head dim D=80 unsupported: use a power of two from 16 to 128"),
    (lambda: (_t(1, 2, 8, 256), _t(1, 2, 8, 256), _t(1, 2, 8, 256)), ValueError, "head dim D=256 unsupported"),
    (lambda: (_t(1, 2, 8, 64), _t(1, 2, 8, 64, dtype=torch.float32), _t(1, 2, 8, 64)), TypeError,
     "q is float16 but k is float32"),
    (lambda: (_t(1, 2, 8, 64).to(torch.int8),) * 3, TypeError, "q has dtype int8; supported dtypes"),
    (lambda: (_t(1, 2, 8, 64), "keys", _t(1, 2, 8, 64)), TypeError, "k must be a torch.Tensor, got str"),
], ids=["ndim", "kv-shape", "batch", "head-dim-mismatch", "heads", "H=0", "H_kv=0", "D=80", "D=256",
        "dtype-mismatch", "int", "not-a-tensor"])
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        fa.flash_attention(*args())


@pytest.mark.parametrize("sm_scale, error, message", [
    (float("inf"), ValueError, "sm_scale must be a finite positive number .*got inf"),
    (float("-inf"), ValueError, "sm_scale must be a finite positive number .*got -inf"),
    (float("nan"), ValueError, "sm_scale must be a finite positive number .*got nan"),
    (-1.0, ValueError, r"sm_scale must be a finite positive number .*got -1\.0"),
    (0, ValueError, "sm_scale must be a finite positive number .*got 0"),
    (10**400, ValueError, "sm_scale must be a finite positive number .*got 1000"),
    ("0.125", TypeError, "sm_scale must be a number, got str '0.125'"),
    (True, TypeError, "sm_scale must be a number, got bool True"),
    (torch.tensor(0.125), TypeError, r"sm_scale must be a number, got Tensor .*pass sm_scale.item\(\)"),
], ids=["inf", "-inf", "nan", "negative", "zero", "huge-int", "str", "bool", "tensor"])
def test_bad_scale(sm_scale, error, message):
    q = _t(1, 1, 4, 16)
    with pytest.raises(error, match=message):
        fa.flash_attention(q, q, q, sm_scale=sm_scale)


def test_different_devices():
    q = _t(1, 1, 4, 16)
    other = torch.randn(1, 1, 4, 16, device="meta" if not device.HAS_GPU else "cpu", dtype=torch.float16)
    # on the CPU: a meta tensor; on a GPU: a CPU tensor — the message names the tensor and its device
    with pytest.raises(ValueError, match=r"k is on (meta|the CPU)"):
        fa.flash_attention(q, other, q)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_inputs_that_require_grad(name, poisoned_outputs):
    # An inference kernel: its output has no autograd graph, so a gradient would be lost.
    qkv = dict(zip("qkv", _qkv(1, 2, 1, 20, 24, 16, torch.float32)))
    qkv[name].requires_grad_(True)
    with pytest.raises(RuntimeError, match=f"flash_attention: {name} requires grad.*torch.no_grad"):
        fa.flash_attention(**qkv)
    with torch.no_grad():
        out = fa.flash_attention(**qkv, causal=True)
    with torch.inference_mode():
        assert torch.equal(fa.flash_attention(**qkv, causal=True), out)
    assert not out.requires_grad
    _check(out, *(t.detach() for t in qkv.values()), causal=True)
