"""Checks for chapter 9's exercises (a fast decoder end to end).

Each check computes its expected answer itself — from the model presets (``ModelConfig``:
``num_params``, ``kv_cache_bytes_per_token``), the byte count of a decode step
(``experiments.decode.step_bytes``), the spec table (``hardware.SPECS``) and, for the code the
reader writes, the product with the dequantised weights that ``kernels.int8_matmul_ref``
computes (``x @ (w_q · scales)``) — so the reader's cell does not give it away. The only numbers typed here
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
REL = 0.02                 # relative tolerance of the numeric answers (9.2's extra bytes: REL_EXTRA)
REL_EXTRA = 0.01

# Exercise 9.1: the bandwidth roofline of a decode step, tokens/s at batch 1 and in total at batch 16
ROOFLINE = {"preset": "llama-3-8b", "gpu": "h100_sxm", "context": 4096, "batch": 16}

# Exercise 9.2: the bytes of weights a decode step reads in bf16 (GB), and how many more than half
# of that it reads in int8 (MB; all projections and the output head in int8 with one fp32 scale
# per output column; norms stay bf16)
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

    def slips(batch):
        return [
            (_tokens_per_s(config, batch, 0, bw), "that reads the weights only: each sequence's cache "
                                                   "is read every step too"),
            (_tokens_per_s(config, batch, ctx, bw, 2 * step_bytes(config, batch, ctx, BF16)),
             "that counts 4 bytes a number (fp32); the model runs in bf16, 2 bytes"),
            (_tokens_per_s(config, batch, ctx, bw, step_bytes(config, batch, ctx, BF16)
                           + config.vocab_size * config.dim * 2),
             "that also counts the embedding table: a step looks up B of its rows, not all of it"),
            (_tokens_per_s(config, batch, ctx, bw * 1.024 ** 3), "that reads the bandwidth in GiB/s "
                                                                 "(1.024³); it is in decimal units, "
                                                                 "1 GB/s = 1e9 B/s"),
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
                   (_tokens_per_s(config, B, ctx, bw) / B,
                    "that is per sequence (the steps per second); the question asks for the total: "
                    "each step gives one token to every sequence")],
               explain=f"{want / B:.0f} tokens/s per sequence: the weights are read once for all "
                       f"{B} sequences, the caches once each.")


# --- 9.2 ---------------------------------------------------------------------------------

def _int8_weight_bytes(config: ModelConfig, *, head: bool = True, scale_bytes: int = 4,
                       per_input: bool = False, norm_bytes: int = 2) -> int:
    """Bytes of weights a decode step reads with int8 projections (``K·N`` int8 + one scale of
    ``scale_bytes`` per output column, or per input row with ``per_input``), the head int8 too
    with ``head``, the norms' weights at ``norm_bytes`` each."""
    d, F, L, V = config.dim, config.ffn_dim, config.n_layers, config.vocab_size
    qkv_out = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
    shapes = [(d, qkv_out), (config.n_heads * config.head_dim, d), (d, 2 * F), (F, d)]
    if head:
        shapes_head = [(d, V)]
        bf16_rest = 0
    else:
        shapes_head = []
        bf16_rest = 2 * d * V
    every = L * shapes + shapes_head
    scaled = sum((k if per_input else n) for k, n in every)
    total = sum(k * n for k, n in every) + scale_bytes * scaled + bf16_rest
    return total + (2 * L + 1) * d * norm_bytes


def int8_bytes(bf16_GB, extra_MB) -> None:
    """Exercise 9.2: the bytes of weights one decode step of ``INT8["preset"]`` reads in bf16, in
    GB (``step_bytes`` at context 0); and with every projection *and the output head* in int8 (one
    byte a weight, plus one fp32 scale per output column), the norms' weights staying bf16: how
    many MB (1e6 bytes) more than exactly half of the bf16 bytes."""
    __tracebackhide__ = True
    config = ModelConfig.from_preset(INT8["preset"])
    bf16 = step_bytes(config, 1, 0, BF16)
    half = bf16 / 2
    GB, MB = 1e9, 1e6
    check_part(check_number, bf16_GB, bf16 / GB, name="Exercise 9.2 (bf16)", unit="GB", rel=REL,
               mistakes=[(2 * bf16 / GB, "that is fp32, 4 bytes a weight; bf16 has 2"),
                         (bf16 / 2 / GB, "that counts one byte a weight; bf16 has 2"),
                         ((bf16 + 2 * config.vocab_size * config.dim) / GB,
                          "that also counts the embedding table: a step looks up B of its rows, not "
                          "all of it")],
               explain="Every weight once a step: the floor of a step's bytes, whatever the batch.")
    if isinstance(extra_MB, (int, float)) and not isinstance(extra_MB, bool) and extra_MB < 0:
        raise AssertionError("Exercise 9.2 (int8): int8 cannot read less than half of bf16 — one byte "
                             "a weight is exactly half of two, and the scales and norms only add")
    want = (_int8_weight_bytes(config) - half) / MB

    def extra(**kw):
        return (_int8_weight_bytes(config, **kw) - half) / MB

    check_part(check_number, extra_MB, want, name="Exercise 9.2 (int8)", unit="MB", rel=REL_EXTRA,
               mistakes=[(extra(scale_bytes=0), "that leaves the scales out: one fp32 scale per output "
                                                "column is read too"),
                         (extra(per_input=True), "that gives a scale to each input row; the scales "
                                                 "are per output column (per N)"),
                         (extra(scale_bytes=2), "the scales are fp32, 4 bytes each"),
                         (extra(norm_bytes=1), "that puts the norms in int8 too; they stay bf16, "
                                               "2 bytes a weight"),
                         (extra(scale_bytes=0, norm_bytes=1), "that is exactly half of bf16: add "
                                                              "what int8 does not halve"),
                         (extra(head=False),
                          "that is about the output head's size too much: either it keeps the head "
                          "in bf16 (here it is int8 too), or it counts the embedding table as well (a "
                          "step looks up B of its rows, not all of it)")],
               explain=f"int8 reads {half / MB + want:,.0f} MB in all, {bf16 / (half + want * MB):.3f}× "
                       "fewer bytes than bf16: the scales and the bf16 norms barely matter, so at "
                       "batch 1 int8 can speed a step up by about 2× at most.")


# --- 9.3 ---------------------------------------------------------------------------------

def _cases():
    """(acc, scales) for the epilogue, with the output it must give: ``x @ (w_q · scales)``,
    the product with the dequantised weights (``kernels.int8_matmul_ref``), in float64."""
    g = torch.Generator().manual_seed(9)
    cases = []
    for M, K, N in ((4, 16, 4), (3, 32, 8), (1, 7, 5)):
        x = torch.randn(M, K, generator=g, dtype=torch.float64)
        w_q = torch.randint(-127, 128, (K, N), generator=g, dtype=torch.int8)
        scales = (torch.rand(N, generator=g, dtype=torch.float64) * 0.02 + 1e-3).float()
        acc = (x @ w_q.double()).float()                    # the kernel's fp32 accumulator
        want = x @ (w_q.double() * scales.double())        # (M, N)
        cases.append((acc, scales, want))
    return cases


def epilogue(fn) -> None:
    """Exercise 9.3: ``fn(acc, scales)`` — ``acc`` the ``(M, N)`` fp32 sum of ``x @ w_q`` that
    the int8 kernel accumulates (the int8 weights converted exactly, no scale yet), ``scales``
    the ``(N,)`` fp32 scales of the output columns — returns the ``(M, N)`` product with the
    weights they stand for, ``x @ (w_q · scales)``."""
    __tracebackhide__ = True
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        _not_attempted("Exercise 9.3", stub)
        return
    for acc, scales, want in _cases():
        try:
            got = fn(acc.clone(), scales.clone())
        except NotImplementedError:
            _not_attempted("Exercise 9.3", stub)
            return
        except RuntimeError as err:
            if acc.shape[0] != acc.shape[1] and "size of tensor" in str(err):
                raise AssertionError("Exercise 9.3: the shapes do not broadcast: there is one scale per "
                                     "output column (per N), so scale along the last dimension") from None
            raise
        if got is None:
            raise AssertionError("Exercise 9.3: the function returned None: does it end with `return`?")
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise AssertionError(f"Exercise 9.3: expected an (M, N) tensor like acc, got {shape}")
        g = got.double()
        close = dict(rtol=1e-5, atol=1e-5)
        if torch.allclose(g, want, **close):
            continue
        slips = [(acc.double() * scales.double()[:, None] if acc.shape[0] == acc.shape[1] else None,
                  "the scales multiply the rows; there is one scale per output column (per N), so "
                  "scale along the last dimension"),
                 (acc.double() / scales.double(), "that divides by the scale; quantize_int8 divided, "
                                                  "so the product multiplies"),
                 (acc.double(), "that leaves the scales out: acc is the product with the int8 "
                                "numbers, not yet with the weights they stand for"),
                 (acc.double() * scales.double().sum(), "each column has its own scale; that uses "
                                                        "their sum")]
        for value, hint in slips:
            if value is not None and torch.allclose(g, value, **close):
                raise AssertionError(f"Exercise 9.3: {hint}")
        raise AssertionError("Exercise 9.3: the values differ from x @ (w_q · scales), the product "
                             "with the dequantised weights")
    cases = _cases()
    wants = {id(acc): want for acc, _, want in cases}      # the same tensors check_function passes

    def reference(acc, scales):
        return wants[id(acc)]

    check_function(fn, reference, [(acc, scales) for acc, scales, _ in cases], name="Exercise 9.3",
                   atol=1e-5, rtol=1e-5,
                   explain="One multiply per output element, after the whole sum: a column's scale "
                           "is common to all its K terms, so the kernel converts the int8 weights "
                           "exactly and never forms w_q · scales — K times fewer multiplies than "
                           "scaling every weight.")


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
        (2 * want, "that is twice too large: either it counts keys or values only (the cache holds "
                   "both: the 2 of 2 · layers · kv_heads · head_dim), or it counts the weights at 4 "
                   "bytes and the cache at 2 (both are bf16)"),
        (want / 2, "that counts the cache at 4 bytes a number and the weights at 2, or keys and "
                   "values twice; both are bf16, 2 bytes, and the cache holds one key and one value"),
        (weights / (per_seq * config.n_heads / config.n_kv_heads),
         "that gives every query head its own K/V head; this model shares each K/V head among "
         f"{config.n_heads // config.n_kv_heads} query heads (GQA)"),
        ((weights + 2 * config.vocab_size * config.dim) / per_seq,
         "that also counts the embedding table: a step looks up B of its rows, not all of it"),
    ], explain="Past it, the caches outweigh the weights and a step's time grows with the batch; "
               "below it, a bigger batch is nearly free.")
