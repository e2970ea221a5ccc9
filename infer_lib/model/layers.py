"""The layers of a Llama-style decoder, in plain PyTorch: RMSNorm, RoPE, attention, SwiGLU MLP.

One pre-norm block (Llama; Touvron et al. 2023, https://arxiv.org/abs/2302.13971)::

    h   = x + Attention(RMSNorm(x))          x (B, S, d)
    out = h + MLP(RMSNorm(h))

* ``RMSNorm(x) = w ⊙ x / sqrt(mean(x²) + eps)``, the mean taken in fp32 over ``d``
  (Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467).
* ``MLP(x) = down(silu(gate(x)) ⊙ up(x))`` (SwiGLU; Shazeer 2020,
  https://arxiv.org/abs/2002.05202), ``d → F → d``.
* Attention projects ``x`` to ``H`` query heads and ``H_kv`` key/value heads of
  dim ``D``, rotates queries and keys by their position (RoPE; Su et al. 2021,
  https://arxiv.org/abs/2104.09864), attends causally and projects ``H·D → d``.

RoPE follows the Hugging Face "rotate_half" convention: the pair rotated by the
``i``-th frequency is ``(x[i], x[i + D/2])``, not ``(x[2i], x[2i+1])`` as in Meta's
original code. Hugging Face checkpoints store ``q_proj`` and ``k_proj`` with rows
permuted to match, so they load here without any permutation.

Attention backends (``Transformer(config, backend=...)``), each three functions
of one contract (``AttentionBackend``):

* ``"reference"`` — ``infer_lib.reference.attention_ref``: fp32 inside,
  readable; with a cache, one sequence at a time over its own keys.
* ``"sdpa"`` — ``torch.nn.functional.scaled_dot_product_attention`` with
  ``enable_gqa`` (K/V heads shared by index, not copied); with a cache, a
  boolean mask over the whole cache: static shapes, so a decode step can be
  captured in a CUDA graph.
* ``"triton"`` — ``infer_lib.kernels.flash_attention`` (GQA by indexing); with a
  cache and several new tokens, one sequence at a time over its own keys. A
  decode step (one new token per sequence) runs ``infer_lib.kernels.decode_attention``:
  every sequence in one launch, split along the keys, lengths read on the GPU —
  so the step captures in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..reference import attention_ref
from .config import ModelConfig

# -- RMSNorm, RoPE, MLP -----------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``w ⊙ x / sqrt(mean(x²) + eps)`` over the last dim, in fp32, cast back before ``w``
    (as Hugging Face's ``LlamaRMSNorm``, so 16-bit results match it too)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (..., d)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_frequencies(config: ModelConfig, device=None) -> torch.Tensor:
    """The ``D/2`` rotary frequencies ``f_i = θ^(−2i/D)``, Llama-3-scaled when
    ``config.rope_scaling`` is set (``RopeScaling``'s docstring). fp32, ``(D/2,)``.

    The operations and their order are Hugging Face's, so the fp32 tables are
    bit-identical to theirs."""
    D = config.head_dim
    exponent = torch.arange(0, D, 2, dtype=torch.int64, device=device).float() / D
    inv_freq = 1.0 / (config.rope_theta ** exponent)                    # (D/2,)
    s = config.rope_scaling
    if s is None:
        return inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * torch.pi / inv_freq
    # long wavelengths (low frequencies): divided by `factor`; short ones: unchanged
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    # in between: interpolate between the two
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / \
        (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(config: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of angle ``p · f_i`` for every position ``p < max_seq_len``, each
    ``(max_seq_len, D)`` in fp32, the ``D/2`` angles written twice (``[f, f]``) to match
    ``rotate_half``."""
    inv_freq = rope_frequencies(config, device)                        # (D/2,)
    positions = torch.arange(config.max_seq_len, device=device).float()
    angles = torch.outer(positions, inv_freq)                          # (S_max, D/2)
    angles = torch.cat((angles, angles), dim=-1)                       # (S_max, D)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) → (−x2, x1)`` on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x[i], x[i + D/2])`` by its angle: ``x·cos + rotate_half(x)·sin``.

    x (B, H, S, D); cos, sin (B, S, D) for the tokens' positions, cast to x's dtype."""
    cos = cos[:, None].to(x.dtype)                                      # (B, 1, S, D)
    sin = sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) ⊙ up(x))``, ``d → F → d``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, S, d)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# -- attention backends -----------------------------------------------------------------------
#
# q (B, H, S, D); k, v (B, H_kv, S, D) without a cache; k_cache, v_cache
# (B, H_kv, S_max, D) with one. `cache_seqlens` (B,) int32 counts each sequence's
# valid keys, the new ones included: its S queries sit at positions
# cache_seqlens[b] − S … cache_seqlens[b] − 1 and query i sees keys
# j ≤ cache_seqlens[b] − S + i (causal, aligned bottom-right). Keys at or beyond
# cache_seqlens[b] are never seen. Returns (B, H, S, D).


@dataclass(frozen=True)
class AttentionBackend:
    """How one backend attends: ``prefill(q, k, v)`` causal without a cache,
    ``extend(q, k_cache, v_cache, cache_seqlens)`` for ``S ≥ 1`` new queries per
    sequence over its cache, and ``decode(...)``, the same for ``S = 1``."""

    prefill: Callable[..., torch.Tensor]
    extend: Callable[..., torch.Tensor]
    decode: Callable[..., torch.Tensor]


def _one_sequence_at_a_time(attend, q, k_cache, v_cache, cache_seqlens) -> torch.Tensor:
    """Run ``attend(q, k, v, causal=True)`` per sequence on its valid keys only.

    Bottom-right causal alignment with ``S_k = cache_seqlens[b]`` is exactly the
    contract above. Reads the lengths on the host: not for CUDA graphs."""
    out = torch.empty_like(q)
    for b, n in enumerate(cache_seqlens.tolist()):
        out[b:b + 1] = attend(q[b:b + 1], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n], causal=True)
    return out


def _reference_prefill(q, k, v):
    return attention_ref(q, k, v, causal=True)


def _reference_extend(q, k_cache, v_cache, cache_seqlens):
    return _one_sequence_at_a_time(attention_ref, q, k_cache, v_cache, cache_seqlens)


def _sdpa_prefill(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def _sdpa_extend(q, k_cache, v_cache, cache_seqlens):
    S, S_max = q.shape[2], k_cache.shape[2]
    # query i of sequence b sits at position cache_seqlens[b] − S + i
    q_pos = cache_seqlens[:, None].long() - S + torch.arange(S, device=q.device)   # (B, S)
    k_pos = torch.arange(S_max, device=q.device)                                   # (S_max,)
    visible = k_pos[None, None, :] <= q_pos[:, :, None]                            # (B, S, S_max)
    # Static shapes (the whole cache, masked): a decode step captures in a CUDA
    # graph, at the price of reading S_max keys rather than cache_seqlens[b].
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible[:, None],
                                          enable_gqa=k_cache.shape[1] != q.shape[1])


def _triton_prefill(q, k, v):
    from ..kernels import flash_attention   # imported on use: Triton is optional elsewhere

    return flash_attention(q, k, v, causal=True)


def _triton_extend(q, k_cache, v_cache, cache_seqlens):
    from ..kernels import flash_attention

    return _one_sequence_at_a_time(flash_attention, q, k_cache, v_cache, cache_seqlens)


def triton_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            cache_seqlens: torch.Tensor) -> torch.Tensor:
    """One decode step: q (B, H, 1, D) over k_cache, v_cache (B, H_kv, S_max, D), sequence
    ``b`` seeing its first ``cache_seqlens[b]`` keys (int32 (B,)). Returns (B, H, 1, D).
    ``infer_lib.kernels.decode_attention``: one launch for the whole batch."""
    from ..kernels import decode_attention

    return decode_attention(q[:, :, 0], k_cache, v_cache, cache_seqlens).unsqueeze(2)


#: backend name → its functions
BACKENDS: dict[str, AttentionBackend] = {
    "reference": AttentionBackend(_reference_prefill, _reference_extend, _reference_extend),
    "sdpa": AttentionBackend(_sdpa_prefill, _sdpa_extend, _sdpa_extend),
    "triton": AttentionBackend(_triton_prefill, _triton_extend, triton_decode_attention),
}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


# -- attention, block, transformer ------------------------------------------------------------


class Attention(nn.Module):
    """Causal self-attention with ``H`` query heads and ``H_kv`` key/value heads.

    x (B, S, d) → q (B, H, S, D), k, v (B, H_kv, S, D) → RoPE on q, k → attention
    (with a cache: k, v written at their positions first, then attended over the
    whole cache) → (B, S, H·D) → ``o_proj`` → (B, S, d)."""

    def __init__(self, config: ModelConfig, layer: int, backend: str = "sdpa"):
        super().__init__()
        self.layer = layer
        self.backend = check_backend(backend)
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d, H, H_kv, D = config.dim, config.n_heads, config.n_kv_heads, config.head_dim
        self.q_proj = nn.Linear(d, H * D, bias=False)
        self.k_proj = nn.Linear(d, H_kv * D, bias=False)
        self.v_proj = nn.Linear(d, H_kv * D, bias=False)
        self.o_proj = nn.Linear(H * D, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, cache=None, cache_seqlens: torch.Tensor | None = None):
        """x (B, S, d); cos, sin (B, S, D); positions (B, S) int64; with a ``KVCache``,
        ``cache_seqlens`` (B,) int32 its lengths after this step."""
        B, S, _ = x.shape
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, S, H, D).transpose(1, 2)        # (B, H, S, D)
        k = self.k_proj(x).view(B, S, H_kv, D).transpose(1, 2)     # (B, H_kv, S, D)
        v = self.v_proj(x).view(B, S, H_kv, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attn = BACKENDS[self.backend]
        if cache is None:
            out = attn.prefill(q, k, v)
        else:
            k_cache, v_cache = cache.update(self.layer, k, v, positions)   # (B, H_kv, S_max, D)
            step = attn.decode if S == 1 else attn.extend
            out = step(q, k_cache, v_cache, cache_seqlens)
        out = out.transpose(1, 2).reshape(B, S, H * D)              # (B, S, H·D)
        return self.o_proj(out)


class Block(nn.Module):
    """``h = x + Attention(RMSNorm(x))``; ``out = h + MLP(RMSNorm(h))``."""

    def __init__(self, config: ModelConfig, layer: int, backend: str = "sdpa"):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config, layer, backend)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, positions, cache=None, cache_seqlens=None):   # x (B, S, d)
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, cache, cache_seqlens)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    """Embedding → ``L`` blocks → RMSNorm → output head (``lm_head``, tied to the
    embedding when ``config.tie_embeddings``).

    ``model(tokens)`` maps tokens (B, S) int64 to logits (B, S, V), causal, at
    positions 0 … S − 1. ``model(tokens, cache)`` appends the tokens to each
    sequence of a ``KVCache`` (sequence ``b`` at positions ``cache.seqlens[b]``
    onwards, which may differ), attends over the cache and advances
    ``cache.seqlens`` by S. ``last_only=True`` computes the logits of the last
    position only, (B, 1, V): the output head of a long prompt is large
    (``S · V`` numbers) and generation needs only the last.

    Module names follow Hugging Face's ``LlamaForCausalLM`` (without its
    ``model.`` prefix), so the checkpoint names map one to one
    (``infer_lib.model.checkpoint``).
    """

    def __init__(self, config: ModelConfig, backend: str = "sdpa"):
        super().__init__()
        self.config = config
        # N(0, 1) as nn.Embedding initialises itself, but drawn with randn: its normal_ on the
        # meta device (where from_pretrained builds) imports torch._dynamo, ~10 s (torch 2.13)
        self.embed_tokens = nn.Embedding.from_pretrained(torch.randn(config.vocab_size, config.dim),
                                                         freeze=False)
        self.layers = nn.ModuleList(Block(config, i, backend) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.reset_rope()

    def reset_rope(self, device=None) -> None:
        """(Re)compute the RoPE tables on ``device`` (default: the embedding's): after
        loading weights onto a model built on the ``meta`` device."""
        device = self.embed_tokens.weight.device if device is None else device
        # computed on the CPU, then moved: the same tables on every device (GPU pow and
        # cos may round differently in the last bit)
        cos, sin = (t.to(device) for t in rope_tables(self.config, "cpu"))   # (max_seq_len, D) fp32
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def backend(self) -> str:
        return self.layers[0].self_attn.backend

    @backend.setter
    def backend(self, name: str) -> None:
        check_backend(name)
        for block in self.layers:
            block.self_attn.backend = name

    def forward(self, tokens: torch.Tensor, cache=None, last_only: bool = False) -> torch.Tensor:
        positions, cos, sin, cache_seqlens = self._inputs(tokens, cache)
        x = self.embed_tokens(tokens)                               # (B, S, d)
        for block in self.layers:
            x = block(x, cos, sin, positions, cache, cache_seqlens)
        if cache is not None:
            cache.seqlens.copy_(cache_seqlens)                      # in place: the cache's rows advance
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))                           # (B, S, V)

    def _inputs(self, tokens: torch.Tensor, cache=None):
        """Check ``tokens`` (B, S) and the cache; return ``positions`` (B, S) int64, the RoPE
        ``cos, sin`` (B, S, D) of those positions and ``cache_seqlens`` (B,) int32, the cache's
        lengths after this step (None without a cache). Shared with ``fast.FusedTransformer``."""
        if not isinstance(tokens, torch.Tensor):
            raise ValueError(f"tokens must be an integer tensor (B, S), got {type(tokens).__name__}")
        if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype.is_complex \
                or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor (B, S), got shape {tuple(tokens.shape)} "
                             f"of {tokens.dtype}")
        B, S = tokens.shape
        steps = torch.arange(S, device=tokens.device)
        if cache is None:
            if S > self.config.max_seq_len:
                raise ValueError(f"sequence of S={S} tokens is longer than the model's "
                                 f"max_seq_len={self.config.max_seq_len}")
            positions = steps.expand(B, S)                          # (B, S)
            cache_seqlens = None
        else:
            if cache.batch_size != B:
                raise ValueError(f"tokens have B={B} sequences but the cache holds {cache.batch_size}; "
                                 "use cache.select(rows) for a part of its batch")
            cache.check_room(S)                                     # a clear error, not an index error
            cache_seqlens = cache.seqlens + S                       # (B,) int32, after this step
            positions = cache.seqlens[:, None].long() + steps       # (B, S)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]   # (B, S, D)
        return positions, cos, sin, cache_seqlens
