"""to_gqa (Ainslie et al. 2023): K/V heads mean-pooled in groups of consecutive heads, from
MHA and from an already grouped model; shapes and config; the original untouched; a model
whose heads are equal within each group gives the same logits, cached or not, with a KV
cache H_kv_old / n_kv_heads times smaller; the pooled weight is the mean; bad counts refused."""

import dataclasses

import pytest
import torch

from conftest import random_model as conftest_random_model

from infer_lib.model import (PRESETS, TINY_MHA, KVCache, Transformer, decode_one_token, from_pretrained,
                             generate, prefill, save_pretrained, to_gqa)
from infer_lib.model.layers import apply_rope

ATOL, RTOL = 1e-5, 1e-5          # fp32 (tests/conftest.py: TOLERANCES)

pytestmark = pytest.mark.usefixtures("tensors_on_the_gpu_if_any")

#: 16 query heads over 8 K/V heads (D = 8): an already grouped model to convert to 2
WIDE_GQA = dataclasses.replace(TINY_MHA, n_heads=16, n_kv_heads=8, head_dim=8)
CONFIGS = {name: PRESETS[name] for name in ("tiny", "tiny-mha", "tiny-mqa")} | {"wide-gqa": WIDE_GQA}


def random_model(name: str, backend: str = "sdpa", seed: int = 0) -> Transformer:
    return conftest_random_model(CONFIGS[name], backend, seed)


def heads(weight: torch.Tensor, D: int) -> list[torch.Tensor]:
    """The (D, d) row blocks of a K/V projection, one per head (head h: rows h·D … (h+1)·D − 1)."""
    return [weight[h * D:(h + 1) * D] for h in range(weight.shape[0] // D)]


def equal_within_groups(model: Transformer, n_kv_heads: int) -> Transformer:
    """``model`` with every K/V head copied from the first head of its group of
    H_kv / n_kv_heads consecutive heads, in place."""
    D, H_kv = model.config.head_dim, model.config.n_kv_heads
    g = H_kv // n_kv_heads
    for block in model.layers:
        for proj in (block.self_attn.k_proj, block.self_attn.v_proj):
            blocks = heads(proj.weight, D)
            for h in range(H_kv):
                blocks[h].copy_(blocks[h - h % g])
    return model


def cached_logits(model, tokens, n, cache):
    """Logits of the prefill and of n − 1 greedy decode steps through ``cache``."""
    logits = prefill(model, tokens, cache)
    out = [logits]
    for _ in range(n - 1):
        logits = decode_one_token(model, logits.argmax(-1), cache)
        out.append(logits)
    return out


# -- shapes and config -------------------------------------------------------------------------

@pytest.mark.parametrize("name, steps", [("tiny-mha", (4, 2, 1)), ("tiny-mha", (1,)), ("tiny", (1,)),
                                         ("wide-gqa", (2,)), ("wide-gqa", (4, 2))])
def test_shapes_and_config_after_conversion(name, steps):
    model = random_model(name)
    c = model.config
    tokens = torch.randint(0, c.vocab_size, (2, 5))
    for n in steps:                                       # MHA → GQA-4 → GQA-2 → MQA, 8 → 2, …
        new = to_gqa(model, n)
        assert new.config == dataclasses.replace(c, n_kv_heads=n)          # only n_kv_heads changes
        assert new.config.kv_cache_bytes_per_token() * model.config.n_kv_heads \
            == model.config.kv_cache_bytes_per_token() * n
        for old_block, block in zip(model.layers, new.layers):
            attn = block.self_attn
            assert attn.n_kv_heads == n and attn.n_heads == c.n_heads
            for proj in (attn.k_proj, attn.v_proj):
                assert proj.weight.shape == (n * c.head_dim, c.dim) and proj.out_features == n * c.head_dim
                assert proj.bias is None
            old_attn = old_block.self_attn
            for part in ("q_proj", "o_proj"):                                 # unchanged, copied
                assert torch.equal(getattr(attn, part).weight, getattr(old_attn, part).weight)
        unchanged = {k: v for k, v in model.state_dict().items() if "k_proj" not in k and "v_proj" not in k}
        new_state = new.state_dict()
        for k, v in unchanged.items():                    # norms, MLP, embedding, head
            assert torch.equal(new_state[k], v), k
        assert new(tokens).shape == (2, 5, c.vocab_size)
        assert new.backend == model.backend and new.training == model.training
        assert (new.lm_head.weight is new.embed_tokens.weight) == c.tie_embeddings
        model, c = new, new.config


def test_same_count_gives_an_equal_copy():
    model = random_model("tiny")
    new = to_gqa(model, model.config.n_kv_heads)
    assert new is not model and new.config == model.config
    for (k, a), b in zip(model.state_dict().items(), new.state_dict().values()):
        assert torch.equal(a, b), k


# -- the original is left alone ----------------------------------------------------------------

@pytest.mark.parametrize("name, n", [("tiny-mha", 1), ("tiny", 1), ("wide-gqa", 2)])
def test_original_model_is_unchanged(name, n):
    model = random_model(name)
    config = model.config
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = to_gqa(model, n)
    assert new is not model and model.config is config and config.n_kv_heads == CONFIGS[name].n_kv_heads
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(block.self_attn.n_kv_heads == config.n_kv_heads for block in model.layers)
    # a deep copy: no tensor shared, so changing the new model leaves the old one alone
    old_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not old_ptrs & {t.data_ptr() for t in new.state_dict().values()}
    for p in new.parameters():
        p.add_(1.0)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


# -- equal heads: the same model ---------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("name, n", [("tiny-mha", 2), ("tiny-mha", 1), ("tiny", 1), ("wide-gqa", 2)])
def test_equal_heads_within_groups_give_the_same_logits(name, n, backend):
    model = equal_within_groups(random_model(name, backend), n)
    new = to_gqa(model, n)
    g = model.config.n_kv_heads // n
    tokens = torch.randint(0, model.config.vocab_size, (2, 7))
    torch.testing.assert_close(new(tokens), model(tokens), atol=ATOL, rtol=RTOL)     # no cache
    N = 6
    caches = [KVCache(m.config, 2, 7 + N) for m in (model, new)]
    assert caches[0].nbytes() == g * caches[1].nbytes()                               # g× smaller
    assert caches[1].k_cache.shape[2] == n
    for step, (a, b) in enumerate(zip(cached_logits(new, tokens, N, caches[1]),
                                      cached_logits(model, tokens, N, caches[0]))):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"step {step}: {m}")
    assert torch.equal(generate(new, tokens, max_new_tokens=N), generate(model, tokens, max_new_tokens=N))


def test_unequal_heads_change_the_logits():
    # the control of the test above: pooling different heads is not the same model
    model = random_model("tiny-mha")
    tokens = torch.randint(0, model.config.vocab_size, (1, 7))
    assert not torch.allclose(to_gqa(model, 1)(tokens), model(tokens), atol=1e-3)


# -- the mean is the mean ----------------------------------------------------------------------

@pytest.mark.parametrize("name, n", [("tiny-mha", 2), ("tiny-mha", 1), ("wide-gqa", 2), ("tiny", 1)])
def test_pooled_weight_is_the_mean_of_its_group(name, n):
    model = random_model(name)
    D, H_kv = model.config.head_dim, model.config.n_kv_heads
    g = H_kv // n
    new = to_gqa(model, n)
    for layer in range(model.config.n_layers):
        for part in ("k_proj", "v_proj"):
            old = heads(getattr(model.layers[layer].self_attn, part).weight, D)
            pooled = heads(getattr(new.layers[layer].self_attn, part).weight, D)
            assert len(pooled) == n
            for j in range(n):
                expected = sum(old[j * g + i] for i in range(g)) / g             # consecutive heads
                torch.testing.assert_close(pooled[j], expected, atol=1e-6, rtol=1e-6)


def test_grouping_twice_equals_grouping_once():
    model = random_model("wide-gqa")
    once, twice = to_gqa(model, 2), to_gqa(to_gqa(model, 4), 2)
    for (k, a), b in zip(once.state_dict().items(), twice.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m: f"{k}: {m}")


def test_pooled_keys_are_the_mean_of_the_rotated_keys():
    # RoPE rotates every head by the same angles and is linear, so pooling the projection
    # pools the keys after RoPE too: averaging weights is the paper's operation here
    model = random_model("tiny-mha")
    new = to_gqa(model, 2)
    c = model.config
    B, S, H_kv, D, g = 2, 9, c.n_kv_heads, c.head_dim, c.n_kv_heads // 2
    x = torch.randn(B, S, c.dim)
    positions = torch.arange(S).expand(B, S)
    cos, sin = model.rope_cos[positions], model.rope_sin[positions]
    k_old = model.layers[0].self_attn.k_proj(x).view(B, S, H_kv, D).transpose(1, 2)   # (B, H_kv, S, D)
    k_new = new.layers[0].self_attn.k_proj(x).view(B, S, 2, D).transpose(1, 2)
    expected = apply_rope(k_old, cos, sin).view(B, 2, g, S, D).mean(dim=2)
    torch.testing.assert_close(apply_rope(k_new, cos, sin), expected, atol=ATOL, rtol=RTOL)


def test_a_bias_is_pooled_like_its_rows():
    # no Llama has one; a fork that adds one must not lose it silently
    model = random_model("tiny-mha")
    D = model.config.head_dim
    attn = model.layers[0].self_attn
    attn.k_proj.bias = torch.nn.Parameter(torch.randn(4 * D), requires_grad=False)
    new_proj = to_gqa(model, 2).layers[0].self_attn.k_proj
    assert new_proj.bias.shape == (2 * D,)
    b = attn.k_proj.bias
    expected = torch.cat([(b[:D] + b[D:2 * D]) / 2, (b[2 * D:3 * D] + b[3 * D:]) / 2])   # heads 0+1, 2+3
    torch.testing.assert_close(new_proj.bias, expected)
    assert to_gqa(model, 2).layers[1].self_attn.k_proj.bias is None


def test_16_bit_weights_are_pooled_in_fp32_and_rounded_once():
    model = random_model("tiny-mha").to(torch.bfloat16)
    new = to_gqa(model, 1)
    w = model.layers[0].self_attn.v_proj.weight
    assert new.layers[0].self_attn.v_proj.weight.dtype == torch.bfloat16
    expected = w.float().view(4, -1, w.shape[1]).mean(0).to(torch.bfloat16)
    assert torch.equal(new.layers[0].self_attn.v_proj.weight, expected)


def test_converted_model_saves_and_loads(tmp_path):
    model = to_gqa(random_model("tiny-mha"), 2)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, device=model.embed_tokens.weight.device)
    assert loaded.config == model.config
    tokens = torch.randint(0, model.config.vocab_size, (1, 6))
    torch.testing.assert_close(loaded(tokens), model(tokens), atol=ATOL, rtol=RTOL)


# -- bad group counts --------------------------------------------------------------------------

@pytest.mark.parametrize("name, n, match", [
    ("tiny-mha", 0, r"n_kv_heads must be a positive integer, got 0"),
    ("tiny-mha", -2, r"n_kv_heads must be a positive integer, got -2"),
    ("tiny-mha", 2.0, r"n_kv_heads must be a positive integer, got 2\.0"),
    ("tiny-mha", True, r"n_kv_heads must be a positive integer, got True"),
    ("tiny-mha", "2", r"n_kv_heads must be a positive integer, got '2'"),
    ("tiny-mha", 3, r"n_kv_heads=3 does not divide the model's H_kv=4 .* choose one of 1, 2, 4"),
    ("wide-gqa", 3, r"n_kv_heads=3 does not divide the model's H_kv=8 .* choose one of 1, 2, 4, 8"),
    ("tiny-mha", 8, r"n_kv_heads=8 is larger than the model's H_kv=4 .* cannot split them"),
    ("tiny", 4, r"n_kv_heads=4 is larger than the model's H_kv=2"),
    ("tiny-mqa", 2, r"n_kv_heads=2 is larger than the model's H_kv=1"),
])
def test_bad_group_counts_raise(name, n, match):
    model = random_model(name)
    with pytest.raises(ValueError, match=match):
        to_gqa(model, n)
    assert model.config == CONFIGS[name]


def test_refuses_what_is_not_a_model_or_disagrees_with_its_config():
    with pytest.raises(TypeError, match="model must be an infer_lib.model.Transformer, got dict"):
        to_gqa({}, 1)
    model = random_model("tiny-mha")
    model.config = dataclasses.replace(model.config, n_kv_heads=2)       # weights still hold 4 heads
    with pytest.raises(ValueError, match=r"layer 0 has 4 K/V heads .* config says H_kv=2"):
        to_gqa(model, 1)
