"""The shape of a Llama-style decoder: ``ModelConfig`` and named presets.

One vocabulary: ``d`` model dim, ``H`` query heads, ``H_kv`` key/value heads
(``H_kv = H`` is multi-head attention, ``1 < H_kv < H`` grouped-query, ``H_kv = 1``
multi-query), ``D`` head dim, ``L`` layers, ``V`` vocabulary, ``F`` the hidden dim
of the SwiGLU MLP.

Parameters per layer (no biases, as in every Llama)::

    attention   d·H·D (q) + 2·d·H_kv·D (k, v) + H·D·d (o)
    MLP         3·d·F     (gate, up, down)
    two RMSNorm 2·d

plus the embedding ``V·d``, the final norm ``d`` and, when not tied to the
embedding, the output head ``V·d``. The KV cache holds one key and one value of
``H_kv · D`` numbers per layer and token: ``2 · L · H_kv · D · bytes`` per token.

The presets of public models give the shapes of the configuration each model
publishes (the Hugging Face ``config.json`` cited beside it); the tiny ones are
for CPU tests and keep every feature of the real ones (GQA, tied or untied
heads, Llama-3 RoPE scaling) at sizes the CPU runs in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch


def _check_int(owner: str, name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer ≥ {minimum}, got {value!r}")


def _check_float(owner: str, name: str, value, *, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise ValueError(f"{owner}: {name} must be a finite positive number, got {value!r}")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3's RoPE frequency scaling ("rope_type": "llama3" in Hugging Face configs).

    A rotary frequency ``f`` has wavelength ``λ = 2π / f`` (in tokens). With the
    context the model was pre-trained on ``C = original_max_position_embeddings``:

    * ``λ < C / high_freq_factor`` (high frequencies): unchanged;
    * ``λ > C / low_freq_factor`` (low frequencies): divided by ``factor``;
    * in between: ``(1 − s) · f / factor + s · f`` with
      ``s = (C / λ − low_freq_factor) / (high_freq_factor − low_freq_factor)``.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self):
        owner = "RopeScaling"
        _check_float(owner, "factor", self.factor)
        _check_float(owner, "low_freq_factor", self.low_freq_factor)
        _check_float(owner, "high_freq_factor", self.high_freq_factor)
        _check_int(owner, "original_max_position_embeddings", self.original_max_position_embeddings)
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"{owner}: high_freq_factor={self.high_freq_factor} must be larger than "
                             f"low_freq_factor={self.low_freq_factor} (the smooth band between them "
                             "divides by their difference)")


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-style decoder's shape. ``head_dim`` defaults to ``dim // n_heads`` and
    ``n_kv_heads`` to ``n_heads``; everything is checked on construction, and a bad
    value raises ``ValueError`` naming it.

    ``dataclasses.replace(config, n_layers=2)`` makes a variant (checked again).
    """

    vocab_size: int                 # V
    dim: int                        # d
    n_layers: int                   # L
    n_heads: int                    # H
    ffn_dim: int                    # F, the SwiGLU hidden dim
    n_kv_heads: int | None = None   # H_kv (None: = H)
    head_dim: int | None = None     # D (None: d // H)
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048         # the longest sequence: positions 0 … max_seq_len − 1
    tie_embeddings: bool = False    # output head shares the embedding matrix

    def __post_init__(self):
        owner = "ModelConfig"
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "max_seq_len"):
            _check_int(owner, name, getattr(self, name))
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        _check_int(owner, "n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"{owner}: n_heads={self.n_heads} query heads is not a multiple of "
                             f"n_kv_heads={self.n_kv_heads} key/value heads (each KV head serves "
                             "H / H_kv query heads)")
        if self.head_dim is None:
            if self.dim % self.n_heads != 0:
                raise ValueError(f"{owner}: dim={self.dim} is not a multiple of n_heads={self.n_heads}, "
                                 "so head_dim = dim / n_heads is not an integer; give head_dim explicitly")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        _check_int(owner, "head_dim", self.head_dim)
        if self.head_dim % 2 != 0:
            raise ValueError(f"{owner}: head_dim={self.head_dim} must be even (RoPE rotates pairs of "
                             "dimensions)")
        _check_float(owner, "norm_eps", self.norm_eps)
        _check_float(owner, "rope_theta", self.rope_theta)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"{owner}: rope_scaling must be None, a RopeScaling or a dict of its "
                             f"fields, got {self.rope_scaling!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"{owner}: tie_embeddings must be True or False, got {self.tie_embeddings!r}")

    # -- arithmetic -------------------------------------------------------------------------

    def num_params(self, include_embedding: bool = True) -> int:
        """Number of parameters (module docstring). ``include_embedding=False`` leaves out
        the input embedding ``V·d`` (an untied output head stays counted)."""
        d, D, F, V = self.dim, self.head_dim, self.ffn_dim, self.vocab_size
        H, H_kv = self.n_heads, self.n_kv_heads
        attention = d * H * D + 2 * d * H_kv * D + H * D * d
        per_layer = attention + 3 * d * F + 2 * d
        embedding = V * d if include_embedding else 0
        head = 0 if self.tie_embeddings else V * d
        return embedding + self.n_layers * per_layer + d + head

    def kv_cache_bytes_per_token(self, dtype: torch.dtype | int = torch.bfloat16) -> int:
        """``2 · L · H_kv · D · bytes``: one key and one value per layer and token.
        ``dtype`` is the cache's dtype, or its size in bytes."""
        nbytes = dtype if isinstance(dtype, int) else torch.empty((), dtype=dtype).element_size()
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * nbytes

    @classmethod
    def from_preset(cls, name: str, **overrides) -> ModelConfig:
        """A preset by name (``PRESETS``), optionally with fields replaced."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; the presets are {', '.join(sorted(PRESETS))}")
        return dataclasses.replace(PRESETS[name], **overrides)


#: Llama-3's scaling as Llama 3.1 and 3.2 ship it (factor 8 for 3.1, 32 for 3.2 1B/3B)
_LLAMA_3_2_ROPE = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)

#: Llama-3 scaling for the tiny models: with θ = 500 000 and D = 16 a pre-training context of
#: 64 puts their 8 frequencies in all three bands (wavelengths 6, 32, then 167 and up)
_TINY_ROPE = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                         original_max_position_embeddings=64)

# Tiny models for the CPU: every feature of the real ones, a few layers, d = 64, D = 16.
TINY = ModelConfig(       # Llama-3.2-1B in miniature: GQA, tied head, Llama-3 RoPE scaling
    vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160,
    rope_theta=500_000.0, rope_scaling=_TINY_ROPE, max_seq_len=256, tie_embeddings=True)
TINY_MHA = ModelConfig(   # Llama-2-7B in miniature: multi-head, untied head, plain RoPE
    vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=160,
    rope_theta=10_000.0, max_seq_len=256, tie_embeddings=False)
TINY_MQA = ModelConfig(   # odd sizes, one KV head, untied head, Llama-3 RoPE scaling
    vocab_size=97, dim=64, n_layers=3, n_heads=4, n_kv_heads=1, ffn_dim=88, norm_eps=1e-6,
    rope_theta=500_000.0, rope_scaling=_TINY_ROPE, max_seq_len=256, tie_embeddings=False)

# The course's own model, trained on the stdlib corpus (infer_lib.model.train; nothing is
# downloaded): multi-head, byte-level (V = 256), 5.2 M parameters, a few minutes on one GPU.
# The MQA/GQA chapter trains it again with n_kv_heads < n_heads to measure what sharing costs.
COURSE_MHA = ModelConfig(
    vocab_size=256, dim=256, n_layers=6, n_heads=8, n_kv_heads=8, head_dim=32, ffn_dim=768,
    rope_theta=10_000.0, max_seq_len=512, tie_embeddings=True)

# Public checkpoints: the shapes of each model's Hugging Face config.json.
# https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json
SMOLLM2_135M = ModelConfig(
    vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
    norm_eps=1e-5, rope_theta=100_000.0, max_seq_len=8192, tie_embeddings=True)
# https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json
LLAMA_3_2_1B = ModelConfig(
    vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, ffn_dim=8192,
    norm_eps=1e-5, rope_theta=500_000.0, rope_scaling=_LLAMA_3_2_ROPE, max_seq_len=131072,
    tie_embeddings=True)
# https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json
LLAMA_2_7B = ModelConfig(
    vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
    norm_eps=1e-5, rope_theta=10_000.0, max_seq_len=4096, tie_embeddings=False)
# https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json
LLAMA_3_8B = ModelConfig(
    vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
    norm_eps=1e-5, rope_theta=500_000.0, max_seq_len=8192, tie_embeddings=False)
# https://huggingface.co/meta-llama/Meta-Llama-3-70B/blob/main/config.json
LLAMA_3_70B = ModelConfig(
    vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
    norm_eps=1e-5, rope_theta=500_000.0, max_seq_len=8192, tie_embeddings=False)

#: every preset by name; ``ModelConfig.from_preset(name)``
PRESETS: dict[str, ModelConfig] = {
    "tiny": TINY,
    "tiny-mha": TINY_MHA,
    "tiny-mqa": TINY_MQA,
    "course-mha": COURSE_MHA,
    "smollm2-135m": SMOLLM2_135M,
    "llama-3.2-1b": LLAMA_3_2_1B,
    "llama-2-7b": LLAMA_2_7B,
    "llama-3-8b": LLAMA_3_8B,
    "llama-3-70b": LLAMA_3_70B,
}
