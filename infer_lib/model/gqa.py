"""Grouped-query attention from a multi-head checkpoint: ``to_gqa(model, n_kv_heads)``.

**What GQA and MQA share.** Both keep the ``H`` query heads and let several of them
read one key/value head. Multi-query attention (MQA; Shazeer 2019,
https://arxiv.org/abs/1911.02150) has a single K/V head, ``H_kv = 1``; grouped-query
attention (GQA) has ``1 ≤ H_kv ≤ H`` groups, query head ``h`` reading K/V head
``h // (H / H_kv)`` — GQA-1 is MQA and GQA-H is multi-head attention (MHA). The query
and output projections do not change; the key and value projections, and with them the
KV cache and the bytes a decode step reads from it, shrink by ``H / H_kv``
(``ModelConfig.kv_cache_bytes_per_token``).

**What the conversion does.** Ainslie et al. (2023), "GQA: Training Generalized
Multi-Query Transformer Models from Multi-Head Checkpoints"
(https://arxiv.org/abs/2305.13245), build each group's key and value head by
*mean-pooling* the projection matrices of the original heads in that group — which
they found better than keeping one head of the group or starting new heads at random —
and then *uptrain* the converted model for a small fraction of its pre-training
compute (5 % in their experiments). ``to_gqa`` is the first step only: a model right
after the conversion attends differently (softmax is not linear, so the output of a
pooled head is not the mean of the outputs of the heads it replaces) and needs
uptraining before its quality can be judged.

Here the heads are grouped as GQA indexes them: ``g = H_kv_old / n_kv_heads``
*consecutive* K/V heads form one group, so every query head keeps reading the group
that holds the head it read before. ``k_proj.weight`` and ``v_proj.weight`` are
``(H_kv · D, d)`` with head ``h`` in rows ``h·D … (h+1)·D − 1`` (``layers.Attention``
views the projection as ``(B, S, H_kv, D)``), so the new head ``j`` is::

    W_new[j·D + r] = mean over i < g of W_old[(j·g + i)·D + r]     r < D

There are no biases (as in every Llama); a bias, should a fork add one, is pooled the
same way. The pooling is done in fp32 and rounded once to the weights' dtype.

**RoPE.** The paper's models (T5) have no rotary embeddings; here keys are rotated
after the projection, by the same angles for every head, and the Hugging Face row
order (``rotate_half``) is the same within every head, so row ``r`` of each head's block
is the same rotary dimension. RoPE is linear, so ``RoPE(mean_i W_i x) =
mean_i RoPE(W_i x)``: the pooled projection gives exactly the mean of the rotated keys
of the group, and averaging the projection weights is the paper's operation unchanged.
Values are not rotated.

The conversion also goes from a grouped model to a coarser grouping (8 K/V heads →
2): the mean of equal-sized groups of means is the mean over the whole group, so
8 → 4 → 2 gives what 8 → 2 gives.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers

import torch
from torch import nn

from .layers import Transformer


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _pool_heads(t: torch.Tensor, n_groups: int, group: int, D: int) -> torch.Tensor:
    """Mean of each group of ``group`` consecutive heads of ``t`` ((H_kv·D, …) rows per
    head) in fp32, cast back: (n_groups·D, …)."""
    rest = t.shape[1:]
    pooled = t.float().reshape(n_groups, group, D, *rest).mean(dim=1)    # (n_groups, D, …)
    return pooled.reshape(n_groups * D, *rest).to(t.dtype)


@torch.no_grad()
def to_gqa(model: Transformer, n_kv_heads: int) -> Transformer:
    """A new model with ``n_kv_heads`` key/value heads, each the mean of a group of
    ``H_kv / n_kv_heads`` consecutive K/V heads of ``model`` (module docstring).

    ``model`` is left untouched: the result is a deep copy (same backend, dtype,
    device, mode and tied head) whose ``k_proj`` and ``v_proj`` are pooled and whose
    ``config.n_kv_heads`` is ``n_kv_heads``; everything else is an equal copy.
    ``n_kv_heads`` must be a positive integer dividing the model's current
    ``H_kv`` (``n_kv_heads = H_kv`` gives an unchanged copy); anything else raises
    ``ValueError`` naming the numbers."""
    if not isinstance(model, Transformer):
        raise TypeError(f"to_gqa: model must be an infer_lib.model.Transformer, got {type(model).__name__}")
    config = model.config
    H_kv, D, d = config.n_kv_heads, config.head_dim, config.dim
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, numbers.Integral) or n_kv_heads < 1:
        raise ValueError(f"to_gqa: n_kv_heads must be a positive integer, got {n_kv_heads!r}")
    n_kv_heads = int(n_kv_heads)
    if n_kv_heads > H_kv:
        raise ValueError(f"to_gqa: n_kv_heads={n_kv_heads} is larger than the model's H_kv={H_kv} "
                         "key/value heads; the conversion merges heads by mean-pooling, it cannot "
                         "split them")
    if H_kv % n_kv_heads != 0:
        raise ValueError(f"to_gqa: n_kv_heads={n_kv_heads} does not divide the model's H_kv={H_kv} "
                         "key/value heads, so they cannot form groups of equal size; choose one of "
                         f"{', '.join(map(str, _divisors(H_kv)))}")
    for i, block in enumerate(model.layers):      # a model whose weights disagree with its config
        attn = block.self_attn
        for name in ("k_proj", "v_proj"):
            shape = tuple(getattr(attn, name).weight.shape)
            if attn.n_kv_heads != H_kv or shape != (H_kv * D, d):
                raise ValueError(f"to_gqa: layer {i} has {attn.n_kv_heads} K/V heads and {name}.weight "
                                 f"of shape {shape}, but the config says H_kv={H_kv}, D={D}, d={d} "
                                 f"(expected ({H_kv * D}, {d}))")

    group = H_kv // n_kv_heads
    new = copy.deepcopy(model)                    # the memo keeps a tied head tied
    new.config = dataclasses.replace(config, n_kv_heads=n_kv_heads)   # checked again
    for block in new.layers:
        attn = block.self_attn
        attn.n_kv_heads = n_kv_heads
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight = nn.Parameter(_pool_heads(proj.weight, n_kv_heads, group, D),
                                       requires_grad=proj.weight.requires_grad)
            if proj.bias is not None:
                proj.bias = nn.Parameter(_pool_heads(proj.bias, n_kv_heads, group, D),
                                         requires_grad=proj.bias.requires_grad)
            proj.out_features = n_kv_heads * D
    return new


__all__ = ["to_gqa"]
