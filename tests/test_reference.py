"""The attention references against PyTorch's own implementations (fp32, CPU or GPU)."""

import pytest
import torch
import torch.nn.functional as F

from infer_lib import device
from infer_lib.reference import attention_ref, causal_mask, multi_head_attention_ref, naive_attention

DEV = device.DEVICE
# fp32 on both machines; SDPA on a GPU may use TF32-free kernels, still not bit-equal.
ATOL, RTOL = 2e-5, 2e-5


def _qkv(B, H, H_kv, S_q, S_k, D, dtype=torch.float32):
    q = torch.randn(B, H, S_q, D, device=DEV, dtype=dtype)
    k = torch.randn(B, H_kv, S_k, D, device=DEV, dtype=dtype)
    v = torch.randn(B, H_kv, S_k, D, device=DEV, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("B, H, S_q, S_k, D", [(1, 1, 1, 1, 16), (2, 3, 17, 17, 32), (1, 2, 5, 129, 64),
                                               (2, 2, 129, 33, 16)], ids=str)
@pytest.mark.parametrize("scale", [None, 0.3])
def test_matches_sdpa(B, H, S_q, S_k, D, scale):
    q, k, v = _qkv(B, H, H, S_q, S_k, D)
    want = F.scaled_dot_product_attention(q, k, v, scale=scale)
    torch.testing.assert_close(attention_ref(q, k, v, sm_scale=scale), want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("S", [1, 17, 130])
def test_causal_square_matches_sdpa_is_causal(S):
    q, k, v = _qkv(2, 3, 3, S, S, 32)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention_ref(q, k, v, causal=True), want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("S_q, S_k", [(1, 40), (7, 40), (40, 7), (40, 1)], ids=str)
def test_causal_is_aligned_bottom_right(S_q, S_k):
    # SDPA's is_causal aligns top-left when S_q != S_k; the bottom-right mask goes in explicitly.
    q, k, v = _qkv(1, 2, 2, S_q, S_k, 16)
    visible = causal_mask(S_q, S_k, device=DEV)
    assert visible[-1].all(), "the last query sees every key"
    got = attention_ref(q, k, v, causal=True)
    sees_a_key = visible.any(dim=-1)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
    torch.testing.assert_close(got[:, :, sees_a_key], want[:, :, sees_a_key], atol=ATOL, rtol=RTOL)
    # rows that see no key (S_q > S_k): zeros, by definition
    assert (got[:, :, ~sees_a_key] == 0).all()
    assert int((~sees_a_key).sum()) == max(0, S_q - S_k)


@pytest.mark.parametrize("H, H_kv", [(4, 4), (4, 2), (4, 1), (6, 3)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gqa_matches_sdpa(H, H_kv, causal):
    q, k, v = _qkv(2, H, H_kv, 19, 19, 16)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(attention_ref(q, k, v, causal=causal), want, atol=ATOL, rtol=RTOL)
    # query head h reads kv head h // (H // H_kv): the same as copying K/V per group
    k_rep, v_rep = k.repeat_interleave(H // H_kv, 1), v.repeat_interleave(H // H_kv, 1)
    torch.testing.assert_close(attention_ref(q, k, v, causal=causal),
                               F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=causal),
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_keeps_dtype_and_computes_in_fp32(dtype):
    q, k, v = _qkv(1, 2, 1, 9, 11, 16, dtype=dtype)
    got = attention_ref(q, k, v)
    assert got.dtype == dtype
    want = attention_ref(q.float(), k.float(), v.float()).to(dtype)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("B, S, d, n_heads", [(2, 13, 32, 4), (1, 40, 48, 3), (3, 1, 16, 1)], ids=str)
def test_multi_head_matches_nn_multihead_attention(B, S, d, n_heads, causal):
    mha = torch.nn.MultiheadAttention(d, n_heads, bias=False, batch_first=True, device=DEV)
    x = torch.randn(B, S, d, device=DEV)
    # nn.MultiheadAttention stores the weights as nn.Linear does (y = x Wᵀ), Q, K, V stacked
    w_q, w_k, w_v = (w.T for w in mha.in_proj_weight.detach().chunk(3))
    w_o = mha.out_proj.weight.detach().T
    # bool attn_mask: True where attention is NOT allowed
    mask = ~causal_mask(S, S, device=DEV) if causal else None
    with torch.no_grad():
        want, _ = mha(x, x, x, need_weights=False, attn_mask=mask, is_causal=causal)
    got = multi_head_attention_ref(x, w_q, w_k, w_v, w_o, n_heads, causal=causal)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H, H_kv", [(2, 2), (4, 1)], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_naive_attention_matches_reference(H, H_kv, causal):
    q, k, v = _qkv(2, H, H_kv, 23, 23, 16)
    torch.testing.assert_close(naive_attention(q, k, v, causal=causal), attention_ref(q, k, v, causal=causal),
                               atol=ATOL, rtol=RTOL)


def test_naive_attention_keeps_dtype():
    q, k, v = _qkv(1, 2, 2, 8, 8, 16, dtype=torch.float16)
    assert naive_attention(q, k, v).dtype == torch.float16


@pytest.mark.parametrize("make, message", [
    (lambda: _qkv(1, 5, 2, 4, 4, 16), "H=5 query heads is not a multiple of H_kv=2"),
    (lambda: (torch.randn(2, 4, 16), torch.randn(2, 4, 16), torch.randn(2, 4, 16)), "must be 4-D"),
    (lambda: (*_qkv(1, 2, 2, 4, 4, 16)[:2], torch.randn(1, 2, 5, 16, device=DEV)), "k has shape .* but v has shape"),
], ids=["heads", "ndim", "kv-shape"])
def test_reference_rejects_bad_shapes(make, message):
    with pytest.raises(ValueError, match=message):
        attention_ref(*make())


def test_multi_head_rejects_indivisible_heads():
    x = torch.randn(1, 3, 10)
    w = torch.randn(10, 10)
    with pytest.raises(ValueError, match="d=10 is not a multiple of n_heads=3"):
        multi_head_attention_ref(x, w, w, w, w, 3)
