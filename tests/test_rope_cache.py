"""Tests of the fused RoPE + KV-cache write (infer_lib.kernels.rope_cache_kernel): against its fp32
reference and the model's own ``apply_rope`` and ``KVCache.update``, on the strided slices of a
merged q/k/v projection, odd head counts and sizes, every dtype; bad input refused clearly."""

import pytest
import torch

from conftest import DTYPES, TOLERANCES
from infer_lib import device
from infer_lib.kernels.rope_cache_kernel import rope_cache, rope_cache_ref
from infer_lib.model.layers import apply_rope

DEV = device.DEVICE

# (B, S, H, H_kv, D, S_max): decode (S = 1), a prompt chunk, MQA, MHA, odd D/2
CASES = [(1, 1, 4, 2, 16, 8), (3, 1, 8, 1, 64, 33), (2, 5, 4, 4, 32, 9), (2, 3, 6, 3, 10, 7)]


def _inputs(B, S, H, H_kv, D, S_max, dtype, seed=0):
    """q, k, v as views of one (B, S, (H + 2·H_kv)·D) projection; angles; distinct positions
    per sequence; caches filled with random values (so untouched slots can be checked)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, S, (H + 2 * H_kv) * D, generator=g).to(DEV, dtype)
    q = qkv[..., :H * D].view(B, S, H, D)
    k = qkv[..., H * D:(H + H_kv) * D].view(B, S, H_kv, D)
    v = qkv[..., (H + H_kv) * D:].view(B, S, H_kv, D)
    angles = torch.rand(B, S, D, generator=g) * 6.3
    cos, sin = angles.cos().to(DEV), angles.sin().to(DEV)
    positions = torch.stack([torch.randperm(S_max, generator=g)[:S] for _ in range(B)]).to(DEV)
    k_cache = torch.randn(B, H_kv, S_max, D, generator=g).to(DEV, dtype)
    return q, k, v, cos, sin, k_cache, k_cache.flip(2).clone(), positions


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_and_leaves_other_slots_alone(case, dtype, poisoned_outputs):
    q, k, v, cos, sin, k_cache, v_cache, positions = _inputs(*case, dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_out = rope_cache(q, k, v, cos, sin, k_cache, v_cache, positions)
    q_ref = rope_cache_ref(q, k, v, cos, sin, k_ref, v_ref, positions)
    B, S, H, D = q.shape
    assert q_out.shape == (B, H, S, D) and q_out.dtype == dtype and q_out.is_contiguous()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(q_out.float(), q_ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(k_cache.float(), k_ref.float(), atol=atol, rtol=rtol)
    assert torch.equal(v_cache, v_ref)                       # values are copied, not computed


def test_reference_is_the_models_rope_and_cache_update():
    q, k, v, cos, sin, k_cache, v_cache, positions = _inputs(2, 3, 4, 2, 16, 9, torch.float32)
    k_model, v_model = k_cache.clone(), v_cache.clone()
    index = positions[:, None, :, None].expand(-1, 2, -1, 16)
    k_model.scatter_(2, index, apply_rope(k.transpose(1, 2), cos, sin))
    v_model.scatter_(2, index, v.transpose(1, 2))
    q_out = rope_cache(q, k, v, cos, sin, k_cache, v_cache, positions)
    torch.testing.assert_close(q_out, apply_rope(q.transpose(1, 2), cos, sin), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k_cache, k_model, atol=1e-6, rtol=1e-6)
    assert torch.equal(v_cache, v_model)


def test_bad_input_raises_clearly():
    q, k, v, cos, sin, k_cache, v_cache, positions = _inputs(2, 1, 4, 2, 16, 8, torch.float32)
    args = dict(q=q, k=k, v=v, cos=cos, sin=sin, k_cache=k_cache, v_cache=v_cache, positions=positions)

    def call(**change):
        return rope_cache(**{**args, **change})

    with pytest.raises(ValueError, match="multiple of H_kv"):
        call(q=torch.randn(2, 1, 3, 16, device=DEV))
    with pytest.raises(ValueError, match="must both be"):
        call(v=v[:, :, :1])
    with pytest.raises(TypeError, match="cast them to one dtype"):
        call(cos=cos.half())
    with pytest.raises(ValueError, match=r"cos .* must be \(B, S, D\)"):
        call(cos=cos[:, :, :8], sin=sin[:, :, :8])
    with pytest.raises(ValueError, match="positions must be"):
        call(positions=positions[:1])
    with pytest.raises(TypeError, match="positions has dtype"):
        call(positions=positions.int())
    with pytest.raises(ValueError, match="k_cache .* must both be"):
        call(k_cache=k_cache[:, :1], v_cache=v_cache[:, :1])
    with pytest.raises(TypeError, match="cast them to one dtype"):
        call(k_cache=k_cache.half(), v_cache=v_cache.half())
    with pytest.raises(ValueError, match="last dimension of q must be contiguous"):
        call(q=q.transpose(2, 3).contiguous().transpose(2, 3))
    if not device.HAS_GPU:                                  # value checks: free on CPU tensors
        with pytest.raises(ValueError, match=r"positions\[1, 0\] = 8 is outside the cache's 0..7"):
            call(positions=torch.tensor([[0], [8]]))


def test_nan_and_inf_behave_as_in_the_reference():
    q, k, v, cos, sin, k_cache, v_cache, positions = _inputs(2, 3, 4, 2, 16, 9, torch.float32)
    q[0, 0, 1, 3], q[1, 2, 0, 12] = float("nan"), float("inf")
    k[0, 1, 1, 0], v[1, 0, 0, 5] = float("-inf"), float("nan")
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_out = rope_cache(q, k, v, cos, sin, k_cache, v_cache, positions)
    q_ref = rope_cache_ref(q, k, v, cos, sin, k_ref, v_ref, positions)
    for got, want in ((q_out, q_ref), (k_cache, k_ref), (v_cache, v_ref)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6, equal_nan=True)
    assert q_out.isnan().any() and k_cache.isinf().any() and v_cache.isnan().any()


def test_inputs_requiring_grad_are_refused():
    q, k, v, cos, sin, k_cache, v_cache, positions = _inputs(1, 1, 4, 2, 16, 8, torch.float32)
    with pytest.raises(RuntimeError, match="requires grad"):
        rope_cache(q.detach().requires_grad_(), k, v, cos, sin, k_cache, v_cache, positions)
