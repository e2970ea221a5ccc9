"""Which part of every weight rank ``r`` of ``N`` holds: pure functions, no communication.

``check_shardable`` refuses a shape tensor parallelism cannot split (before any
collective is entered, so every rank raises the same ``ValueError`` and none waits);
``kv_heads_for_rank`` is the rule for key/value heads (``H_kv < N`` included);
``shard_config`` is the shape one rank holds (what its ``KVCache`` is built from);
``shard_state_dict`` cuts a full ``Transformer`` state dict into rank ``r``'s pieces.

Shapes are PyTorch's ``nn.Linear`` (``weight`` is ``(out, in)``): splitting a layer's
*columns* (its outputs) means slicing the weight's rows, splitting its *rows* (its
inputs) means slicing the weight's columns.
"""

from __future__ import annotations

import dataclasses

import torch

from ..model.config import ModelConfig

#: per layer: name → how it is split (Megatron's names: column = outputs, row = inputs)
COLUMN_Q = "q"            # q_proj: the rank's H/N query heads
COLUMN_KV = "kv"          # k_proj, v_proj: the rank's K/V heads (kv_heads_for_rank)
ROW_O = "o"               # o_proj: the inputs of the rank's query heads, then all-reduce
COLUMN_F = "f"            # gate_proj, up_proj: F/N hidden units
ROW_F = "down"            # down_proj: the same F/N inputs, then all-reduce
REPLICATED = "replicated"  # the norms
VOCAB = "vocab"           # embedding rows and output-head rows: V/N tokens

LAYER_PARTS = {
    "self_attn.q_proj.weight": COLUMN_Q,
    "self_attn.k_proj.weight": COLUMN_KV,
    "self_attn.v_proj.weight": COLUMN_KV,
    "self_attn.o_proj.weight": ROW_O,
    "mlp.gate_proj.weight": COLUMN_F,
    "mlp.up_proj.weight": COLUMN_F,
    "mlp.down_proj.weight": ROW_F,
    "input_layernorm.weight": REPLICATED,
    "post_attention_layernorm.weight": REPLICATED,
}


def _check_world(rank: int, world_size: int) -> None:
    for name, value, minimum in (("world_size", world_size, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"tensor parallelism: {name} must be an integer ≥ {minimum}, got {value!r}")
    if rank >= world_size:
        raise ValueError(f"tensor parallelism: rank {rank} is not below world_size {world_size}")


def check_shardable(config: ModelConfig, world_size: int) -> None:
    """Raise ``ValueError`` naming the first size ``N = world_size`` does not divide.

    ``N`` must divide ``H`` (each rank its ``H/N`` query heads), ``F`` (``F/N`` hidden
    units of the MLP) and ``V`` (``V/N`` rows of the embedding and the head); and either
    ``N`` divides ``H_kv`` (each rank ``H_kv/N`` K/V heads) or ``H_kv`` divides ``N``
    (each rank one K/V head, held by ``N/H_kv`` ranks). Nothing is padded."""
    _check_world(0, world_size)
    N = world_size
    H, H_kv, F, V = config.n_heads, config.n_kv_heads, config.ffn_dim, config.vocab_size
    if H % N:
        raise ValueError(f"tensor parallelism over N={N} ranks: n_heads={H} query heads do not divide into "
                         f"{N} equal groups (each rank computes H/N whole heads); use an N that divides {H}")
    if H_kv % N and N % H_kv:
        raise ValueError(f"tensor parallelism over N={N} ranks: n_kv_heads={H_kv} K/V heads neither split "
                         f"into {N} equal parts (N divides H_kv) nor each serve a whole number of ranks "
                         f"(H_kv divides N), so a rank's {H // N} query heads would need K/V heads shared "
                         "unevenly; use an N that divides H_kv or a multiple of it")
    if F % N:
        raise ValueError(f"tensor parallelism over N={N} ranks: ffn_dim={F} hidden units of the MLP do not "
                         f"divide into {N} equal parts; use an N that divides {F}")
    if V % N:
        raise ValueError(f"tensor parallelism over N={N} ranks: vocab_size={V} does not divide into {N} "
                         f"equal ranges of the embedding and the output head; use an N that divides {V} "
                         "(or pad the vocabulary to a multiple of N)")


def kv_heads_for_rank(config: ModelConfig, rank: int, world_size: int) -> range:
    """The global K/V heads rank ``r`` holds: the ones its query heads
    ``r·H/N … (r+1)·H/N − 1`` read (query head ``h`` reads K/V head ``h // (H/H_kv)``).

    * ``N`` divides ``H_kv``: heads ``r·H_kv/N … (r+1)·H_kv/N − 1`` (each held once);
    * ``H_kv`` divides ``N`` (``H_kv < N``): the one head ``r·H_kv // N``, replicated on the
      ``N/H_kv`` ranks whose query heads share it."""
    check_shardable(config, world_size)
    _check_world(rank, world_size)
    H_kv, N = config.n_kv_heads, world_size
    if H_kv % N == 0:
        per_rank = H_kv // N
        return range(rank * per_rank, (rank + 1) * per_rank)
    head = rank * H_kv // N
    return range(head, head + 1)


def shard_config(config: ModelConfig, world_size: int) -> ModelConfig:
    """The shape one rank holds: ``H/N`` query heads, ``max(H_kv/N, 1)`` K/V heads, ``F/N``
    hidden units; ``d``, ``D``, ``L``, ``V`` (the logits it returns are all ``V``) and the
    rest unchanged. Build the rank's ``KVCache`` from it."""
    check_shardable(config, world_size)
    N = world_size
    return dataclasses.replace(config, n_heads=config.n_heads // N, n_kv_heads=max(config.n_kv_heads // N, 1),
                               head_dim=config.head_dim, ffn_dim=config.ffn_dim // N)


def vocab_range(config: ModelConfig, rank: int, world_size: int) -> range:
    """The token ids whose embedding rows and logits rank ``r`` holds: ``r·V/N … (r+1)·V/N − 1``."""
    check_shardable(config, world_size)
    _check_world(rank, world_size)
    per_rank = config.vocab_size // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def expected_names(config: ModelConfig) -> list[str]:
    """The names of a full ``Transformer`` state dict (``lm_head.weight`` only when untied)."""
    names = ["embed_tokens.weight"]
    names += [f"layers.{i}.{part}" for i in range(config.n_layers) for part in LAYER_PARTS]
    names.append("norm.weight")
    if not config.tie_embeddings:
        names.append("lm_head.weight")
    return names


def full_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, D, F, V = config.dim, config.head_dim, config.ffn_dim, config.vocab_size
    H, H_kv = config.n_heads, config.n_kv_heads
    per_layer = {
        "self_attn.q_proj.weight": (H * D, d), "self_attn.k_proj.weight": (H_kv * D, d),
        "self_attn.v_proj.weight": (H_kv * D, d), "self_attn.o_proj.weight": (d, H * D),
        "mlp.gate_proj.weight": (F, d), "mlp.up_proj.weight": (F, d), "mlp.down_proj.weight": (d, F),
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    }
    shapes = {"embed_tokens.weight": (V, d), "norm.weight": (d,)}
    for i in range(config.n_layers):
        shapes.update({f"layers.{i}.{part}": shape for part, shape in per_layer.items()})
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, d)
    return shapes


def checked_state(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The tensors of a full ``Transformer`` state dict in ``expected_names`` order, after checking
    every name and shape; a tied ``lm_head.weight`` (``Transformer.state_dict()`` lists the
    shared matrix twice) is dropped. Raises ``ValueError`` naming what is missing, extra or
    the wrong shape."""
    names = expected_names(config)
    state = {k.removeprefix("model."): v for k, v in state_dict.items()}     # Hugging Face's prefix
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or extra:
        raise ValueError(f"state dict does not match the config: missing {missing[:6] or 'nothing'}, "
                         f"unexpected {extra[:6] or 'nothing'}")
    shapes = full_shapes(config)
    for name in names:
        if tuple(state[name].shape) != shapes[name]:
            raise ValueError(f"state dict: {name} has shape {tuple(state[name].shape)}, the config needs "
                             f"{shapes[name]}")
    return {name: state[name] for name in names}


def shard_tensor(name: str, tensor: torch.Tensor, config: ModelConfig, rank: int,
                 world_size: int) -> torch.Tensor:
    """Rank ``r``'s piece of the full tensor ``name`` (a view: ``clone`` it to free the rest)."""
    N, D = world_size, config.head_dim
    if name in ("embed_tokens.weight", "lm_head.weight"):
        rows = vocab_range(config, rank, N)
        return tensor[rows.start:rows.stop]                       # (V/N, d)
    if name == "norm.weight":
        return tensor
    part = LAYER_PARTS[name.split(".", 2)[2]]
    if part == REPLICATED:
        return tensor
    if part in (COLUMN_Q, ROW_O):
        Hl = config.n_heads // N
        cols = slice(rank * Hl * D, (rank + 1) * Hl * D)          # the rank's query heads
        return tensor[cols] if part == COLUMN_Q else tensor[:, cols]
    if part == COLUMN_KV:
        heads = kv_heads_for_rank(config, rank, N)
        return tensor[heads.start * D:heads.stop * D]              # (H_kv_local·D, d)
    Fl = config.ffn_dim // N
    units = slice(rank * Fl, (rank + 1) * Fl)
    return tensor[units] if part == COLUMN_F else tensor[:, units]


def shard_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig, rank: int,
                     world_size: int) -> dict[str, torch.Tensor]:
    """Rank ``r`` of ``N``'s pieces of a full ``Transformer`` state dict (names without
    Hugging Face's ``model.`` prefix; a tied head has no ``lm_head.weight``). Each piece is a
    contiguous copy, so the full tensors can be freed afterwards."""
    check_shardable(config, world_size)
    _check_world(rank, world_size)
    return {name: shard_tensor(name, t, config, rank, world_size).clone(memory_format=torch.contiguous_format)
            for name, t in checked_state(state_dict, config).items()}
