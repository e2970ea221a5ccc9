"""Chapter 9's exercise checks: right answers pass, `...` is "not done yet", typical slips get
their hint, and no hint gives the answer away.

The right answers are worked out here as a learner would: bytes counted from the config's
shapes (every weight once; the cache per sequence), the datasheet bandwidth, one byte per
int8 weight plus a 4-byte scale per output column, and for the int8 epilogue the product with the
dequantised weights."""

import pytest
import torch

from conftest import assert_not_attempted, gives_away, hint_matching as hint
from infer_lib import hardware
from infer_lib.exercises import ch09
from infer_lib.model import ModelConfig


def _weights_bf16(c: ModelConfig) -> int:
    """Every weight a step reads, 2 bytes each: the blocks, the final norm and the head (the
    head is the embedding matrix when tied; the lookup's rows are left out)."""
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    per_layer = c.dim * qkv + c.n_heads * c.head_dim * c.dim + 3 * c.dim * c.ffn_dim + 2 * c.dim
    return 2 * (c.n_layers * per_layer + c.dim + c.vocab_size * c.dim)


def _kv_per_token(c: ModelConfig) -> int:
    return 2 * c.n_layers * c.n_kv_heads * c.head_dim * 2


def test_roofline(capsys):
    c = ModelConfig.from_preset(ch09.ROOFLINE["preset"])
    bw = hardware.SPECS[ch09.ROOFLINE["gpu"]].bandwidth_GBps * 1e9
    ctx, B = ch09.ROOFLINE["context"], ch09.ROOFLINE["batch"]
    t1 = 1 / ((_weights_bf16(c) + _kv_per_token(c) * ctx) / bw)
    tB = B / ((_weights_bf16(c) + B * _kv_per_token(c) * ctx) / bw)
    ch09.roofline(t1, tB)
    assert capsys.readouterr().out.count("✅") == 2
    ch09.roofline(..., ...)
    assert_not_attempted(capsys, r"9\.1")
    hints = [
        hint(ch09.roofline, 1 / (_weights_bf16(c) / bw), ..., match="cache"),
        hint(ch09.roofline, t1 / 2, ..., match="4 bytes"),
        hint(ch09.roofline, t1 * 1.024 ** 3, ..., match="GiB"),
        hint(ch09.roofline, t1 * 1.024 ** 4, ..., match="decimal"),
        hint(ch09.roofline, ..., B * t1, match="own cache"),
        hint(ch09.roofline, ..., tB / B, match="per sequence"),
        hint(ch09.roofline, ..., tB * 3, match="too large"),
    ]
    for h in hints:
        assert not gives_away(h.split(" is ", 1)[1], t1, tB), h
    hint(ch09.roofline, "fast", ..., match="expected a number", error=TypeError)


def _int8_extra(c: ModelConfig, *, scale_bytes=4, norm_bytes=2, per_input=False, head=True) -> float:
    """int8 bytes minus half the bf16 bytes, counted as a learner would: the fp32 scales (one per
    output column of every projection and of the head) and the norms' second byte."""
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    outs = [qkv, c.dim, 2 * c.ffn_dim, c.dim]
    ins = [c.dim, c.n_heads * c.head_dim, c.dim, c.ffn_dim]
    scaled = c.n_layers * sum(ins if per_input else outs) + (c.dim if per_input else c.vocab_size)
    extra = scale_bytes * scaled + (norm_bytes - 1) * (2 * c.n_layers + 1) * c.dim
    if not head:      # the head stays 2 bytes a weight, no scales
        extra += c.vocab_size * c.dim - scale_bytes * (c.dim if per_input else c.vocab_size)
    return extra


def test_int8_bytes(capsys):
    c = ModelConfig.from_preset(ch09.INT8["preset"])
    bf16 = _weights_bf16(c)
    want = _int8_extra(c) / 1e6
    ch09.int8_bytes(bf16 / 1e9, want)
    assert capsys.readouterr().out.count("✅") == 2
    ch09.int8_bytes(..., ...)
    assert_not_attempted(capsys, r"9\.2")
    hints = [hint(ch09.int8_bytes, 2 * bf16 / 1e9, ..., match="fp32"),
             hint(ch09.int8_bytes, ..., 0, match="exactly half"),
             hint(ch09.int8_bytes, ..., _int8_extra(c, scale_bytes=0) / 1e6, match="leaves the scales out"),
             hint(ch09.int8_bytes, ..., _int8_extra(c, per_input=True) / 1e6, match="input row"),
             hint(ch09.int8_bytes, ..., _int8_extra(c, scale_bytes=2) / 1e6, match="4 bytes"),
             hint(ch09.int8_bytes, ..., _int8_extra(c, norm_bytes=1) / 1e6, match="norms in int8"),
             hint(ch09.int8_bytes, ..., _int8_extra(c, head=False) / 1e6, match="head in bf16"),
             hint(ch09.int8_bytes, ..., (_int8_extra(c) + c.vocab_size * c.dim) / 1e6,
                  match="embedding table"),
             hint(ch09.int8_bytes, ..., -bf16 / 4 / 1e6, match="less than half"),
             hint(ch09.int8_bytes, ..., want * 1.03, match="close")]
    for h in hints:
        assert not gives_away(h.split(" — ", 1)[-1], bf16 / 1e9, want), h


def test_epilogue(capsys):
    ch09.epilogue(lambda acc, s: acc * s)
    assert "✅ Exercise 9.3: correct." in capsys.readouterr().out
    ch09.epilogue(...)
    assert_not_attempted(capsys, r"9\.3")

    def stub(acc, s):
        raise NotImplementedError
    ch09.epilogue(stub)
    assert_not_attempted(capsys, r"9\.3")
    hint(ch09.epilogue, lambda acc, s: acc * s[:, None], match="multiply the rows")
    hint(ch09.epilogue, lambda acc, s: acc / s, match="divides")
    hint(ch09.epilogue, lambda acc, s: acc, match="leaves the scales out")
    hint(ch09.epilogue, lambda acc, s: acc * s.sum(), match="own scale")
    hint(ch09.epilogue, lambda acc, s: acc * s.mean(), match="values differ")
    hint(ch09.epilogue, lambda acc, s: None, match="return")
    hint(ch09.epilogue, lambda acc, s: acc.sum(0), match=r"\(M, N\)")


def test_epilogue_cases_are_the_kernels_reference():
    # each case's expected output is int8_matmul_ref's product with the dequantised weights
    from infer_lib.kernels import int8_matmul_ref
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, generator=g)
    w_q = torch.randint(-127, 128, (32, 8), generator=g, dtype=torch.int8)
    scales = torch.rand(8, generator=g) * 0.02 + 1e-3
    for acc, s, want in ch09._cases():
        torch.testing.assert_close(acc.double() * s.double(), want, rtol=1e-5, atol=1e-5)
    acc = x @ w_q.float()
    torch.testing.assert_close(int8_matmul_ref(x, w_q, scales), acc * scales, rtol=1e-5, atol=1e-5)


def test_crossover(capsys):
    c = ModelConfig.from_preset(ch09.CROSSOVER["preset"])
    want = _weights_bf16(c) / (_kv_per_token(c) * ch09.CROSSOVER["context"])
    ch09.crossover(want)
    assert "✅ Exercise 9.4: correct." in capsys.readouterr().out
    ch09.crossover(...)
    assert_not_attempted(capsys, r"9\.4")
    embed = 2 * c.vocab_size * c.dim / (_kv_per_token(c) * ch09.CROSSOVER["context"])
    for h in (hint(ch09.crossover, 2 * want, match="keys or values only"),
              hint(ch09.crossover, 2 * want, match="4 bytes"),
              hint(ch09.crossover, want / 2, match="both are bf16"),
              hint(ch09.crossover, want / 4, match="GQA"),
              hint(ch09.crossover, want + embed, match="embedding"),
              hint(ch09.crossover, want * 5, match="too large")):
        assert not gives_away(h.split(" is ", 1)[1], want), h
