"""Checks for chapter 9's exercises (a fast decoder end to end).

Each check computes its expected answer itself — from the model presets (``ModelConfig``:
``num_params``, ``kv_cache_bytes_per_token``), the byte count of a decode step
(``experiments.decode.step_bytes``), the spec table (``hardware.SPECS``) and, for the code the
reader writes, the dequantisation of ``kernels.int8_matmul_ref`` (``w_q · scales``, one scale
per output column) — so the reader's cell does not give it away. The only numbers typed here
are the exercises' given inputs, named as in the exercise text. A check prints ✅ when the
answer is right, prints "not attempted yet" and returns while the answer is still ``...`` (or
the function still raises ``NotImplementedError``), and raises ``AssertionError`` with a hint
when it is wrong. A hint names the kind of slip (the cache left out, fp32's 4 bytes, the
embedding counted, the batch forgotten, the head left in 16 bits, scales on the wrong axis); it
never states the expected value.
"""

from __future__ import annotations

import torch

from .. import hardware
from ..experiments.decode import step_bytes
from ..model import ModelConfig
from . import _not_attempted, check_function, check_number, check_part

BF16 = torch.bfloat16
REL = 0.02                 # relative tolerance of every numeric answer

# Exercise 9.1: the bandwidth roofline of a decode step, tokens/s at batch 1 and in total at batch 16
ROOFLINE = {"preset": "llama-3-8b", "gpu": "h100_sxm", "context": 4096, "batch": 16}

# Exercise 9.2: the bytes of weights a decode step reads, bf16 and int8 (all projections and
# the output head in int8 with one fp32 scale per output column; norms stay bf16), in GB
INT8 = {"preset": "llama-3-8b"}

# Exercise 9.4: the batch at which the cache a step reads equals its weights
CROSSOVER = {"preset": "llama-3-8b", "context": 4096}


def _tokens_per_s(config: ModelConfig, batch: int, context: int, GBps: float, nbytes=None) -> float:
    nbytes = step_bytes(config, batch, context, BF16) if nbytes is None else nbytes
    return batch / (nbytes / (GBps * 1e9))


# --- 9.1 ---------------------------------------------------------------------------------

def roofline(tokens_per_s_b1, tokens_per_s_batch) -> None:
    """Exercise 9.1: ``ROOFLINE["preset"]`` in bf16 decoding on ``ROOFLINE["gpu"]`` (its datasheet
    bandwidth), every sequence ``ROOFLINE["context"]`` tokens into its cache: the most tokens/s
    a step can give at batch 1, and in total at batch ``ROOFLINE["batch"]``, if it only had to
    read its bytes (``step_bytes``: the weights once, the head's matrix included, the
    embedding table not; each sequence's cache) at that bandwidth."""
    __tracebackhide__ = True
    config = ModelConfig.from_preset(ROOFLINE["preset"])
    spec = hardware.SPECS[ROOFLINE["gpu"]]
    bw, ctx, B = spec.bandwidth_GBps, ROOFLINE["context"], ROOFLINE["batch"]
    weights = step_bytes(config, 1, 0, BF16)
    kv = config.kv_cache_bytes_per_token(BF16) * ctx

    def slips(batch):
        return [
            (_tokens_per_s(config, batch, 0, bw), "that reads the weights only: each sequence's cache "
                                                   "is read every step too"),
            (_tokens_per_s(config, batch, ctx, bw, 2 * step_bytes(config, batch, ctx, BF16)),
             "that counts 4 bytes a number (fp32); the model runs in bf16, 2 bytes"),
            (_tokens_per_s(config, batch, ctx, bw, step_bytes(config, batch, ctx, BF16)
                           + config.vocab_size * config.dim * 2),
             "that also counts the embedding table: a step looks up B of its rows, not all of it"),
            (1 / ((weights + kv * batch) / (bw * 1e9)), "that is steps per second; each step "
                                                          "gives one token per sequence"),
            (_tokens_per_s(config, batch, ctx, bw * 1.024 ** 4), "the bandwidth is in decimal units "
                                                                 "(1 GB/s = 1e9 B/s)"),
        ]

    check_part(check_number, tokens_per_s_b1, _tokens_per_s(config, 1, ctx, bw),
                    name="Exercise 9.1 (batch 1)", unit="tokens/s", rel=REL, mistakes=slips(1),
                    explain="Weights and one sequence's cache at the datasheet bandwidth: the most a "
                            "single stream can get, before any overhead.")
    want = _tokens_per_s(config, B, ctx, bw)
    check_part(check_number, tokens_per_s_batch, want, name=f"Exercise 9.1 (batch {B})", unit="tokens/s",
               rel=REL, mistakes=slips(B) + [
                   (B * _tokens_per_s(config, 1, ctx, bw),
                    "that multiplies the batch-1 rate by the batch: the weights are shared by the "
                    "batch, but every sequence brings its own cache"),
                   (_tokens_per_s(config, B, ctx, bw) / B, "that is per sequence; the question asks "
                                                          "for the total")],
               explain=f"{want / B:.0f} tokens/s per sequence: the weights are read once for all "
                       f"{B} sequences, the caches once each.")


# --- 9.2 ---------------------------------------------------------------------------------

def _int8_weight_bytes(config: ModelConfig, *, head: bool = True) -> int:
    """Bytes of weights a decode step reads with int8 projections (``K·N`` int8 + ``N`` fp32
    scales each), the head int8 too with ``head``, the norms in bf16."""
    d, F, L = config.dim, config.ffn_dim, config.n_layers
    qkv_out = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
    shapes = [(d, qkv_out), (config.n_heads * config.head_dim, d), (d, 2 * F), (F, d)]
    projections = L * sum(k * n + 4 * n for k, n in shapes)
    head_bytes = (d * config.vocab_size + 4 * config.vocab_size) if head else 2 * d * config.vocab_size
    norms = (2 * L + 1) * d * 2
    return projections + head_bytes + norms


def int8_bytes(bf16_GB, int8_GB) -> None:
    """Exercise 9.2: the bytes of weights one decode step of ``INT8["preset"]`` reads, in GB (1e9
    bytes): in bf16 (``step_bytes`` at context 0), and with every projection *and the output
    head* in int8 (one byte a weight, plus one fp32 scale per output column), the norms'
    weights staying bf16."""
    __tracebackhide__ = True
    config = ModelConfig.from_preset(INT8["preset"])
    bf16 = step_bytes(config, 1, 0, BF16)
    int8 = _int8_weight_bytes(config)
    GB = 1e9
    check_part(check_number, bf16_GB, bf16 / GB, name="Exercise 9.2 (bf16)", unit="GB", rel=REL,
               mistakes=[(2 * bf16 / GB, "that is fp32, 4 bytes a weight; bf16 has 2"),
                         (bf16 / 2 / GB, "that counts one byte a weight; bf16 has 2"),
                         ((bf16 + 2 * config.vocab_size * config.dim) / GB,
                          "that also counts the embedding table: a step looks up B of its rows, not "
                          "all of it")],
               explain="Every weight once a step: the floor of a step's bytes, whatever the batch.")
    check_part(check_number, int8_GB, int8 / GB, name="Exercise 9.2 (int8)", unit="GB", rel=REL,
               mistakes=[(bf16 / 2 / GB, "close: add the fp32 scales (4 bytes per output column) and "
                                         "keep the norms in bf16 — or is that exactly half?"),
                         (_int8_weight_bytes(config, head=False) / GB,
                          "that keeps the output head in bf16; here it is int8 too"),
                         (bf16 / 4 / GB, "int8 is one byte a weight: a half of bf16, not a quarter")],
               explain=f"{bf16 / int8:.2f}× fewer bytes than bf16: at batch 1, where the weights "
                       "are nearly all a step reads, the most int8 can speed a step up.")


# --- 9.3 ---------------------------------------------------------------------------------

def _dequantize_reference(w_q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The dequantised tile, as ``int8_matmul``'s kernel computes it in registers: ``w_q (K, N)``
    int8 times its column's scale ``scales (N,)``, in fp32."""
    return w_q.to(torch.float32) * scales.to(torch.float32)[None, :]


def _tiles():
    g = torch.Generator().manual_seed(9)
    cases = []
    for K, N in ((4, 4), (16, 8), (3, 5)):
        w_q = torch.randint(-127, 128, (K, N), generator=g, dtype=torch.int8)
        scales = torch.rand(N, generator=g) * 0.02 + 1e-3
        cases.append((w_q, scales))
    return cases


def dequantize(fn) -> None:
    """Exercise 9.3: ``fn(w_q, scales)`` turns a ``(K, N)`` int8 tile of weights and the ``(N,)``
    fp32 scales of its columns into the fp32 weights it stands for (``int8_matmul``'s
    dequantisation line)."""
    __tracebackhide__ = True
    if fn is ... or fn is None:
        _not_attempted("Exercise 9.3", "write the function (its body still raises NotImplementedError)")
        return
    w_q, scales = _tiles()[0]
    try:
        got = fn(w_q, scales)
    except NotImplementedError:
        _not_attempted("Exercise 9.3", "write the function (its body still raises NotImplementedError)")
        return
    if isinstance(got, torch.Tensor) and got.shape == w_q.shape:
        rows = w_q.to(torch.float32) * scales[:, None]                 # a square tile hides the shape slip
        if torch.allclose(got.float(), rows):
            raise AssertionError("Exercise 9.3: the scales multiply the rows; there is one scale per "
                                 "output column (per N), so scale along the last dimension")
        if torch.allclose(got.float(), w_q.to(torch.float32) / scales[None, :]):
            raise AssertionError("Exercise 9.3: that divides by the scale; quantize_int8 divided, so "
                                 "dequantising multiplies")
    check_function(fn, _dequantize_reference, _tiles(), name="Exercise 9.3", atol=1e-6, rtol=1e-6,
                   explain="One multiply per weight, in registers, after the int8 bytes arrived: "
                           "the kernel reads half the bytes of bf16 and pays nothing it can see.")


# --- 9.4 ---------------------------------------------------------------------------------

def crossover(batch) -> None:
    """Exercise 9.4: the batch at which the cache a decode step of ``CROSSOVER["preset"]`` (bf16)
    reads, every sequence ``CROSSOVER["context"]`` tokens long, equals the weights it reads — a
    fractional batch is fine."""
    __tracebackhide__ = True
    config = ModelConfig.from_preset(CROSSOVER["preset"])
    ctx = CROSSOVER["context"]
    weights = step_bytes(config, 1, 0, BF16)
    per_seq = config.kv_cache_bytes_per_token(BF16) * ctx
    want = weights / per_seq
    check_number(batch, want, name="Exercise 9.4", rel=REL, mistakes=[
        (weights / (per_seq / 2), "that counts keys or values only: the cache holds both (the 2 of "
                                  "2 · layers · kv_heads · head_dim)"),
        (weights / (per_seq * config.n_heads / config.n_kv_heads),
         "that gives every query head its own K/V head; this model shares each K/V head among "
         f"{config.n_heads // config.n_kv_heads} query heads (GQA)"),
        (config.num_params() * 2 / per_seq / 2, "the weights are in bf16 too: 2 bytes each on both sides"),
    ], explain="Past it, the caches outweigh the weights and a step's time grows with the batch; "
               "below it, a bigger batch is nearly free.")
