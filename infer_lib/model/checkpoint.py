"""Hugging Face Llama checkpoints: ``from_pretrained`` reads them, ``save_pretrained`` writes them.

A checkpoint directory holds

* ``config.json`` — the shape (``hidden_size``, ``num_attention_heads``, …,
  ``rope_theta`` and ``rope_scaling``; ``config_from_hf`` maps it to a
  ``ModelConfig``; the newer ``rope_parameters`` spelling is read too);
* the weights in safetensors files (https://github.com/huggingface/safetensors):
  one ``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` with
  ``model.safetensors.index.json`` mapping every tensor name to its shard.

Tensor names are Hugging Face's: ``model.embed_tokens.weight``,
``model.layers.N.self_attn.{q,k,v,o}_proj.weight``,
``model.layers.N.mlp.{gate,up,down}_proj.weight``,
``model.layers.N.{input,post_attention}_layernorm.weight``,
``model.norm.weight`` and, when the head is not tied to the embedding,
``lm_head.weight``. ``Transformer`` names its modules the same way without the
``model.`` prefix, so the mapping is that prefix (``hf_name``). Hugging Face
stores ``q_proj``/``k_proj`` rows in the order its ``rotate_half`` RoPE expects,
which is the convention of ``layers.apply_rope``: no permutation is needed.

Loading builds the model on the ``meta`` device (no memory, no random init),
checks every tensor's name and shape against it before reading any data, then
assigns the tensors read from disk in the requested dtype and device.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig, RopeScaling
from .layers import Transformer

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _listing(names, limit: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# -- config.json ------------------------------------------------------------------------------


def config_from_hf(hf: dict, source: str = CONFIG_FILE) -> ModelConfig:
    """A ``ModelConfig`` from a Hugging Face Llama ``config.json`` (as a dict).

    Refuses what this model does not implement (biases, another activation,
    another RoPE scaling type) rather than computing something else."""
    def fail(msg):
        raise ValueError(f"{source}: {msg}")

    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
        fail(f"model_type is {model_type!r}; only Llama-layout checkpoints (model_type 'llama') load here")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in hf:
            fail(f"has no {key!r}, which a Llama config must give")
    if hf.get("hidden_act", "silu") != "silu":
        fail(f"hidden_act is {hf['hidden_act']!r}; the Llama MLP here is SwiGLU ('silu')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key, False):
            fail(f"{key} is true; this model has no biases")

    # transformers < 5 writes rope_theta and rope_scaling; 5 writes rope_parameters
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
    scaling = hf.get("rope_scaling") or params
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        rope_scaling = None
    elif rope_type == "llama3":
        try:
            rope_scaling = RopeScaling(**{k: scaling[k] for k in (
                "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")})
        except KeyError as err:
            fail(f"rope_scaling of type 'llama3' has no {err.args[0]!r}")
        except ValueError as err:
            fail(f"rope_scaling: {err}")
    else:
        fail(f"rope_scaling type {rope_type!r} is not supported (only 'llama3', or none)")
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"], ffn_dim=hf["intermediate_size"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"), norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta,
            rope_scaling=rope_scaling, max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    except ValueError as err:
        fail(str(err))


def config_to_hf(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The Hugging Face ``config.json`` of ``config`` (the ``rope_theta``/``rope_scaling``
    spelling, which every transformers version reads)."""
    s = config.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if s is None else {
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings},
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# -- tensor names -----------------------------------------------------------------------------


def hf_name(name: str) -> str:
    """Our parameter name → Hugging Face's: ``layers.0.mlp.up_proj.weight`` →
    ``model.layers.0.mlp.up_proj.weight``; ``lm_head.weight`` stays."""
    return name if name.startswith("lm_head.") else "model." + name


def _expected_shapes(model: Transformer) -> dict[str, tuple[int, ...]]:
    """Hugging Face name → shape of every tensor a checkpoint of ``model`` holds
    (no ``lm_head.weight`` when it is tied to the embedding)."""
    shapes = {hf_name(n): tuple(t.shape) for n, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        del shapes["lm_head.weight"]
    return shapes


def _ignored(name: str, config: ModelConfig) -> bool:
    # Older checkpoints store RoPE's inverse frequencies (computed here instead); some
    # tied ones store the head anyway, equal to the embedding.
    return name.endswith("rotary_emb.inv_freq") or (config.tie_embeddings and name == "lm_head.weight")


# -- loading ----------------------------------------------------------------------------------


def _weight_files(path: Path) -> dict[Path, list[str] | None]:
    """Each safetensors file to read → the tensor names it must hold (None: all it has)."""
    index = path / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' (tensor name → shard file)")
        files: dict[Path, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(path / file, []).append(name)
        for file in files:
            if not file.exists():
                raise FileNotFoundError(f"{index} lists the shard {file.name}, which is not in {path}")
        return files
    if (path / SINGLE_FILE).exists():
        return {path / SINGLE_FILE: None}
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no *.safetensors weights in {path} (PyTorch .bin checkpoints are not "
                                "read here: convert them to safetensors)")
    return {f: None for f in found}


def from_pretrained(path, dtype: torch.dtype = torch.float32, device=None,
                    backend: str = "sdpa") -> Transformer:
    """Load a Hugging Face Llama checkpoint directory into a ``Transformer``.

    Tensors are cast to ``dtype`` and placed on ``device`` (default: the CPU). The
    model comes back in eval mode without gradients (an inference model). Raises
    ``FileNotFoundError`` for missing files and ``ValueError`` naming every missing,
    misshaped or unexpected tensor."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}: a checkpoint directory holds config.json "
                                "and *.safetensors")
    config = config_from_hf(json.loads(config_file.read_text()), source=str(config_file))
    device = torch.device("cpu" if device is None else device)
    with torch.device("meta"):                    # shapes only: nothing allocated or initialised
        model = Transformer(config, backend=backend)
    expected = _expected_shapes(model)

    tensors, misshaped, unexpected = {}, {}, []
    for file, names in _weight_files(path).items():
        with safe_open(file, framework="pt", device="cpu") as f:
            present = set(f.keys())
            if names is not None:
                absent = [n for n in names if n not in present]
                if absent:
                    raise ValueError(f"{path / INDEX_FILE} places {_listing(absent)} in {file.name}, "
                                     "which does not hold them")
            for name in (names if names is not None else sorted(present)):
                if name not in expected:
                    if not _ignored(name, config):
                        unexpected.append(name)
                    continue
                shape = tuple(f.get_slice(name).get_shape())       # read from the header only
                if shape != expected[name]:
                    misshaped[name] = f"{name} has shape {shape}, expected {expected[name]}"
                    continue
                tensors[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    problems = []
    missing = set(expected) - set(tensors) - set(misshaped)
    if missing:
        problems.append(f"missing tensors: {_listing(missing)}")
    if misshaped:
        problems.append("wrong shapes: " + "; ".join(misshaped[n] for n in sorted(misshaped)))
    if unexpected:
        problems.append(f"unexpected tensors (not part of a Llama model): {_listing(unexpected)}")
    if problems:
        raise ValueError(f"checkpoint {path} does not fit its config.json "
                         f"(d={config.dim}, L={config.n_layers}, H={config.n_heads}, "
                         f"H_kv={config.n_kv_heads}, V={config.vocab_size}): " + "; ".join(problems))

    state = {n: tensors[hf_name(n)] for n in model.state_dict() if hf_name(n) in tensors}
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight      # one tensor again, not two
    model.reset_rope(device)
    return model.eval().requires_grad_(False)


# -- saving -----------------------------------------------------------------------------------


def save_pretrained(model: Transformer, path, max_shard_bytes: int | None = None,
                    dtype: torch.dtype | None = None) -> None:
    """Write ``model`` as a Hugging Face Llama checkpoint: ``config.json`` and
    ``model.safetensors``, or shards of at most ``max_shard_bytes`` each (a tensor
    larger than that gets a shard of its own) with ``model.safetensors.index.json``.

    ``dtype``: the floating-point dtype the tensors are written in (default: the model's
    own), e.g. ``torch.bfloat16`` for half the bytes of fp32 weights; ``config.json``'s
    ``torch_dtype`` says which. The model itself is not changed.

    Weight files a previous save left in ``path`` under these names are removed
    first, so a directory never mixes two saves."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"save_pretrained: dtype must be a floating-point torch.dtype "
                         f"(torch.float32, torch.bfloat16, …), got {dtype!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in [path / INDEX_FILE, path / SINGLE_FILE, *path.glob("model-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)
    config = model.config
    state = {}
    for n, t in model.state_dict().items():
        cast = dtype is not None and t.is_floating_point()
        t = t.detach().to("cpu", dtype) if cast else t.detach().cpu()
        state[hf_name(n)] = t.contiguous()
    if config.tie_embeddings:
        del state["lm_head.weight"]              # the embedding; safetensors refuses shared tensors
    dtype = model.embed_tokens.weight.dtype if dtype is None else dtype
    (path / CONFIG_FILE).write_text(json.dumps(config_to_hf(config, dtype), indent=2) + "\n")
    metadata = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in state.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(state, path / SINGLE_FILE, metadata=metadata)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, path / file, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


__all__ = ["config_from_hf", "config_to_hf", "from_pretrained", "hf_name", "save_pretrained"]
