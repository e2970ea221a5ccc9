"""The attention references against PyTorch's own implementations (fp32, CPU or GPU).

Also here, for ``test_flash_attention.py`` too: inputs with NaN or ±inf placed in the
first, a middle and the last (ragged) key tile (``special_qkv``), and SDPA's math backend
applied to the keys each query sees (``sdpa_on_visible_keys``), which defines what
those inputs must give.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from infer_lib import device
from infer_lib.reference import attention_ref, causal_mask, multi_head_attention_ref, naive_attention

# the module, not the launcher infer_lib.kernels exports under the same name
flash_attention_ref = importlib.import_module("infer_lib.kernels.flash_attention_kernel").flash_attention_ref

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


def test_no_keys_give_zeros_as_sdpa():
    q, k, v = _qkv(2, 2, 1, 5, 0, 16)
    want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert (want == 0).all()
    for causal in (False, True):
        assert (attention_ref(q, k, v, causal=causal) == 0).all()


def test_reference_rejects_zero_kv_heads():
    q = torch.randn(1, 2, 4, 16, device=DEV)
    kv = torch.randn(1, 0, 4, 16, device=DEV)
    with pytest.raises(ValueError, match="H_kv=0 key/value heads"):
        attention_ref(q, kv, kv)


# ----------------------------------------------------------------------------
# NaN and ±inf: the references against SDPA's math backend
# ----------------------------------------------------------------------------

#: What each kind of input puts where (``special_qkv``), and what SDPA gives for it:
#: NaN rows or columns, ±inf, zero rows (every visible score -inf), or finite
#: outputs although whole key tiles score -inf.
SPECIAL_KINDS = {
    "nan_q": "nan",            # a NaN in one query row
    "nan_k": "nan",            # a NaN in one key
    "nan_v": "nan",            # a NaN in one value
    "posinf_k": "nan",         # k[j, 0] = +inf: score +inf (NaN row) or -inf, by the sign of q[i, 0]
    "neginf_k": "nan",         # k[j, 0] = -inf: the same, signs swapped
    "neginf_tile": "finite",   # q[:, 0] > 0 and k[tile, 0] = -inf: a whole key tile scores -inf
    "neginf_prefix": "zeros",  # q[:, 0] > 0 and k[:end, 0] = -inf: queries that see only those keys
    "inf_v": "inf",            # v[j, 3] = +inf and v[j, 4] = -inf
}


def special_shapes(block_n: int) -> dict[str, tuple[int, int, int, int, int]]:
    """``(B, H, H_kv, S_q, S_k)`` with three key tiles of ``block_n`` (the last one ragged)
    and three (batch, kv head) slots for ``special_qkv``: MHA with S_q = S_k, GQA with
    S_q < S_k, MQA with S_q > S_k (the first S_q − S_k queries see no key when causal)."""
    S_k = 2 * block_n + 6
    return {"MHA-square": (1, 3, 3, S_k, S_k),
            "GQA-short": (1, 6, 3, block_n - 12, S_k),
            "MQA-long": (3, 2, 1, S_k + 5, S_k)}


def special_qkv(kind: str, B: int, H: int, H_kv: int, S_q: int, S_k: int, D: int, block_n: int,
                dtype=torch.float32):
    """Fresh random q, k, v with the special values of ``kind`` (``SPECIAL_KINDS``).

    Slot ``s = b·H_kv + h_kv`` (s = 0, 1, 2) holds them in key tile s of ``block_n`` keys:
    the first, a middle one, and the last, ragged one — or, for ``nan_q``, in the first,
    middle or last query row of the slot's first query head.
    """
    assert B * H_kv >= 3 and S_k >= 2 * block_n + 2, "three slots and three key tiles needed"
    q = torch.randn(B, H, S_q, D, device=DEV)
    k = torch.randn(B, H_kv, S_k, D, device=DEV)
    v = torch.randn(B, H_kv, S_k, D, device=DEV)
    inf, nan = float("inf"), float("nan")
    last = (S_k - 1) // block_n * block_n
    tiles = [(0, block_n), (block_n, 2 * block_n), (last, S_k)]
    keys = [1, block_n + block_n // 2, S_k - 2]                  # one key in each tile
    rows = [min(1, S_q - 1), S_q // 2, S_q - 1]
    if kind in ("neginf_tile", "neginf_prefix"):
        q[..., 0] = q[..., 0].abs() + 0.5                        # every score of a -inf key is -inf
    for s in range(3):
        b, h_kv = divmod(s, H_kv)
        j, (lo, hi) = keys[s], tiles[s]
        if kind == "nan_q":
            q[b, h_kv * (H // H_kv), rows[s], 3] = nan
        elif kind == "nan_k":
            k[b, h_kv, j, 3] = nan
        elif kind == "nan_v":
            v[b, h_kv, j, 3] = nan
        elif kind == "posinf_k":
            k[b, h_kv, j, 0] = inf
        elif kind == "neginf_k":
            k[b, h_kv, j, 0] = -inf
        elif kind == "neginf_tile":
            k[b, h_kv, lo:hi, 0] = -inf
        elif kind == "neginf_prefix":
            k[b, h_kv, :hi, 0] = -inf
        elif kind == "inf_v":
            v[b, h_kv, j, 3], v[b, h_kv, j, 4] = inf, -inf
        else:
            raise ValueError(f"unknown kind {kind!r}")
    return q.to(dtype), k.to(dtype), v.to(dtype)


def sdpa_on_visible_keys(q, k, v, causal: bool = False, sm_scale: float | None = None) -> torch.Tensor:
    """SDPA's math backend with every query given only the keys it sees.

    Under the (bottom-right) causal mask each query gets its own copy of k and v in
    which the keys it does not see are zeros, and masked: they add exactly nothing,
    whatever they held. A query that sees no key gets zeros, by definition (SDPA
    would give NaN for a NaN query there).
    """
    with sdpa_kernel(SDPBackend.MATH):
        if not causal:
            return F.scaled_dot_product_attention(q, k, v, scale=sm_scale, enable_gqa=True)
        group = q.shape[1] // k.shape[1]
        visible = causal_mask(q.shape[2], k.shape[2], device=q.device)            # (S_q, S_k)
        k_q = torch.where(visible[:, :, None], k.repeat_interleave(group, 1)[:, :, None], 0.0)  # (B, H, S_q, S_k, D)
        v_q = torch.where(visible[:, :, None], v.repeat_interleave(group, 1)[:, :, None], 0.0)
        out = F.scaled_dot_product_attention(q[:, :, :, None], k_q, v_q, attn_mask=visible[:, None, :],
                                             scale=sm_scale)                    # (B, H, S_q, 1, D)
    return torch.where(visible.any(-1)[:, None], out[:, :, :, 0], 0.0)


def check_special_effect(kind: str, want: torch.Tensor) -> None:
    """The special values did what SPECIAL_KINDS says (so that a comparison is not vacuous)."""
    effect = SPECIAL_KINDS[kind]
    if effect == "nan":
        assert want.isnan().any()
    elif effect == "inf":
        assert want.isinf().any()
    elif effect == "finite":
        assert torch.isfinite(want).all()
    else:
        assert torch.isfinite(want).all() and (want == 0).all(-1).any()


REFERENCES = [pytest.param(attention_ref, id="attention_ref"), pytest.param(flash_attention_ref, id="flash_attention_ref")]
SPECIAL_BLOCK_N = 32


@pytest.mark.parametrize("ref", REFERENCES)
@pytest.mark.parametrize("shape", list(special_shapes(SPECIAL_BLOCK_N).items()), ids=lambda p: p[0])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", list(SPECIAL_KINDS))
def test_special_values_match_sdpa(kind, causal, shape, ref):
    q, k, v = special_qkv(kind, *shape[1], D=16, block_n=SPECIAL_BLOCK_N)
    want = sdpa_on_visible_keys(q, k, v, causal=causal)
    check_special_effect(kind, want)
    torch.testing.assert_close(ref(q, k, v, causal=causal), want, atol=ATOL, rtol=RTOL, equal_nan=True)


@pytest.mark.parametrize("tensor", ["k", "v"])
def test_sdpa_spreads_what_the_causal_mask_hides(tensor):
    """Why the references are compared with SDPA on the visible keys only: SDPA's math backend
    adds the mask to the scores (NaN + -inf = NaN) and multiplies the hidden keys' zero
    probabilities by v (0 · NaN = NaN), so a NaN in the last key or value reaches every query,
    although the causal mask hides it from all but the last."""
    q, k, v = _qkv(1, 1, 1, 8, 8, 16)
    (k if tensor == "k" else v)[..., 7, 3] = float("nan")
    with sdpa_kernel(SDPBackend.MATH):
        sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = attention_ref(q, k, v, causal=True)
    assert sdpa[..., :7, :].isnan().any()
    assert torch.isfinite(ours[..., :7, :]).all() and ours[..., 7, :].isnan().any()
