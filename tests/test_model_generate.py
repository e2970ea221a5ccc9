"""Generation: cached equals uncached, the backends agree (reference, SDPA, Triton), ragged
prompts prefilled one by one equal each prompt alone, stop tokens, sampling, and the KV
cache (in-place writes at per-sequence positions, views, a clear error when full)."""

import dataclasses

import pytest
import torch

from conftest import random_model
from infer_lib import device
from infer_lib.model import (PRESETS, KVCache, Transformer, decode_one_token, generate, generate_uncached,
                             prefill, sample)
from infer_lib.model import layers

ATOL, RTOL = 1e-5, 1e-5          # fp32 (tests/conftest.py: TOLERANCES)
NEEDS_TRITON = pytest.mark.skipif(not getattr(device, "HAS_TRITON", True), reason="Triton is not installed")
GPU_ONLY = pytest.mark.skipif(not device.HAS_GPU, reason="CUDA graphs and 16-bit kernels only on a GPU")


pytestmark = pytest.mark.usefixtures("tensors_on_the_gpu_if_any")


def greedy_uncached(model, tokens, n):
    """Greedy decoding the slow way: the whole sequence through the model at every step."""
    logits_per_step = []
    for _ in range(n):
        logits = model(tokens)[:, -1]                                  # (B, V)
        logits_per_step.append(logits)
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens, logits_per_step


def cached_logits(model, tokens, n):
    """Logits of the prefill and of each of n − 1 decode steps, greedy, through a KVCache."""
    cache = KVCache(model.config, tokens.shape[0], tokens.shape[1] + n)
    logits = prefill(model, tokens, cache)
    out = [logits]
    for _ in range(n - 1):
        logits = decode_one_token(model, logits.argmax(-1), cache)
        out.append(logits)
    return out


@pytest.mark.parametrize("name", ["tiny", "tiny-mha", "tiny-mqa"])
def test_cached_and_uncached_generation_agree(name):
    model = random_model(name)
    tokens = torch.randint(0, model.config.vocab_size, (3, 7))
    expected, expected_logits = greedy_uncached(model, tokens, 8)
    out = generate(model, tokens, max_new_tokens=8)
    assert out.shape == (3, 7 + 8) and out.dtype == torch.int64
    assert torch.equal(out, expected)
    for step, (a, b) in enumerate(zip(cached_logits(model, tokens, 8), expected_logits)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m: f"step {step}: {m}")


def test_generate_uncached_is_the_slow_greedy_loop():
    model = random_model("tiny-mha")
    tokens = torch.randint(0, model.config.vocab_size, (2, 5))
    assert torch.equal(generate_uncached(model, tokens, 6), greedy_uncached(model, tokens, 6)[0])
    assert torch.equal(generate_uncached(model, tokens, 0), tokens)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
            generate_uncached(model, tokens, bad)


@pytest.mark.parametrize("name", ["tiny", "tiny-mqa"])
def test_reference_and_sdpa_agree(name):
    ref, sdpa = random_model(name, "reference"), random_model(name, "sdpa")
    tokens = torch.randint(0, ref.config.vocab_size, (2, 11))
    torch.testing.assert_close(sdpa(tokens), ref(tokens), atol=ATOL, rtol=RTOL)
    for a, b in zip(cached_logits(sdpa, tokens, 5), cached_logits(ref, tokens, 5)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)
    prompts = [tokens[0, :4], tokens[1]]
    assert torch.equal(generate(sdpa, prompts, 5), generate(ref, prompts, 5))


@NEEDS_TRITON
def test_triton_agrees_with_reference():
    # the interpreter runs flash_attention on the CPU: one tiny ragged batch (GQA, D = 16)
    ref, tri = random_model("tiny", "reference"), random_model("tiny", "triton")
    tokens = torch.randint(0, ref.config.vocab_size, (2, 5))
    torch.testing.assert_close(tri(tokens), ref(tokens), atol=ATOL, rtol=RTOL)     # prefill kernel
    prompts = [tokens[0], tokens[1, :2]]
    caches = [KVCache(ref.config, 2, 8) for _ in range(2)]
    logits = [prefill(m, prompts, c) for m, c in zip((ref, tri), caches)]           # row by row
    torch.testing.assert_close(logits[1], logits[0], atol=ATOL, rtol=RTOL)
    token = logits[0].argmax(-1)
    for _ in range(2):                                                               # decode steps
        logits = [decode_one_token(m, token, c) for m, c in zip((ref, tri), caches)]
        torch.testing.assert_close(logits[1], logits[0], atol=ATOL, rtol=RTOL)
        token = logits[0].argmax(-1)


def test_triton_decode_goes_through_the_pluggable_decode_function(monkeypatch):
    """A decode kernel plugs in as BACKENDS["triton"].decode with this contract."""
    seen = []

    def decode_attention(q, k_cache, v_cache, cache_seqlens):
        seen.append((tuple(q.shape), tuple(k_cache.shape), cache_seqlens.dtype, cache_seqlens.tolist()))
        return layers._reference_extend(q, k_cache, v_cache, cache_seqlens)

    monkeypatch.setitem(layers.BACKENDS, "triton",
                        dataclasses.replace(layers.BACKENDS["triton"], decode=decode_attention))
    model = random_model("tiny", "triton")
    prompts = torch.tensor([[5], [9]])                 # S = 1: even the prefill is a decode step
    out = generate(model, prompts, max_new_tokens=3)
    assert torch.equal(out, generate(random_model("tiny", "reference"), prompts, max_new_tokens=3))
    B, H, H_kv, D, L = 2, 4, 2, 16, 2
    assert seen[0] == ((B, H, 1, D), (B, H_kv, 4, D), torch.int32, [1, 1])
    assert seen[-1][3] == [3, 3] and len(seen) == 3 * L


@pytest.mark.parametrize("name", ["tiny", "tiny-mqa"])
def test_ragged_prompts_give_what_each_prompt_gives_alone(name):
    model = random_model(name)
    V, N = model.config.vocab_size, 6
    prompts = [torch.randint(0, V, (n,)) for n in (5, 2, 8)]
    out = generate(model, prompts, max_new_tokens=N, pad_token=-1)
    assert out.shape == (3, 8 + N)
    for b, p in enumerate(prompts):
        alone = generate(model, p[None], max_new_tokens=N)[0]
        assert torch.equal(out[b, :p.numel() + N], alone), f"prompt {b}"
        assert (out[b, p.numel() + N:] == -1).all()                 # padding after, never before
    padded = torch.zeros(3, 8, dtype=torch.int64)
    for b, p in enumerate(prompts):
        padded[b, :p.numel()] = p
    assert torch.equal(generate(model, padded, N, lengths=torch.tensor([5, 2, 8]), pad_token=-1), out)


def test_ragged_prefill_fills_each_row_to_its_length():
    model = random_model("tiny")
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 6)]
    cache = KVCache(model.config, 2, 10)
    logits = prefill(model, prompts, cache)
    assert cache.seqlens.tolist() == [3, 6]
    for b, p in enumerate(prompts):
        torch.testing.assert_close(logits[b], model(p[None])[0, -1], atol=ATOL, rtol=RTOL)
    assert (cache.k_cache[:, 0, :, 3:] == 0).all() and (cache.k_cache[:, 1, :, :6] != 0).any()
    decode_one_token(model, logits.argmax(-1), cache)
    assert cache.seqlens.tolist() == [4, 7]


def _after_stop(out, prompt_lens, stop):
    """What a row must be once it emitted `stop`: `stop` to the end of its new tokens."""
    expected = out.clone()
    for b, n in enumerate(prompt_lens):
        hits = (out[b, n:] == stop).nonzero()
        if len(hits):
            expected[b, n + int(hits[0]):] = stop
    return expected


def test_stopped_sequences_keep_emitting_the_stop_token():
    model = random_model("tiny-mha")
    prompts = [torch.randint(0, 256, (n,)) for n in (4, 6)]
    free = generate(model, prompts, max_new_tokens=10, pad_token=-1)
    stop = int(free[0, 4 + 1])                          # what row 0 emits second
    out = generate(model, prompts, max_new_tokens=10, stop_token=stop)
    expected = _after_stop(free, [4, 6], stop)
    expected[0, 4 + 10:] = stop                         # row 0's tail: pad_token defaults to stop
    assert torch.equal(out, expected)
    # one sequence: it stops, generation ends early, the rest is the stop token
    one = generate(model, prompts[:1], max_new_tokens=10, stop_token=stop)
    assert torch.equal(one[0], expected[0, :14])


def test_sampling():
    logits = torch.randn(4, 50)
    assert torch.equal(sample(logits), logits.argmax(-1))
    assert torch.equal(sample(logits, temperature=1.0, top_k=1), logits.argmax(-1))
    g1, g2 = torch.Generator(device.DEVICE).manual_seed(1), torch.Generator(device.DEVICE).manual_seed(1)
    assert torch.equal(sample(logits, 0.8, generator=g1), sample(logits, 0.8, generator=g2))
    top3 = logits.topk(3).indices
    draws = torch.stack([sample(logits, 5.0, top_k=3) for _ in range(50)], dim=1)   # (4, 50)
    assert all(set(draws[b].tolist()) <= set(top3[b].tolist()) for b in range(4))
    with pytest.raises(ValueError, match="temperature must be ≥ 0"):
        sample(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be None or a positive integer"):
        sample(logits, temperature=1.0, top_k=0)


def test_sampled_generation_is_reproducible():
    model = random_model("tiny")
    tokens = torch.randint(0, 256, (2, 4))
    a = generate(model, tokens, 5, temperature=1.0, top_k=20, generator=torch.Generator(device.DEVICE).manual_seed(3))
    b = generate(model, tokens, 5, temperature=1.0, top_k=20, generator=torch.Generator(device.DEVICE).manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a[:, :4], tokens)


# -- the KV cache ------------------------------------------------------------------------------


def test_cache_refuses_to_grow_past_its_length():
    model = random_model("tiny")
    cache = KVCache(model.config, 2, 8)
    model(torch.randint(0, 256, (2, 6)), cache)
    with pytest.raises(ValueError, match=r"KV cache full: sequence 0 holds 6 tokens and 3 more would make "
                                         r"9, past the cache's max_seq_len=8"):
        model(torch.randint(0, 256, (2, 3)), cache)
    assert cache.seqlens.tolist() == [6, 6]               # refused before anything was written
    model(torch.randint(0, 256, (2, 2)), cache)           # exactly full is fine
    with pytest.raises(ValueError, match="KV cache full"):
        decode_one_token(model, torch.tensor([1, 2]), cache)


def test_generate_refuses_a_short_cache_before_any_work():
    model = random_model("tiny")
    cache = KVCache(model.config, 1, 10)
    with pytest.raises(ValueError, match="KV cache full.*max_seq_len=10"):
        generate(model, torch.randint(0, 256, (1, 6)), max_new_tokens=6, cache=cache)
    assert cache.seqlens.tolist() == [0]
    out = generate(model, torch.randint(0, 256, (1, 6)), max_new_tokens=5, cache=cache)   # 6 + 4 fed
    assert out.shape == (1, 11) and cache.seqlens.tolist() == [10]


def test_lengths_beyond_the_model():
    model = random_model("tiny")
    with pytest.raises(ValueError, match="max_seq_len=1000 exceeds the model's max_seq_len=256"):
        KVCache(model.config, 1, 1000)
    with pytest.raises(ValueError, match="S=257 tokens is longer than the model's max_seq_len=256"):
        model(torch.zeros(1, 257, dtype=torch.int64))


def test_update_writes_in_place_at_each_sequence_position():
    config = PRESETS["tiny"]
    cache = KVCache(config, 2, 8)
    k_buf = cache.k_cache.data_ptr()
    k = torch.randn(2, config.n_kv_heads, 2, config.head_dim)
    v = torch.randn(2, config.n_kv_heads, 2, config.head_dim)
    k_layer, v_layer = cache.update(1, k, v, torch.tensor([[2, 3], [5, 6]]))
    assert k_layer.shape == (2, config.n_kv_heads, 8, config.head_dim)
    assert cache.k_cache.data_ptr() == k_buf and k_layer.data_ptr() == cache.k_cache[1].data_ptr()
    assert torch.equal(cache.k_cache[1, 0, :, 2:4], k[0]) and torch.equal(cache.v_cache[1, 1, :, 5:7], v[1])
    assert (cache.k_cache[1, 0, :, [0, 1, 4, 5, 6, 7]] == 0).all() and (cache.k_cache[0] == 0).all()
    assert cache.seqlens.tolist() == [0, 0]                           # lengths: the model's job


def test_update_refuses_wrong_shapes_and_dtypes():
    config = PRESETS["tiny"]
    cache = KVCache(config, 2, 8)
    k = torch.randn(2, config.n_kv_heads, 1, config.head_dim)
    pos = torch.zeros(2, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"must both be \(B=2, H_kv=2, S_new, D=16\)"):
        cache.update(0, k[:, :1], k[:, :1], pos)
    with pytest.raises(ValueError, match=r"positions must be \(B, S_new\) = \(2, 1\)"):
        cache.update(0, k, k, pos[:1])
    with pytest.raises(TypeError, match="the cache holds torch.float32 but k is torch.bfloat16"):
        cache.update(0, k.bfloat16(), k.bfloat16(), pos)


def test_select_is_a_view():
    config = PRESETS["tiny"]
    cache = KVCache(config, 3, 8)
    row = cache.select(1)
    assert row.batch_size == 1
    row.update(0, torch.ones(1, 2, 1, 16), torch.ones(1, 2, 1, 16), torch.tensor([[4]]))
    row.seqlens += 5
    assert cache.seqlens.tolist() == [0, 5, 0] and (cache.k_cache[0, 1, :, 4] == 1).all()
    assert cache.select(slice(1, 3)).batch_size == 2 and cache.select(-1).batch_size == 1
    with pytest.raises(IndexError, match="row 3 out of range for a batch of 3"):
        cache.select(3)
    cache.reset()
    assert cache.seqlens.tolist() == [0, 0, 0]


def test_bad_inputs():
    model = random_model("tiny")
    with pytest.raises(ValueError, match="tokens must be an integer tensor"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tokens have B=1 sequences but the cache holds 2"):
        model(torch.zeros(1, 3, dtype=torch.int64), KVCache(model.config, 2, 8))
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        Transformer(PRESETS["tiny"], backend="flash")
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.backend = "cuda"
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        generate(model, torch.zeros(1, 3, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match=r"lengths\[1\]=5 must be between 1 and S=4"):
        generate(model, torch.zeros(2, 4, dtype=torch.int64), 2, lengths=[2, 5])
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty 1-D tensor"):
        generate(model, [torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64)], 2)
    assert torch.equal(generate(model, torch.tensor([[7, 8]]), 0), torch.tensor([[7, 8]]))


# -- on a GPU: CUDA graphs, 16-bit, real shapes ------------------------------------------------


@GPU_ONLY
def test_a_decode_step_captures_in_a_cuda_graph():
    """Static shapes: one decode step (SDPA backend) captured once, replayed per token,
    gives the eager logits and advances the cache lengths in place."""
    model = random_model("tiny", "sdpa")
    prompts = [torch.randint(0, 256, (n,)) for n in (5, 3)]
    eager_cache, graph_cache = KVCache(model.config, 2, 16), KVCache(model.config, 2, 16)
    token = prefill(model, prompts, eager_cache).argmax(-1)
    prefill(model, prompts, graph_cache)
    static_token = token.clone()
    lengths = graph_cache.seqlens.clone()
    side = torch.cuda.Stream()                      # warm-up off the capture stream, as CUDA graphs want
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_one_token(model, static_token, graph_cache)
    torch.cuda.current_stream().wait_stream(side)
    graph_cache.seqlens.copy_(lengths)              # undo the warm-up's step
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_logits = decode_one_token(model, static_token, graph_cache)
    assert graph_cache.seqlens.tolist() == [5, 3]   # capturing runs nothing
    for step in range(4):
        expected = decode_one_token(model, token, eager_cache)
        static_token.copy_(token)
        graph.replay()
        torch.testing.assert_close(static_logits, expected, atol=ATOL, rtol=RTOL,
                                   msg=lambda m: f"step {step}: {m}")
        token = expected.argmax(-1)
    assert graph_cache.seqlens.tolist() == eager_cache.seqlens.tolist() == [9, 7]


def _teacher_forced_logits(model, tokens, n_prompt):
    """Logits of a prefill of tokens[:, :n_prompt], then of decode steps feeding the rest."""
    cache = KVCache(model.config, tokens.shape[0], tokens.shape[1], dtype=model.embed_tokens.weight.dtype)
    out = [prefill(model, tokens[:, :n_prompt], cache)]
    out += [decode_one_token(model, tokens[:, i], cache) for i in range(n_prompt, tokens.shape[1])]
    return torch.stack(out, dim=1).float()                                  # (B, steps, V)


@GPU_ONLY
@pytest.mark.parametrize("name, S", [("tiny-mqa", 40), ("smollm2-135m", 300)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backends_agree_in_16_bit_on_real_shapes(name, S, dtype):
    # SmolLM2-135M's shape: H = 9 query heads over H_kv = 3, D = 64, random weights
    torch.manual_seed(0)
    model = Transformer(PRESETS[name], backend="reference").to(dtype).eval().requires_grad_(False)
    tokens = torch.randint(0, model.config.vocab_size, (3, S))
    expected = _teacher_forced_logits(model, tokens, S - 8)
    uncached = model(tokens).float()
    scale = expected.abs().max()
    for backend in ("sdpa", "triton"):
        model.backend = backend
        got = _teacher_forced_logits(model, tokens, S - 8)
        torch.testing.assert_close(got, expected, atol=2e-2 * scale, rtol=0, msg=lambda m: f"{backend}: {m}")
        torch.testing.assert_close(model(tokens).float(), uncached, atol=2e-2 * scale, rtol=0,
                                   msg=lambda m: f"{backend}, uncached: {m}")
