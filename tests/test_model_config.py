"""ModelConfig: validation with errors that name the problem, presets with their public
models' parameter counts, and the KV-cache arithmetic against a real cache."""

import dataclasses

import pytest
import torch

from infer_lib.model import PRESETS, KVCache, ModelConfig, RopeScaling, Transformer

#: published sizes of the public models (their model cards round them)
PUBLISHED_PARAMS = {
    "smollm2-135m": 1.35e8,
    "llama-3.2-1b": 1.24e9,
    "llama-2-7b": 6.74e9,
    "llama-3-8b": 8.03e9,
    "llama-3-70b": 70.6e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_presets_have_the_parameter_count_of_their_public_model(name):
    n = ModelConfig.from_preset(name).num_params()
    assert abs(n - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] < 0.01, f"{name}: {n:.4g}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_num_params_counts_the_parameters_of_the_built_model(name):
    config = PRESETS[name]
    with torch.device("meta"):              # shapes only: even Llama-3-70B costs nothing
        model = Transformer(config)
    assert config.num_params() == sum(p.numel() for p in model.parameters())   # tied counted once
    embedding = model.embed_tokens.weight.numel()
    assert config.num_params(include_embedding=False) == config.num_params() - embedding


def test_tied_head_is_one_tensor():
    model = Transformer(PRESETS["tiny"])
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = Transformer(PRESETS["tiny-mha"])
    assert untied.lm_head.weight is not untied.embed_tokens.weight


@pytest.mark.parametrize("name", ["tiny", "tiny-mqa", "llama-3-8b"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_bytes_per_token_is_what_a_cache_holds(name, dtype):
    config = PRESETS[name]
    S_max = 8
    cache = KVCache(config, batch_size=3, max_seq_len=S_max, dtype=dtype, device="meta")
    assert cache.nbytes() == 3 * S_max * config.kv_cache_bytes_per_token(dtype)
    assert config.kv_cache_bytes_per_token(dtype) == config.kv_cache_bytes_per_token(cache.k_cache.element_size())


def test_llama_3_8b_kv_cache_is_128_kib_per_token_in_bf16():
    # 2 (K and V) · 32 layers · 8 KV heads · 128 dims · 2 bytes
    assert PRESETS["llama-3-8b"].kv_cache_bytes_per_token(torch.bfloat16) == 128 * 1024


def test_defaults_are_derived():
    c = ModelConfig(vocab_size=10, dim=48, n_layers=1, n_heads=6, ffn_dim=8)
    assert c.head_dim == 8 and c.n_kv_heads == 6 and c.rope_scaling is None
    c = ModelConfig(vocab_size=10, dim=48, n_layers=1, n_heads=6, ffn_dim=8, head_dim=4,
                    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=64))
    assert c.head_dim == 4 and isinstance(c.rope_scaling, RopeScaling)


BASE = dict(vocab_size=10, dim=64, n_layers=2, n_heads=4, ffn_dim=32)


@pytest.mark.parametrize("change, match", [
    (dict(n_kv_heads=3), "n_heads=4 query heads is not a multiple of n_kv_heads=3"),
    (dict(dim=66), "dim=66 is not a multiple of n_heads=4"),
    (dict(head_dim=15), "head_dim=15 must be even"),
    (dict(n_heads=0), "n_heads must be an integer ≥ 1, got 0"),
    (dict(n_layers=-1), "n_layers must be an integer ≥ 1"),
    (dict(vocab_size=10.0), "vocab_size must be an integer"),
    (dict(ffn_dim=True), "ffn_dim must be an integer"),
    (dict(n_kv_heads=0), "n_kv_heads must be an integer ≥ 1"),
    (dict(norm_eps=0.0), "norm_eps must be a finite positive number"),
    (dict(rope_theta=float("inf")), "rope_theta must be a finite positive number"),
    (dict(max_seq_len=0), "max_seq_len must be an integer ≥ 1"),
    (dict(tie_embeddings=1), "tie_embeddings must be True or False"),
    (dict(rope_scaling=(8.0, 1.0, 4.0, 64)), "rope_scaling must be None, a RopeScaling or a dict"),
    (dict(rope_scaling=dict(factor=8.0, low_freq_factor=4.0, high_freq_factor=4.0,
                            original_max_position_embeddings=64)),
     "high_freq_factor=4.0 must be larger than low_freq_factor=4.0"),
    (dict(rope_scaling=dict(factor=-1.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=64)), "factor must be a finite positive"),
])
def test_bad_configs_raise_naming_the_problem(change, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**BASE, **change})


def test_replace_checks_again():
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads"):
        dataclasses.replace(PRESETS["tiny"], n_heads=3)
    assert ModelConfig.from_preset("tiny", n_layers=1).n_layers == 1


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="unknown preset 'llama-9'.*llama-3-8b.*tiny"):
        ModelConfig.from_preset("llama-9")


def test_configs_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny"].dim = 32


# -- what fits beside the weights (chapters 6 and 7) ---------------------------------------------

def test_max_cached_tokens_is_the_room_beside_the_weights():
    from infer_lib import hardware
    from infer_lib.model import max_cached_tokens

    config = PRESETS["llama-3-8b"]
    spec = hardware.SPECS["h100_sxm"]
    tokens = max_cached_tokens(config, spec.memory_bytes)
    weights = config.num_params() * 2
    per_token = config.kv_cache_bytes_per_token(torch.bfloat16)
    assert weights + tokens * per_token <= spec.memory_bytes < weights + (tokens + 1) * per_token
    assert tokens // 8192 == 65                     # chapter 6's Exercise 6.2, in 80 GiB
    # dtypes given by their size; a smaller cache holds more tokens, heavier weights fewer
    assert max_cached_tokens(config, spec.memory_bytes, 2, 2) == tokens
    assert max_cached_tokens(config, spec.memory_bytes, cache_dtype=1) in (2 * tokens, 2 * tokens + 1)
    assert max_cached_tokens(config, spec.memory_bytes, weight_dtype=torch.float32) < tokens
    # fewer K/V heads: a smaller cache per token and fewer weights, so more than H/H_kv times the tokens
    mqa = dataclasses.replace(config, n_kv_heads=1)
    assert max_cached_tokens(mqa, spec.memory_bytes) > 8 * tokens


def test_max_cached_tokens_without_room_or_with_bad_memory():
    from infer_lib.model import max_cached_tokens

    config = PRESETS["llama-3-70b"]
    assert max_cached_tokens(config, 80 * 2**30) is None           # 141 GB of bf16 weights
    assert max_cached_tokens(config, config.num_params() * 2) is None
    for bad in (0, -1.0, float("nan"), float("inf"), True, "80"):
        with pytest.raises(ValueError, match="memory_bytes must be a finite positive number"):
            max_cached_tokens(config, bad)
