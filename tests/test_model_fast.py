"""The model's non-attention work on the Triton kernels (``infer_lib.model.fast``): each rung
(``fuse``, ``use_matmul``, ``quantize``) generates what the plain model generates, with logits
within a stated tolerance; switching back gives the plain model bit for bit; int8 halves the
bytes of the projections; bad input gets clear errors.

Tolerances (fp32, relative to the largest |logit|, ``scale``):

* ``fuse`` and ``use_matmul``: ``1e-5 · scale``. Same math in fp32, only the order of the
  sums differs (the kernels' tiles and row reductions against cuBLAS/ATen): errors of a few
  fp32 ulps per op, measured ≤ 4e-7 · scale on the tiny presets — 25× margin.
* ``quantize`` against the model whose weights are the dequantised ones: the same
  ``1e-5 · scale`` (same numbers, summed in another order; the scale applied after the sum).
* ``quantize`` against the original model: ``3e-2 · scale``. Per-channel int8 puts each
  weight within ``s/2`` of itself, ``s = max|w_col| / 127``; with rounding errors uniform
  and independent a projection's output is off by ``‖x‖·s/√12`` against an output of
  ``‖x‖·σ_w``: ``max|w_col|/(127·√12·σ_w) ≈ 0.6 %`` for Gaussian columns of 64–160 weights
  (max ≈ 2.6 σ). Measured on the tiny presets: 0.06–0.5 % of ``scale`` after all ``7·L + 1``
  projections (the errors of the projections partly cancel); 3e-2 leaves 6× or more. The
  bound per projection is tested exactly:
  ``|x·wᵀ − int8_linear(x)| ≤ Σ_k |x_k| · s_n / 2``.
"""

import dataclasses
import importlib

import pytest
import torch
from torch import nn

from conftest import random_model
from infer_lib import device
from infer_lib.model import (PRESETS, FusedTransformer, Int8Linear, KVCache, MatmulLinear, Transformer,
                             decode_one_token, describe, fuse, generate, prefill, quantize, reset, use_matmul,
                             weight_bytes)

pytestmark = [pytest.mark.usefixtures("tensors_on_the_gpu_if_any"),
              pytest.mark.skipif(not getattr(device, "HAS_TRITON", True), reason="Triton is not installed")]
GPU_ONLY = pytest.mark.skipif(not device.HAS_GPU, reason="CUDA graphs and compiled kernels only on a GPU")

EXACT_ORDER = 1e-5        # × the largest |logit|: fp32, another summation order
INT8 = 3e-2               # × the largest |logit|: per-channel int8 weights (module docstring)

#: The interpreter runs a tiny matmul in ~0.2 s (tens of programs of ~10 ms each), so the
#: tests of the projections use the tiny preset with one layer: every path once, in seconds.
#: The fusion across blocks (block i + 1's input norm into block i's last add) is tested on
#: the two layers of the preset.
TINY_1 = dataclasses.replace(PRESETS["tiny"], n_layers=1)
TINY_MQA_1 = dataclasses.replace(PRESETS["tiny-mqa"], n_layers=1)


def generate_with_logits(model, tokens, n):
    """``generate(model, tokens, n)`` (greedy, KV cache) and the logits it sampled each token
    from, (B, n, V): ``sample`` is watched, nothing is run twice."""
    module = importlib.import_module("infer_lib.model.generate")
    seen, real = [], module.sample

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)

    module.sample = spy
    try:
        out = generate(model, tokens, max_new_tokens=n)
    finally:
        module.sample = real
    return out, torch.stack(seen, dim=1)


def teacher_forced(model, tokens, n_prompt):
    """Logits (B, steps, V) of a prefill of tokens[:, :n_prompt], then one decode step per
    remaining token but the last, through a KVCache: what greedy generation of ``tokens``
    samples from."""
    cache = KVCache(model.config, tokens.shape[0], tokens.shape[1], dtype=model.embed_tokens.weight.dtype)
    out = [prefill(model, tokens[:, :n_prompt], cache)]
    out += [decode_one_token(model, tokens[:, i], cache) for i in range(n_prompt, tokens.shape[1] - 1)]
    return torch.stack(out, dim=1)


def assert_logits_close(got, expected, rel, what):
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, atol=rel * scale, rtol=0, msg=lambda m: f"{what}: {m}")


def dequantized_copy(plain, quantized):
    """``plain`` with every weight that ``quantized`` holds in int8 replaced by its dequantised
    value: the model int8 must equal up to summation order."""
    assert not plain.config.tie_embeddings, "a quantised tied head would need an untied copy"
    state = plain.state_dict()
    for name, module in quantized.named_modules():
        if isinstance(module, Int8Linear):
            state[f"{name}.weight"] = module.dequantized().to(state[f"{name}.weight"].dtype)
    copy = random_model(plain.config, plain.backend)
    copy.load_state_dict(state)
    return copy.to(plain.embed_tokens.weight.dtype).eval().requires_grad_(False)


# -- each rung generates what the plain model generates ---------------------------------------

RUNGS = {
    "fuse": (PRESETS["tiny"], lambda m: fuse(m)),
    "fuse+matmul": (TINY_1, lambda m: use_matmul(fuse(m), head=True)),
}


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
@pytest.mark.parametrize("rung", list(RUNGS))
def test_each_rung_generates_what_the_plain_model_generates(rung, backend):
    config, switch = RUNGS[rung]
    model = random_model(config, backend)
    tokens = torch.randint(0, config.vocab_size, (2, 5))
    expected_tokens = generate(model, tokens, max_new_tokens=4)
    expected = teacher_forced(model, expected_tokens, 5)
    switch(model)
    got_tokens, got = generate_with_logits(model, tokens, 4)
    assert torch.equal(got_tokens, expected_tokens)
    assert_logits_close(got, expected, EXACT_ORDER, rung)


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_int8_generates_what_its_dequantised_weights_generate(backend):
    model = random_model(TINY_MQA_1, backend)                       # untied head: quantised too
    plain = random_model(TINY_MQA_1, backend)
    tokens = torch.randint(0, model.config.vocab_size, (2, 5))
    quantize(fuse(model), head=True)
    dequantized = dequantized_copy(plain, model)
    got_tokens, got = generate_with_logits(model, tokens, 4)
    assert torch.equal(got_tokens, generate(dequantized, tokens, max_new_tokens=4))
    assert_logits_close(got, teacher_forced(dequantized, got_tokens, 5), EXACT_ORDER, "vs dequantised")
    assert_logits_close(got, teacher_forced(plain, got_tokens, 5), INT8, "vs the 16-bit original")


def test_prefill_of_many_rows_takes_the_tiled_matmul_and_agrees():
    # B·S = 2·33 = 66 rows > 64: kernels.matmul's tiled kernel rather than split-K
    model = random_model(TINY_1)
    tokens = torch.randint(0, model.config.vocab_size, (2, 33))
    with torch.no_grad():
        expected = model(tokens)
        use_matmul(fuse(model))
        assert_logits_close(model(tokens), expected, EXACT_ORDER, "fuse+matmul")


def test_last_only_and_uncached_forward_of_the_fused_model():
    model = random_model("tiny-mqa")                                # 3 layers, eps 1e-6
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = model(tokens)
        fuse(model)
        assert_logits_close(model(tokens), expected, EXACT_ORDER, "uncached")
        assert_logits_close(model(tokens, last_only=True), expected[:, -1:], EXACT_ORDER, "last_only")


def test_int8_linear_error_is_within_half_a_step_per_weight():
    torch.manual_seed(0)
    linear = nn.Linear(160, 64, bias=False).requires_grad_(False)
    x = torch.randn(3, 5, 160)
    q = Int8Linear.from_linear(linear)
    assert q.w_q.dtype == torch.int8 and q.w_q.shape == (160, 64) and q.scales.shape == (64,)
    with torch.no_grad():
        err = (q(x) - linear(x)).abs()                                  # (3, 5, 64)
    bound = x.abs().sum(-1, keepdim=True) * q.scales / 2                # Σ_k |x_k| · s_n / 2
    assert (err <= bound * (1 + 1e-4) + 1e-5).all()
    assert err.max() > 0                                                # it is quantised


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_16_bit_forward_of_every_rung(dtype):
    if not device.supports_bf16():
        pytest.skip("bfloat16 needs compute capability 8.0 or newer")
    model = random_model(TINY_1).to(dtype)
    tokens = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.no_grad():
        expected = model(tokens).float()
        fuse(model)
        # bf16: one rounding per op (8-bit mantissa) in another place; as the 16-bit backend test
        assert_logits_close(model(tokens).float(), expected, 2e-2, "fuse, bf16")
        use_matmul(model)
        assert_logits_close(model(tokens).float(), expected, 2e-2, "fuse+matmul, bf16")
        quantize(model)
        assert model.layers[0].mlp.up_proj(torch.randn(2, 64, dtype=dtype)).dtype == dtype
        assert_logits_close(model(tokens).float(), expected, 2e-2 + INT8, "int8, bf16")


# -- what switching changes --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["view", "kn"])
def test_fuse_and_matmul_change_no_weight_and_reset_restores_the_plain_model(layout):
    model = random_model("tiny")
    tokens = torch.randint(0, model.config.vocab_size, (1, 6))
    params = dict(model.named_parameters())
    before = {n: p.clone() for n, p in params.items()}
    with torch.no_grad():
        expected = model(tokens)
    use_matmul(fuse(model), head=True, layout=layout)
    assert type(model) is FusedTransformer and isinstance(model, Transformer)
    assert describe(model) == {"fused": True, "projections": {"torch": 0, "matmul": 14, "int8": 0},
                               "head": "matmul"}
    assert model.lm_head.weight is model.embed_tokens.weight            # still tied
    assert model.embed_tokens.weight.is_contiguous()                    # a tied head is never relaid
    q = model.layers[0].self_attn.q_proj
    assert isinstance(q, MatmulLinear) and q.weight is params["layers.0.self_attn.q_proj.weight"]
    # (d_in, d_out)-major after layout="kn" (a view of the block's merged q/k/v weight), rows otherwise
    c = model.config
    qkv_rows = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    assert (q.weight.stride() == (1, qkv_rows)) == (layout == "kn"), q.weight.stride()
    merged = model.layers[0].self_attn._fused_qkv.weight
    assert q.weight.untyped_storage().data_ptr() == merged.untyped_storage().data_ptr()
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for n, p in after.items():
        assert p is params[n] and torch.equal(p, before[n]), n
    reset(model)
    assert type(model) is Transformer and type(model.layers[0].self_attn.q_proj) is nn.Linear
    assert describe(model) == {"fused": False, "projections": {"torch": 14, "matmul": 0, "int8": 0},
                               "head": "torch"}
    assert all(p.is_contiguous() for p in model.parameters())
    for n, p in model.named_parameters():
        assert p is params[n] and torch.equal(p, before[n]), n
    with torch.no_grad():
        assert torch.equal(model(tokens), expected)


def test_switches_are_idempotent_and_independent():
    model = random_model(TINY_1)
    tokens = torch.randint(0, model.config.vocab_size, (1, 4))
    with torch.no_grad():
        expected = model(tokens)
        fuse(fuse(model))
        use_matmul(use_matmul(model))
        assert describe(model)["projections"]["matmul"] == 7 and describe(model)["head"] == "torch"
        reset(model)
        use_matmul(model)                   # matmul without fusion
        assert not describe(model)["fused"]
        assert_logits_close(model(tokens), expected, EXACT_ORDER, "matmul alone")
        quantize(model)                     # int8 inside the plain forward too
        assert describe(model) == {"fused": False, "projections": {"torch": 0, "matmul": 0, "int8": 7},
                                   "head": "torch"}
        assert_logits_close(model(tokens), expected, INT8, "int8 alone")
        use_matmul(model)                   # int8 stays int8
        assert describe(model)["projections"]["int8"] == 7


def test_quantize_is_in_place_and_halves_the_bytes_of_16_bit_projections():
    model = random_model("tiny").to(torch.bfloat16)
    config = model.config
    shapes = [(m.in_features, m.out_features) for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n != "lm_head"]                   # (K, N)
    assert len(shapes) == 7 * config.n_layers
    before = weight_bytes(model)
    assert before["projections"] == sum(2 * K * N for K, N in shapes)
    assert before["head"] == 0                                                  # tied: it is the embedding
    assert before["embedding"] == 2 * config.vocab_size * config.dim
    assert before["total"] == sum(p.numel() * 2 for p in model.parameters())   # each storage once
    embedding = model.embed_tokens.weight
    quantize(model, head=True)
    after = weight_bytes(model)
    assert after["projections"] == sum(K * N + 4 * N for K, N in shapes)        # w_q + fp32 scales
    assert after["projections"] <= before["projections"] / 2 + sum(4 * N for _, N in shapes)
    # the tied head's int8 copy sits beside the 16-bit embedding, which the lookup still needs
    assert after["head"] == config.dim * config.vocab_size + 4 * config.vocab_size
    assert after["embedding"] == before["embedding"] and model.embed_tokens.weight is embedding
    assert after["norms"] == before["norms"]
    assert not any(isinstance(m, nn.Linear) for m in model.modules())          # the 16-bit ones are gone
    with pytest.raises(ValueError, match="one-way"):
        reset(model)


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_clearly():
    model = random_model("tiny-mqa")
    for switch in (fuse, use_matmul, quantize, reset, describe, weight_bytes):
        with pytest.raises(TypeError, match="must be an infer_lib.model.Transformer"):
            switch(nn.Linear(4, 4))

    class Fork(Transformer):
        pass

    with pytest.raises(TypeError, match="subclass"):
        fuse(Fork(model.config))
    odd = random_model("tiny-mqa")
    odd.layers[1].post_attention_layernorm = nn.LayerNorm(64)
    with pytest.raises(TypeError, match=r"layers.1.post_attention_layernorm is a LayerNorm"):
        fuse(odd)
    with pytest.raises(ValueError, match="layout must be 'view'"):
        use_matmul(model, layout="nk")

    poisoned = random_model("tiny-mqa")
    with torch.no_grad():
        poisoned.layers[2].mlp.down_proj.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        quantize(poisoned)
    assert describe(poisoned)["projections"]["int8"] == 0                      # nothing changed

    quantize(model)
    with pytest.raises(ValueError, match="layers.0.self_attn.q_proj is int8 already"):
        quantize(model)
    with pytest.raises(ValueError, match="int8 already"):
        quantize(model, head=True)


@pytest.mark.skipif(device.HAS_GPU, reason="grad-mode refusal checked once, on the CPU")
def test_grad_mode_with_trainable_weights_is_refused():
    model = fuse(random_model("tiny").requires_grad_(True))
    with pytest.raises(RuntimeError, match="requires grad"):
        model(torch.zeros(1, 3, dtype=torch.int64))


# -- on a GPU: CUDA graphs ---------------------------------------------------------------------


@GPU_ONLY
@pytest.mark.parametrize("rung", ["fuse+matmul", "fuse+int8"])
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_fast_decode_step_captures_in_a_cuda_graph(rung, backend):
    model = random_model("tiny", backend).to(torch.bfloat16)
    fuse(model)
    if rung == "fuse+matmul":
        use_matmul(model)
    else:
        quantize(model)
    prompts = torch.randint(0, 256, (2, 5))
    eager_cache, graph_cache = (KVCache(model.config, 2, 16, dtype=torch.bfloat16) for _ in range(2))
    token = prefill(model, prompts, eager_cache).argmax(-1)
    prefill(model, prompts, graph_cache)
    static_token, lengths = token.clone(), graph_cache.seqlens.clone()
    side = torch.cuda.Stream()                      # warm-up (and tuning) off the capture stream
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_one_token(model, static_token, graph_cache)
    torch.cuda.current_stream().wait_stream(side)
    graph_cache.seqlens.copy_(lengths)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_logits = decode_one_token(model, static_token, graph_cache)
    for step in range(3):
        expected = decode_one_token(model, token, eager_cache)
        static_token.copy_(token)
        graph.replay()
        torch.testing.assert_close(static_logits, expected, atol=1e-2 * expected.abs().max().item(), rtol=0,
                                   msg=lambda m: f"step {step}: {m}")
        token = expected.argmax(-1)
    assert graph_cache.seqlens.tolist() == eager_cache.seqlens.tolist() == [8, 8]
