"""``TensorParallelTransformer``: rank ``r``'s shard of a ``Transformer``, with the
collectives that make its outputs the whole model's (the scheme: ``infer_lib.parallel``).

The blocks are the model's own ``layers.Block`` built with the rank's shape
(``sharding.shard_config``), whose two row-parallel projections (``o_proj``, ``down_proj``)
are ``RowParallelLinear``: a matmul over the rank's inputs, then an all-reduce. Nothing in
``infer_lib.model`` is changed; ``prefill``, ``decode_one_token`` and ``generate`` take this
model as they take a ``Transformer`` (they call ``model(tokens, cache, last_only)``, build a
``KVCache`` from ``model.config`` — the rank's shape, so the cache holds only its K/V
heads — and read ``model.embed_tokens.weight`` for the device and dtype).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..model.config import ModelConfig
from ..model.layers import Block, RMSNorm, Transformer, check_backend, rope_tables
from . import sharding
from .distributed import check_replicas, rank_info


class RowParallelLinear(nn.Module):
    """``y = all_reduce(x_r · W_rᵀ)``: the rank's slice ``W_r`` (d_out, d_in/N) of a linear
    layer's inputs, applied to the rank's slice ``x_r`` of its input, summed over the ranks.
    The sum is the full ``x · Wᵀ`` (split into N partial sums, so rounded differently)."""

    def __init__(self, in_features: int, out_features: int, group=None):
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)                     # (B, S, d) partial sum
        dist.all_reduce(y, group=self.group)             # B·S·d numbers, every rank gets the sum
        return y


class VocabParallelEmbedding(nn.Module):
    """Rows ``vocab_start … vocab_start + V/N − 1`` of the embedding. A token in that range
    is looked up, any other gives zeros; the all-reduce sums the one rank that holds each
    token with ``N − 1`` zeros, so the result is exactly the full lookup."""

    def __init__(self, weight: torch.Tensor, vocab_start: int, group=None):
        super().__init__()
        self.group = group
        self.vocab_start = vocab_start
        self.weight = nn.Parameter(weight, requires_grad=False)     # (V/N, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:       # (B, S) → (B, S, d)
        local = tokens - self.vocab_start
        inside = (local >= 0) & (local < self.weight.shape[0])
        x = F.embedding(torch.where(inside, local, 0), self.weight)
        x = torch.where(inside[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        dist.all_reduce(x, group=self.group)
        return x


class VocabParallelHead(nn.Module):
    """The output head's rows for the rank's vocabulary range: logits ``(B, S, V/N)``, then an
    all-gather along the vocabulary so every rank returns the full ``(B, S, V)``. Each logit
    is one dot product computed on one rank, so nothing is summed across ranks."""

    def __init__(self, weight: nn.Parameter | torch.Tensor, group=None):
        super().__init__()
        self.group = group
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:             # (B, S, d) → (B, S, V)
        local = F.linear(x, self.weight).contiguous()               # (B, S, V/N)
        pieces = [torch.empty_like(local) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(pieces, local, group=self.group)
        return torch.cat(pieces, dim=-1)


class TensorParallelTransformer(nn.Module):
    """Rank ``r``'s shard of a ``Transformer``; ``forward(tokens, cache=None, last_only=False)``
    has ``Transformer.forward``'s contract and returns the full logits ``(B, S, V)`` on every
    rank. Every rank of ``group`` must construct it at the same time (it communicates).

    ``source``: a ``Transformer`` (its weights and attention backend are used; it is not
    changed) or a full state dict (``Transformer.state_dict()`` names, Hugging Face's
    ``model.`` prefix accepted) with its ``config``. Every rank passes the whole model; this
    rank keeps its pieces (``sharding.shard_state_dict``) on ``rank_info().device`` (``cuda:
    LOCAL_RANK`` under NCCL, the CPU under gloo).

    Checks, in this order: ``ValueError`` if ``N`` does not divide what it must
    (``sharding.check_shardable``), before any communication; then, unless
    ``check=False``, ``RuntimeError`` on every rank if the ranks hold different configs or
    weights (``distributed.check_replicas``: names the field or the tensors).

    ``config`` is the rank's shape (``sharding.shard_config``: ``H/N`` query heads,
    ``max(H_kv/N, 1)`` K/V heads, ``F/N`` hidden units, the full ``V``): ``KVCache(model.config,
    ...)`` holds only this rank's K/V heads, which is what ``generate`` allocates.
    ``full_config`` is the whole model's. Inference only: no parameter requires grad.
    """

    def __init__(self, source, config: ModelConfig | None = None, *, group=None, backend: str | None = None,
                 check: bool = True):
        super().__init__()
        info = rank_info(group)
        rank, N = info.rank, info.world_size
        if isinstance(source, nn.Module):
            if config is not None and config != source.config:
                raise ValueError("config differs from the model's own config; pass only the model")
            config = source.config
            backend = source.backend if backend is None else backend
            state = source.state_dict()
        elif isinstance(source, dict):
            if not isinstance(config, ModelConfig):
                raise ValueError("a state dict needs its ModelConfig: TensorParallelTransformer(state, config)")
            state = dict(source)
        else:
            raise ValueError(f"source must be a Transformer or a state dict, got {type(source).__name__}")
        backend = check_backend("sdpa" if backend is None else backend)
        sharding.check_shardable(config, N)              # before any collective: every rank raises alike
        state = {k.removeprefix("model."): v for k, v in state.items()}
        if config.tie_embeddings:
            state.pop("lm_head.weight", None)            # the embedding's matrix, listed twice
        if check:
            check_replicas(config, state, group, info.device)
        shards = sharding.shard_state_dict(state, config, rank, N)
        del state

        local = sharding.shard_config(config, N)
        self.full_config, self.config = config, local
        self.group, self.rank, self.world_size, self.device = group, rank, N, info.device
        self.kv_heads = sharding.kv_heads_for_rank(config, rank, N)     # global K/V heads held here
        self.vocab_range = sharding.vocab_range(config, rank, N)

        def take(name):
            return shards.pop(name).to(info.device)

        self.embed_tokens = VocabParallelEmbedding(take("embed_tokens.weight"), self.vocab_range.start, group)
        blocks = []
        for i in range(config.n_layers):
            with torch.device("meta"):                   # shapes only: the shards are assigned below
                block = Block(local, i, backend)
                attn, mlp = block.self_attn, block.mlp
                attn.o_proj = RowParallelLinear(attn.o_proj.in_features, attn.o_proj.out_features, group)
                mlp.down_proj = RowParallelLinear(mlp.down_proj.in_features, mlp.down_proj.out_features, group)
            prefix = f"layers.{i}."
            block.load_state_dict({k: take(prefix + k) for k in sharding.LAYER_PARTS}, assign=True)
            blocks.append(block)
        self.layers = nn.ModuleList(blocks)
        self.norm = RMSNorm(config.dim, config.norm_eps).to(info.device)
        self.norm.weight = nn.Parameter(take("norm.weight"))
        if config.tie_embeddings:
            self.lm_head = VocabParallelHead(self.embed_tokens.weight, group)     # tied: the same Parameter
        else:
            self.lm_head = VocabParallelHead(take("lm_head.weight"), group)
        cos, sin = (t.to(info.device) for t in rope_tables(config, "cpu"))     # as Transformer: CPU tables
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.requires_grad_(False)
        self.eval()

    # The single-device model's own steps: embed, the blocks, the norm and the head; here
    # the layers communicate (the embedding and each block all-reduce, the head all-gathers),
    # so every rank must call forward with the same tokens.
    backend = Transformer.backend
    forward = Transformer.forward

    def _inputs(self, tokens: torch.Tensor, cache=None):
        """``Transformer._inputs``, plus two checks a shard needs: token ids within the
        vocabulary (a vocabulary-parallel embedding would give an out-of-range id zeros, not an
        error) and a cache of this rank's K/V heads."""
        out = Transformer._inputs(self, tokens, cache)
        capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
        if not capturing and tokens.numel():                        # one host sync; not in a CUDA graph
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got {lo} … {hi}")
        if cache is not None and cache.k_cache.shape[2] != self.config.n_kv_heads:
            raise ValueError(f"the cache holds {cache.k_cache.shape[2]} K/V heads but rank {self.rank} "
                             f"holds {self.config.n_kv_heads}: build it from the shard's config, "
                             "KVCache(model.config, ...), not the full model's")
        return out
