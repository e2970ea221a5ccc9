"""flash_attention against the fp32 reference; the same tests run in the interpreter (CPU) and compiled (GPU).

In the interpreter every test runs the UPCAST path (Q, K, V, P in fp32 before
``tl.dot``); on a GPU the same tests run 16-bit tensor-core matmuls.
"""

import importlib

import pytest
import torch
import triton

from conftest import DTYPES, poison
from infer_lib import device
from infer_lib.kernels.flash_attention_kernel import flash_attention
from infer_lib.reference import attention_ref, causal_mask

# the module (configs, _launch), not the function infer_lib.kernels exports under the same name
fa = importlib.import_module("infer_lib.kernels.flash_attention_kernel")
DEV = device.DEVICE

#: (atol, rtol) against the fp32 reference. On a GPU p is rounded to 16 bits for
#: the second matmul; in the interpreter only the output rounding remains.
ATTN_TOL = {
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}
CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]



def _qkv(B, H, H_kv, S_q, S_k, D, dtype):
    q = torch.randn(B, H, S_q, D, device=DEV, dtype=dtype)
    k = torch.randn(B, H_kv, S_k, D, device=DEV, dtype=dtype)
    v = torch.randn(B, H_kv, S_k, D, device=DEV, dtype=dtype)
    return q, k, v


def _check(q, k, v, causal, sm_scale=None):
    out = flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    atol, rtol = ATTN_TOL[q.dtype]
    torch.testing.assert_close(out, attention_ref(q, k, v, causal=causal, sm_scale=sm_scale), atol=atol, rtol=rtol)
    return out


# (S_q, S_k): 1, a ragged tile, several tiles, S_q ≠ S_k both ways (S_q > S_k with
# causal masking leaves the first S_q − S_k rows seeing no key at all).
SEQ = [(1, 1), (1, 17), (17, 1), (17, 17), (17, 129), (129, 17), (129, 129), (1, 1000), (1000, 1),
       (129, 1000), (1000, 129)]


@pytest.mark.parametrize("S_q, S_k", SEQ, ids=str)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_lengths(S_q, S_k, causal, dtype, poisoned_outputs):
    _check(*_qkv(2, 2, 1, S_q, S_k, 32, dtype), causal)


@pytest.mark.parametrize("H, H_kv", [(4, 4), (4, 2), (4, 1)], ids=["MHA", "GQA", "MQA"])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_groups(H, H_kv, causal, dtype, poisoned_outputs):
    _check(*_qkv(2, H, H_kv, 65, 65, 16, dtype), causal)


@pytest.mark.parametrize("D", [16, 32, 64, 128])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dims(D, causal, dtype, poisoned_outputs):
    _check(*_qkv(1, 2, 2, 33, 47, D, dtype), causal)


@pytest.mark.parametrize("S_q, S_k", [(40, 7), (129, 17), (33, 1)], ids=str)
def test_rows_that_see_no_key_are_zero(S_q, S_k, poisoned_outputs):
    dtype = device.default_dtype() if device.HAS_GPU else torch.bfloat16
    q, k, v = _qkv(1, 2, 1, S_q, S_k, 16, dtype)
    out = _check(q, k, v, causal=True)
    blind = ~causal_mask(S_q, S_k, device=DEV).any(dim=-1)      # (S_q,)
    assert int(blind.sum()) == S_q - S_k
    assert (out[:, :, blind] == 0).all()
    assert not out.isnan().any()


def test_custom_scale(poisoned_outputs):
    q, k, v = _qkv(1, 2, 2, 40, 50, 32, torch.float16)
    _check(q, k, v, causal=True, sm_scale=0.05)
    _check(q, k, v, causal=False, sm_scale=1.7)


def test_large_scores_do_not_overflow():
    # scores around ±1e3 after scaling: exp without the running max would overflow
    q, k, v = _qkv(1, 1, 1, 37, 70, 64, torch.float16)
    _check(q * 8, k * 8, v, causal=True)


@pytest.mark.parametrize("causal", CAUSAL)
def test_non_contiguous_views(causal, poisoned_outputs):
    # Packed (B, S, 3, H, D) projections viewed as (B, H, S, D) without a copy,
    # and a (B, S, H_kv, D) cache layout transposed: the strides reach the kernel.
    B, S, H, H_kv, D = 2, 45, 4, 2, 32
    qkv = torch.randn(B, S, 3, H, D, device=DEV, dtype=torch.float16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    _check(q, k, v, causal)
    k2 = torch.randn(B, S + 10, H_kv, D, device=DEV, dtype=torch.float16).transpose(1, 2)
    v2 = torch.randn(B, S + 10, H_kv, D, device=DEV, dtype=torch.float16).transpose(1, 2)
    _check(q, k2, v2, causal)


def _tile_configs():
    """Every tile shape the launcher can pick (on a GPU also each warp count), deduplicated."""
    configs, seen = [], set()
    for c in fa.HOPPER_CONFIGS + fa.FALLBACK_CONFIGS + fa.FP32_CONFIGS + [fa.INTERPRETER_CONFIG]:
        key = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) + (() if device.INTERPRET else (c.num_warps,))
        if key not in seen:
            seen.add(key)
            configs.append(pytest.param(c, id="x".join(map(str, key))))
    return configs


@pytest.mark.parametrize("config", _tile_configs())
@pytest.mark.parametrize("causal", CAUSAL)
def test_every_tile_shape(config, causal):
    # The masking of ragged and diagonal tiles depends on BLOCK_M and BLOCK_N:
    # run each tile shape the autotuner may choose, bypassing the autotuner.
    dtype = device.default_dtype() if device.HAS_GPU else torch.bfloat16
    D = 64
    if fa.shared_memory_bytes(config, D, 2) > fa.max_shared_memory():
        pytest.skip(f"{config} needs more shared memory than this GPU has")
    for S_q, S_k in [(200, 300), (300, 200)]:
        q, k, v = _qkv(1, 2, 1, S_q, S_k, D, dtype)
        out = poison(torch.empty_like(q))
        fa._launch(q, k, v, out, causal, D ** -0.5, config)
        atol, rtol = ATTN_TOL[dtype]
        torch.testing.assert_close(out, attention_ref(q, k, v, causal=causal), atol=atol, rtol=rtol)


@pytest.mark.skipif(not device.HAS_GPU, reason="autotuning is off in the interpreter (fixed config on the CPU)")
def test_autotuned_path():
    S = int(fa.AUTOTUNE_MIN_SCORES ** 0.5)
    q, k, v = _qkv(1, 2, 1, S, S, 64, device.default_dtype())
    _check(q, k, v, causal=True)


def test_launch_flags_follow_the_machine(monkeypatch):
    # UPCAST (fp32 tl.dot) exactly when interpreting; 16-bit operands on a GPU.
    seen = {}

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **meta: seen.update(meta)

    monkeypatch.setattr(fa, "_flash_attention_kernel", Recorder())
    q, k, v = _qkv(1, 1, 1, 8, 8, 16, torch.float16)
    fa._launch(q, k, v, torch.empty_like(q), False, 0.25, fa.FALLBACK_CONFIGS[0])
    assert seen["UPCAST"] is device.INTERPRET
    assert seen["DOT_PRECISION"] == ("ieee" if device.INTERPRET else "tf32")
    assert seen["HEAD_DIM"] == 16 and seen["IS_CAUSAL"] is False


def test_empty_and_keyless():
    q, k, v = _qkv(1, 2, 2, 0, 5, 16, torch.float16)
    assert flash_attention(q, k, v).shape == (1, 2, 0, 16)
    q, k, v = _qkv(1, 2, 2, 5, 0, 16, torch.float16)
    out = flash_attention(q, k, v)
    assert out.shape == (1, 2, 5, 16) and (out == 0).all()


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
    (lambda: (_t(1, 2, 8, 80), _t(1, 2, 8, 80), _t(1, 2, 8, 80)), ValueError,
     "head dim D=80 unsupported: use a power of two from 16 to 128"),
    (lambda: (_t(1, 2, 8, 256), _t(1, 2, 8, 256), _t(1, 2, 8, 256)), ValueError, "head dim D=256 unsupported"),
    (lambda: (_t(1, 2, 8, 64), _t(1, 2, 8, 64, dtype=torch.float32), _t(1, 2, 8, 64)), TypeError,
     "q is float16 but k is float32"),
    (lambda: (_t(1, 2, 8, 64).to(torch.int8),) * 3, TypeError, "q has dtype int8; supported dtypes"),
    (lambda: (_t(1, 2, 8, 64), "keys", _t(1, 2, 8, 64)), TypeError, "k must be a torch.Tensor, got str"),
], ids=["ndim", "kv-shape", "batch", "head-dim-mismatch", "heads", "D=80", "D=256", "dtype-mismatch", "int",
        "not-a-tensor"])
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        flash_attention(*args())


def test_bad_scale():
    q = _t(1, 1, 4, 16)
    with pytest.raises(ValueError, match="sm_scale must be a positive number, got -1"):
        flash_attention(q, q, q, sm_scale=-1.0)


def test_different_devices():
    q = _t(1, 1, 4, 16)
    other = torch.randn(1, 1, 4, 16, device="meta" if not device.HAS_GPU else "cpu", dtype=torch.float16)
    # on the CPU: a meta tensor; on a GPU: a CPU tensor — the message names the tensor and its device
    with pytest.raises(ValueError, match=r"k is on (meta|the CPU)"):
        flash_attention(q, other, q)


def test_configs_are_valid_triton_configs():
    for c in fa.HOPPER_CONFIGS + fa.FALLBACK_CONFIGS + fa.FP32_CONFIGS:
        assert isinstance(c, triton.Config)
        assert {"BLOCK_M", "BLOCK_N"} <= set(c.kwargs) and c.kwargs["BLOCK_M"] >= 16 and c.kwargs["BLOCK_N"] >= 16


@pytest.mark.parametrize("gpu, smem, D, n_kept", [
    ("H100", 232448, 64, 11), ("H100", 232448, 128, 10), ("L4", 101376, 128, 3), ("T4", 65536, 128, 0),
], ids=lambda p: str(p))
def test_autotune_configs_are_pruned_by_shared_memory(monkeypatch, gpu, smem, D, n_kept):
    # The autotuner's pruning hook, given the shared memory per program of various GPUs.
    monkeypatch.setattr(fa, "max_shared_memory", lambda: smem)
    q = torch.empty(1, 1, 1, D, dtype=torch.bfloat16)
    kept = fa._prune_by_shared_memory(fa.HOPPER_CONFIGS, {"q_ptr": q}, HEAD_DIM=D)
    # never empty: where no Hopper config fits, the first fallback that fits remains
    assert len(kept) == max(n_kept, 1), [str(c) for c in kept]
    assert all(fa.shared_memory_bytes(c, D, 2) <= smem for c in kept)
    for candidates, esize in ((fa.FALLBACK_CONFIGS, 2), (fa.FP32_CONFIGS, 4)):
        fixed = fa._first_fitting(candidates, D, esize, smem)   # what small problems get
        assert fa.shared_memory_bytes(fixed, D, esize) <= smem
