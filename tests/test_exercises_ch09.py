"""Chapter 9's exercise checks: right answers pass, `...` is "not done yet", typical slips get
their hint, and no hint gives the answer away.

The right answers are worked out here as a learner would: bytes counted from the config's
shapes (every weight once; the cache per sequence), the datasheet bandwidth, one byte per
int8 weight plus a 4-byte scale per output column."""

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
        hint(ch09.roofline, ..., B * t1, match="own cache"),
        hint(ch09.roofline, ..., tB / B, match="per sequence"),
        hint(ch09.roofline, ..., tB * 3, match="too large"),
    ]
    for h in hints:
        assert not gives_away(h.split(" is ", 1)[1], t1, tB), h
    hint(ch09.roofline, "fast", ..., match="expected a number", error=TypeError)


def test_int8_bytes(capsys):
    c = ModelConfig.from_preset(ch09.INT8["preset"])
    bf16 = _weights_bf16(c)
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    outs = [qkv, c.dim, 2 * c.ffn_dim, c.dim]
    ins = [c.dim, c.n_heads * c.head_dim, c.dim, c.ffn_dim]
    int8 = (c.n_layers * sum(k * n + 4 * n for k, n in zip(ins, outs))
            + c.vocab_size * c.dim + 4 * c.vocab_size + (2 * c.n_layers + 1) * c.dim * 2)
    ch09.int8_bytes(bf16 / 1e9, int8 / 1e9)
    assert capsys.readouterr().out.count("✅") == 2
    ch09.int8_bytes(..., ...)
    assert_not_attempted(capsys, r"9\.2")
    hints = [hint(ch09.int8_bytes, 2 * bf16 / 1e9, ..., match="fp32"),
             hint(ch09.int8_bytes, ..., (int8 + c.vocab_size * c.dim) / 1e9, match="head in bf16"),
             hint(ch09.int8_bytes, ..., bf16 / 4 / 1e9, match="not a quarter")]
    for h in hints:
        assert not gives_away(h.split(" is ", 1)[1], bf16 / 1e9, int8 / 1e9), h


def test_dequantize(capsys):
    ch09.dequantize(lambda w, s: w.float() * s)
    assert "✅ Exercise 9.3: correct." in capsys.readouterr().out
    ch09.dequantize(...)
    assert_not_attempted(capsys, r"9\.3")

    def stub(w, s):
        raise NotImplementedError
    ch09.dequantize(stub)
    assert_not_attempted(capsys, r"9\.3")
    hint(ch09.dequantize, lambda w, s: w.float() * s[:, None], match="multiply the rows")
    hint(ch09.dequantize, lambda w, s: w.float() / s, match="divides")
    hint(ch09.dequantize, lambda w, s: w.float(), match="values differ")
    hint(ch09.dequantize, lambda w, s: None, match="return")
    # the reference is the kernel's: int8_matmul_ref of an identity input is the dequantised weight
    from infer_lib.kernels import int8_matmul_ref
    w_q, scales = ch09._tiles()[1]
    eye = torch.eye(w_q.shape[0])
    torch.testing.assert_close(int8_matmul_ref(eye, w_q, scales), ch09._dequantize_reference(w_q, scales))


def test_crossover(capsys):
    c = ModelConfig.from_preset(ch09.CROSSOVER["preset"])
    want = _weights_bf16(c) / (_kv_per_token(c) * ch09.CROSSOVER["context"])
    ch09.crossover(want)
    assert "✅ Exercise 9.4: correct." in capsys.readouterr().out
    ch09.crossover(...)
    assert_not_attempted(capsys, r"9\.4")
    for h in (hint(ch09.crossover, 2 * want, match="keys or values only"),
              hint(ch09.crossover, want / 4, match="GQA"),
              hint(ch09.crossover, want * 5, match="too large")):
        assert not gives_away(h.split(" is ", 1)[1], want), h
