"""Plain PyTorch references for attention: the definitions the kernels are checked against.

``Attention(Q, K, V) = softmax(Q Kᵀ · sm_scale) · V`` with ``sm_scale = 1/√D``
by default (Vaswani et al. 2017, "Attention Is All You Need", eq. 1).

Shapes follow ``torch.nn.functional.scaled_dot_product_attention`` (one
vocabulary: ``B`` batch, ``H`` query heads, ``H_kv`` key/value heads, ``S``
sequence, ``D`` head dim, ``d`` model dim):

* ``q (B, H, S_q, D)``, ``k, v (B, H_kv, S_k, D)``, ``H % H_kv == 0``.
  With ``H_kv < H`` (grouped-query attention; ``H_kv = 1`` is multi-query)
  query head ``h`` reads key/value head ``h // (H // H_kv)``.
* ``causal=True`` aligns the mask bottom-right, as FlashAttention does:
  query ``i`` sees keys ``j ≤ i + S_k − S_q``. With ``S_q = S_k`` this is the
  usual lower-triangular mask (SDPA's ``is_causal``); with ``S_q < S_k``
  (new queries after a cached prefix) the last query sees every key.
* A query row that sees no key (possible only when causal and ``S_q > S_k``)
  returns zeros — softmax over an empty set is undefined, and zeros are what
  FlashAttention returns.
* NaN and ±inf give what SDPA's math backend gives on the keys a query sees:
  a NaN in the query or in a key it sees, or a score of ``+inf``, makes its
  output NaN; a NaN (or inf) in a value it sees reaches that column; a
  ``−inf`` score gives probability 0, and a query whose every score is
  ``−inf`` returns zeros (PyTorch ≥ 2.5). A key the causal mask hides does
  not reach the query at all — where SDPA, which adds the mask as ``−inf`` and
  multiplies the hidden keys' zero probabilities by ``v``, spreads a NaN or
  inf in any key or value to every query.

Three functions:

* ``attention_ref`` — the readable reference every kernel is tested against;
  computes in fp32 and casts back to ``q``'s dtype.
* ``multi_head_attention_ref`` — multi-head self-attention from a model
  input ``x (B, S, d)``: ``head_i = Attention(x W_i^Q, x W_i^K, x W_i^V)``,
  ``MultiHead(x) = Concat(head_1, …, head_h) W^O``.
* ``naive_attention`` — attention the way a first PyTorch implementation
  writes it (nanoGPT's non-flash path): the ``S_q × S_k`` score matrix is
  materialised in HBM, scaled, masked, softmaxed and multiplied by ``V``, each
  step a separate kernel that writes its full result to memory and reads it
  back. It is the baseline the chapter measures, not a reference.
"""

from __future__ import annotations

import math

import torch


def _check_attention_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int]:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D (B, H, S, D); got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k has shape {tuple(k.shape)} but v has shape {tuple(v.shape)}; they must match")
    H, H_kv = q.shape[1], k.shape[1]
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch B and head dim D")
    if H_kv == 0:
        raise ValueError(f"k and v have H_kv=0 key/value heads (shape {tuple(k.shape)}); need at least one")
    if H % H_kv != 0:
        raise ValueError(f"H={H} query heads is not a multiple of H_kv={H_kv} key/value heads")
    return H, H_kv


def causal_mask(S_q: int, S_k: int, device=None) -> torch.Tensor:
    """Boolean ``(S_q, S_k)`` mask, True where query ``i`` may see key ``j``: ``j ≤ i + S_k − S_q``."""
    i = torch.arange(S_q, device=device)[:, None]
    j = torch.arange(S_k, device=device)[None, :]
    return j <= i + (S_k - S_q)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · sm_scale) v`` in fp32, written for reading.

    q (B, H, S_q, D); k, v (B, H_kv, S_k, D). Returns (B, H, S_q, D) in q's dtype.
    NaN and ±inf as in the module docstring.
    """
    H, H_kv = _check_attention_shapes(q, k, v)
    if k.shape[2] == 0:                                     # no keys: no query sees any
        return torch.zeros_like(q)
    D = q.shape[-1]
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    qf, kf, vf = q.float(), k.float(), v.float()
    # GQA/MQA: query head h uses kv head h // (H // H_kv). The reference copies
    # K and V per query head for clarity; the kernel only indexes.
    group = H // H_kv
    kf = kf.repeat_interleave(group, dim=1)                 # (B, H, S_k, D)
    vf = vf.repeat_interleave(group, dim=1)
    scores = (qf @ kf.transpose(-2, -1)) * sm_scale         # (B, H, S_q, S_k)
    if causal:
        visible = causal_mask(q.shape[2], k.shape[2], device=q.device)
        # replaced, not added to: the score of a hidden key is gone, even a NaN
        scores = scores.masked_fill(~visible, float("-inf"))
    # Subtract the row maximum so exp never overflows. A row whose scores are
    # all -inf (it sees no key, or every key it sees scores -inf) has maximum
    # -inf: shift it by 0 instead, so its p is all 0 and its output zeros. A NaN
    # or +inf maximum is left alone: exp gives NaN and the row comes out NaN.
    row_max = scores.amax(dim=-1, keepdim=True)             # (B, H, S_q, 1)
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    p = torch.exp(scores - row_max)                         # exp(-inf) = 0 at masked keys
    denom = p.sum(dim=-1, keepdim=True)                     # 0 only for a row of -inf scores
    p = p / denom.masked_fill(denom == 0, 1.0)              # ... whose p is all 0: output 0
    out = p @ vf                                            # (B, H, S_q, D)
    if causal and not torch.isfinite(vf).all():
        # p is 0 at a hidden key, but 0 · NaN and 0 · inf are NaN: the matmul
        # would carry a NaN or inf value to queries that do not see its key.
        # Sum over the keys each query sees instead (a prefix of the keys).
        for i, n in enumerate(visible.sum(dim=-1).tolist()):
            out[..., i:i + 1, :] = p[..., i:i + 1, :n] @ vf[..., :n, :]
    return out.to(q.dtype)


def multi_head_attention_ref(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor,
                             w_v: torch.Tensor, w_o: torch.Tensor, n_heads: int,
                             causal: bool = False) -> torch.Tensor:
    """Multi-head self-attention, head by head, as in "Attention Is All You Need" §3.2.2.

    x (B, S, d); w_q, w_k, w_v, w_o (d, d), applied on the right (``x @ w_q``),
    so the columns ``i·D … (i+1)·D − 1`` of ``w_q`` are ``W_i^Q`` (D = d / n_heads).
    (``torch.nn.Linear`` and ``nn.MultiheadAttention`` store the transposes.)
    Returns (B, S, d) in x's dtype; no biases, no dropout.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (B, S, d), got shape {tuple(x.shape)}")
    d = x.shape[-1]
    if d % n_heads != 0:
        raise ValueError(f"model dim d={d} is not a multiple of n_heads={n_heads}")
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        if w.shape != (d, d):
            raise ValueError(f"{name} must be ({d}, {d}) for d={d}, got {tuple(w.shape)}")
    D = d // n_heads
    xf = x.float()
    heads = []
    for i in range(n_heads):
        cols = slice(i * D, (i + 1) * D)
        q_i = xf @ w_q[:, cols].float()                     # (B, S, D) = x W_i^Q
        k_i = xf @ w_k[:, cols].float()
        v_i = xf @ w_v[:, cols].float()
        # attention_ref wants (B, H, S, D): one head here
        head = attention_ref(q_i[:, None], k_i[:, None], v_i[:, None], causal=causal)
        heads.append(head[:, 0])                            # (B, S, D)
    concat = torch.cat(heads, dim=-1)                       # (B, S, d)
    return (concat @ w_o.float()).to(x.dtype)               # · W^O


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    sm_scale: float | None = None) -> torch.Tensor:
    """Attention as a first PyTorch implementation writes it: every step a kernel, scores in HBM.

    Same shapes and (bottom-right) causal convention as ``attention_ref``, but in
    the input dtype, with ``torch.softmax`` straight on the scores — so a row
    that sees no key comes out NaN here, not zeros (the naive code never thought
    about it). Memory traffic per (B, H): the ``S_q × S_k`` score matrix is
    written by the matmul, read and written by the scale, by the mask and by the
    softmax, and read by the second matmul — quadratic in S, where FlashAttention
    moves only q, k, v and the output.
    """
    H, H_kv = _check_attention_shapes(q, k, v)
    if H_kv != H:
        # the naive way to share K/V across query heads: copy them
        k = k.repeat_interleave(H // H_kv, dim=1)
        v = v.repeat_interleave(H // H_kv, dim=1)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    scores = q @ k.transpose(-2, -1)                        # (B, H, S_q, S_k) written to HBM
    scores = scores * sm_scale                              # read + written again
    if causal:
        visible = causal_mask(q.shape[2], k.shape[2], device=q.device)
        # out of place: ATen clones the scores, then fills the copy — two reads and two writes
        scores = scores.masked_fill(~visible, float("-inf"))
    p = torch.softmax(scores, dim=-1)                       # and again
    return p @ v                                            # read once more
