"""Checkpoints: save_pretrained → from_pretrained round trips (single file and shards,
tied and untied), config.json in both transformers spellings, and clear errors for
missing, misshaped or unexpected tensors and unsupported configs."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import random_model
from infer_lib import device

from infer_lib.model import PRESETS, ModelConfig, Transformer, config_from_hf, config_to_hf, save_pretrained
from infer_lib.model import from_pretrained as _from_pretrained

DEV = device.DEVICE


def from_pretrained(path, **kwargs):
    return _from_pretrained(path, device=DEV, **kwargs)


pytestmark = pytest.mark.usefixtures("tensors_on_the_gpu_if_any")


def assert_same_weights(a: Transformer, b: Transformer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for n in sa:
        assert torch.equal(sa[n], sb[n].to(sa[n].dtype)), n


@pytest.mark.parametrize("name", ["tiny", "tiny-mqa"])
def test_round_trip(tmp_path, name):
    model = random_model(name)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.norm.weight" in names
    assert ("lm_head.weight" in names) == (not model.config.tie_embeddings)   # tied: not stored
    loaded = from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert_same_weights(model, loaded)
    assert (loaded.lm_head.weight is loaded.embed_tokens.weight) == model.config.tie_embeddings
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)


def test_sharded_round_trip(tmp_path):
    model = random_model("tiny-mha")
    save_pretrained(model, tmp_path, max_shard_bytes=40_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert_same_weights(model, from_pretrained(tmp_path))
    # saving again unsharded leaves no stale shard or index behind
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_weights(model, from_pretrained(tmp_path))


def test_dtype_and_backend(tmp_path):
    model = random_model("tiny")
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, dtype=torch.bfloat16, backend="reference")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.backend == "reference"
    assert loaded.rope_cos.dtype == torch.float32 and loaded.rope_cos.device.type == DEV.type
    assert loaded(torch.tensor([[1, 2, 3]])).dtype == torch.bfloat16


def _rewrite(path, change):
    """Apply ``change`` to the checkpoint's tensors (a dict) and write them back."""
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    save_pretrained(random_model("tiny"), tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        from_pretrained(tmp_path)


def test_missing_untied_head_is_named(tmp_path):
    save_pretrained(random_model("tiny-mha"), tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing tensors: lm_head\.weight"):
        from_pretrained(tmp_path)


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path):
    save_pretrained(random_model("tiny"), tmp_path)     # H_kv·D = 32 rows of k_proj

    def change(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.randn(64, 64, device="cpu")
    _rewrite(tmp_path, change)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight has shape "
                                         r"\(64, 64\), expected \(32, 64\)"):
        from_pretrained(tmp_path)


def test_unexpected_tensor_is_named_and_known_extras_are_ignored(tmp_path):
    model = random_model("tiny")
    save_pretrained(model, tmp_path)

    def extras(t):   # what older or tied checkpoints carry: ignored
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.randn(8, device="cpu")
        t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    _rewrite(tmp_path, extras)
    assert_same_weights(model, from_pretrained(tmp_path))

    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.randn(64, device="cpu")}))
    with pytest.raises(ValueError, match=r"unexpected tensors .*model\.layers\.0\.self_attn\.q_proj\.bias"):
        from_pretrained(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)
    save_pretrained(random_model("tiny"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights"):
        from_pretrained(tmp_path)


def test_index_naming_a_missing_shard(tmp_path):
    save_pretrained(random_model("tiny"), tmp_path, max_shard_bytes=40_000)
    shard = sorted(tmp_path.glob("model-*-of-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"lists the shard {shard.name}"):
        from_pretrained(tmp_path)


def test_config_round_trips_through_hf_dict():
    for config in PRESETS.values():
        assert config_from_hf(config_to_hf(config)) == config


def test_config_reads_the_rope_parameters_spelling():
    # transformers 5 writes rope_theta inside rope_parameters
    hf = config_to_hf(PRESETS["tiny"])
    scaling = hf.pop("rope_scaling")
    hf["rope_parameters"] = {**scaling, "rope_theta": hf.pop("rope_theta")}
    assert config_from_hf(hf) == PRESETS["tiny"]
    hf = config_to_hf(PRESETS["tiny-mha"])
    del hf["rope_scaling"]
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": hf.pop("rope_theta")}
    assert config_from_hf(hf) == PRESETS["tiny-mha"]


@pytest.mark.parametrize("change, match", [
    (dict(model_type="qwen2"), "model_type is 'qwen2'"),
    (dict(hidden_act="gelu"), "hidden_act is 'gelu'"),
    (dict(attention_bias=True), "attention_bias is true"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn' is not supported"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "has no 'low_freq_factor'"),
    (dict(num_key_value_heads=3), "n_heads=4 query heads is not a multiple of n_kv_heads=3"),
    (dict(hidden_size=0), "dim must be an integer ≥ 1"),
])
def test_bad_config_json_is_refused(tmp_path, change, match):
    save_pretrained(random_model("tiny"), tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(ValueError, match=match):
        from_pretrained(tmp_path)


def test_config_json_without_a_required_key(tmp_path):
    hf = config_to_hf(PRESETS["tiny"])
    del hf["intermediate_size"]
    with pytest.raises(ValueError, match="has no 'intermediate_size'"):
        config_from_hf(hf)
    assert isinstance(config_from_hf(config_to_hf(PRESETS["tiny"])), ModelConfig)
