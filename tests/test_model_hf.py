"""Our decoder against Hugging Face ``transformers``' ``LlamaForCausalLM``: the same tiny
checkpoint (written by ``save_pretrained``) loaded by both gives the same logits in fp32,
uncached and cached — prefill and every decode step — with Llama-3 RoPE scaling, GQA,
MQA, MHA, and tied and untied heads. The RoPE tables are bit-identical to theirs."""

import pytest
import torch

from infer_lib import device

from infer_lib.model import PRESETS, KVCache, config_from_hf, decode_one_token, from_pretrained, save_pretrained
from infer_lib.model.layers import Transformer, rope_tables

ATOL, RTOL = 1e-5, 1e-5          # fp32 (tests/conftest.py: TOLERANCES)
DEV = device.DEVICE
NAMES = ["tiny", "tiny-mha", "tiny-mqa"]   # GQA tied llama3-RoPE; MHA untied plain RoPE; MQA untied


@pytest.fixture(scope="module")
def transformers():
    # imported here, not at collection: only the worker that runs these tests pays for it
    module = pytest.importorskip("transformers", reason="transformers is not installed "
                                 "(requirements.txt pins it for these tests)")
    module.logging.set_verbosity_error()
    return module


@pytest.fixture(scope="module", params=NAMES)
def checkpoint(request, tmp_path_factory, transformers):
    """(ours, Hugging Face's) loaded from one random checkpoint of a tiny preset."""
    name = request.param
    torch.manual_seed(0)
    model = Transformer(PRESETS[name])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.normal_(1.0, 0.2)          # not ones: a norm loaded wrongly would show
    path = tmp_path_factory.mktemp(name)
    save_pretrained(model, path)
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                       attn_implementation="eager").eval().to(DEV)
    return name, from_pretrained(path, device=DEV), hf


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_logits_match_uncached(checkpoint, backend):
    name, ours, hf = checkpoint
    ours.backend = backend
    tokens = torch.randint(0, ours.config.vocab_size, (2, 13), device=DEV)
    with torch.no_grad():
        expected = hf(tokens).logits
    torch.testing.assert_close(ours(tokens), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_logits_match_prefill_and_every_decode_step(checkpoint, backend):
    name, ours, hf = checkpoint
    ours.backend = backend
    B, S, steps = 2, 9, 6
    tokens = torch.randint(0, ours.config.vocab_size, (B, S), device=DEV)
    cache = KVCache(ours.config, B, S + steps, device=DEV)
    with torch.no_grad():
        logits = ours(tokens, cache)                                        # (B, S, V)
        out = hf(tokens, use_cache=True)
        torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=RTOL)
        token = logits[:, -1].argmax(-1)
        for step in range(steps):
            logits = decode_one_token(ours, token, cache)                   # (B, V)
            out = hf(token[:, None], past_key_values=out.past_key_values, use_cache=True)
            torch.testing.assert_close(logits, out.logits[:, -1], atol=ATOL, rtol=RTOL,
                                       msg=lambda m: f"{name}, decode step {step}: {m}")
            token = logits.argmax(-1)
    assert cache.seqlens.tolist() == [S + steps] * B


def test_rope_tables_are_those_of_transformers(checkpoint):
    """Bit-identical on the CPU (same operations in the same order), Llama-3 scaling included."""
    name, ours, hf = checkpoint
    positions = torch.arange(ours.config.max_seq_len, device=DEV)[None]    # (1, S_max)
    x = torch.zeros(1, 1, ours.config.head_dim, device=DEV)
    cos, sin = hf.model.rotary_emb(x, positions)                            # (1, S_max, D)
    our_cos, our_sin = rope_tables(ours.config)
    if DEV.type == "cpu":
        assert torch.equal(our_cos, cos[0]) and torch.equal(our_sin, sin[0])
    else:   # transformers takes cos and sin on the GPU, whose last bit may differ
        torch.testing.assert_close(our_cos, cos[0].cpu(), atol=2e-6, rtol=0)
        torch.testing.assert_close(our_sin, sin[0].cpu(), atol=2e-6, rtol=0)
    assert torch.equal(ours.rope_cos.cpu(), our_cos) and torch.equal(ours.rope_sin.cpu(), our_sin)


def test_config_from_transformers_own_dict(checkpoint):
    # transformers 5 writes the rope_parameters spelling: read it back to the same config
    name, ours, hf = checkpoint
    assert config_from_hf(hf.config.to_dict()) == PRESETS[name]
