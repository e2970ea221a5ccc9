"""Checks for chapter 10's exercises (beyond one GPU: tensor parallelism and its communication).

Each check computes its expected answer itself — from the model presets, the spec table
(``hardware.SPECS``), the sharding rules of ``infer_lib.parallel`` (``check_shardable``,
``shard_tensor``) and its cost model (``parallel.cost``: the bytes a rank holds, the ring
all-reduce, the predicted decode step) — so the reader's cell does not give it away. The only
numbers typed here are the exercises' given inputs, named as in the exercise text. A check
prints ✅ when the answer is right, prints "not attempted yet" and returns while the answer is
still ``...`` (or the function still raises ``NotImplementedError``), and raises
``AssertionError`` with a hint when it is wrong. A hint names the kind of slip (the KV cache
left out, a count rounded down, GB for GiB, a GPU count that does not divide the heads, the
F-wide hidden units for the d-wide activations, one phase of the ring instead of two, rows and
columns of ``nn.Linear``'s weight swapped, an interleaved split, a piece of another dtype, N
ring steps for N − 1, the bidirectional link figure, the ring's steps left out of the latency);
it never states the expected value.
"""

from __future__ import annotations

import math

import torch

from .. import hardware
from ..model import ModelConfig
from ..parallel import check_shardable, cost, shard_tensor
from ..roofline import ring_allreduce_bytes
from . import _not_attempted, check_function, check_number, check_part
from . import wrap_explanation as _wrap, merge_slips as _merged

BF16 = torch.bfloat16
BF16_BYTES = 2
REL = 0.02                 # relative tolerance of every answer that is not a count

# Exercise 10.1: the fewest GPUs that hold the bf16 weights and the bf16 KV cache of `batch`
# sequences of `context` tokens, by memory alone and for tensor parallelism
FIT = {"preset": "llama-3-70b", "gpu": "a100_80gb", "batch": 128, "context": 8192}

# Exercise 10.2: the all-reduces of one decode step of `batch` sequences over `world_size` ranks
ALLREDUCE = {"preset": "llama-3-70b", "batch": 24, "world_size": 4}

# Exercise 10.3: the reader's split of a linear layer's weight for one rank; the labelled case
SPLIT = {"out_features": 12, "in_features": 8, "world_size": 4, "rank": 1}

# Exercise 10.4: the ring steps of a decode step on `more` ranks, the time its bytes take on the
# link on `fewer` ranks at zero latency, and the latency per ring step at which `more` ranks
# decode no faster than `fewer`
BREAK_EVEN = {"preset": "llama-3-70b", "gpu": "h200", "batch": 64, "context": 4096,
              "link": "nvlink", "fewer": 4, "more": 8}

#: the splits of exercise 10.3, Megatron's names: a column-parallel layer splits its outputs
#: (the rows of ``nn.Linear.weight``), a row-parallel layer its inputs (the columns)
SPLITS = ("column", "row")


def _rank_bytes(config: ModelConfig, world_size: int, tokens: int) -> int:
    """Bytes one rank of ``world_size`` holds: its bf16 weights — what a decode step reads
    (``cost.rank_weight_bytes``) plus its rows of an untied input embedding — and the bf16 KV
    cache of its K/V heads for ``tokens`` tokens (``cost.rank_kv_bytes``)."""
    embedding = 0 if config.tie_embeddings else config.vocab_size // world_size * config.dim
    return (cost.rank_weight_bytes(config, world_size, BF16) + embedding * BF16_BYTES
            + cost.rank_kv_bytes(config, tokens, 1, world_size, BF16))


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _not_gib(want: float, what: str) -> list[tuple[float, str]]:
    """Answers 7% off ``want`` (KiB): the generic hint would blame GB for GiB, which cannot
    happen in a KiB answer; these say so instead (listed after the named slips, which win)."""
    hint = (f"7% off, but not a unit slip: the answer is in KiB throughout (KiB and KB differ by "
            f"2.4%, and no GB is involved) — recheck {what}")
    return [(want * 1.024**3, hint), (want / 1.024**3, hint)]


def _shardable(config: ModelConfig, n: int) -> bool:
    try:
        check_shardable(config, n)
    except ValueError:
        return False
    return True


# --- 10.1 --------------------------------------------------------------------------------

def min_gpus(by_memory, for_tp) -> None:
    """Exercise 10.1: for ``FIT["preset"]`` in bf16 serving ``FIT["batch"]`` sequences of
    ``FIT["context"]`` tokens on ``FIT["gpu"]``: the fewest GPUs whose memory together holds the
    weights and the KV cache (nothing else counted), and the fewest tensor parallelism can
    split the model over (``parallel.check_shardable`` accepts the count, and each rank's share,
    ``_rank_bytes``, fits one GPU)."""
    __tracebackhide__ = True
    cfg = ModelConfig.from_preset(FIT["preset"])
    spec = hardware.SPECS[FIT["gpu"]]
    memory = spec.memory_bytes                             # NVIDIA's memory "GB" are GiB
    tokens = FIT["batch"] * FIT["context"]
    weights = cfg.num_params() * BF16_BYTES
    cache = cfg.kv_cache_bytes_per_token(BF16) * tokens
    total = weights + cache
    want = math.ceil(total / memory)
    name = "Exercise 10.1 (by memory)"
    slips = [
        (math.ceil(weights / memory), "that leaves out the KV cache: the cache of every sequence "
                                      "sits in GPU memory beside the weights"),
        (math.floor(total / memory), "that rounds down: the last part of the weights and cache "
                                     "would have no GPU — round up"),
        (math.ceil((weights + cache / 2) / memory), "the cache of a token holds a key *and* a "
                                                    "value in every layer: a factor of 2 is "
                                                    "missing"),
        (math.ceil(total / (spec.memory_GB * 1e9)), "that reads the memory as 1e9-byte GB; "
                                                    "NVIDIA's memory \"GB\" are binary, GiB "
                                                    "(2**30 bytes each, chapter 1)"),
        (math.ceil((2 * weights + cache) / memory), "that counts 4-byte (fp32) weights; bf16 "
                                                    "weights take 2 bytes each"),
        (math.ceil((weights + 8 * cache) / memory), "off by a factor of 8 in the cache — bits or "
                                                    "bytes?"),
    ]
    check_part(check_number, by_memory, want, name=name, rel=0, integer=True,
               mistakes=_merged(slips, want),
               explain=_wrap(name, f"{total / 1e9:.1f} GB of weights and cache over "
                                   f"{memory / 1e9:.1f} GB per GPU."))

    name = "Exercise 10.1 (for tensor parallelism)"
    if for_tp is ... or for_tp is None:
        _not_attempted(name, "replace its `...`")
        return
    fits = [n for n in range(1, 8 * cfg.n_heads + 1)
            if _shardable(cfg, n) and _rank_bytes(cfg, n, tokens) <= memory]
    tp = fits[0]
    got = for_tp.item() if isinstance(for_tp, torch.Tensor) and for_tp.numel() == 1 else for_tp
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise TypeError(f"{name}: expected a whole number of GPUs, got {type(got).__name__} {got!r}")
    if not (math.isfinite(got) and got == int(got) and got >= 1):
        raise AssertionError(f"{name}: {got!r} is not a whole number of GPUs: a rank is one GPU")
    n = int(got)
    if n == tp:
        print(f"✅ {name}: correct. " + _wrap(name, f"{FIT['preset']} splits over {_gpus(n)} "
                                                  f"({_rank_bytes(cfg, n, tokens) / 1e9:.1f} GB "
                                                  "each); fewer do not fit or do not divide."))
        return
    if not _shardable(cfg, n):
        raise AssertionError(
            f"{name}: tensor parallelism cannot split {FIT['preset']} over {_gpus(n)} — N must "
            f"divide the {cfg.n_heads} query heads (each rank computes whole heads), the MLP's "
            "hidden units and the vocabulary, and divide the K/V heads or be a multiple of "
            "them (parallel.check_shardable says which fails)")
    if _rank_bytes(cfg, n, tokens) > memory:
        raise AssertionError(
            f"{name}: " + ("one GPU's memory does not hold the weights and the cache"
                           if n == 1 else f"with {_gpus(n)} each rank would hold more than one "
                                          "GPU's memory") +
            ": fewer GPUs than the weights and the cache need (count each rank's share: with "
            "more ranks than K/V heads, the ranks sharing a head each keep a copy of its cache)")
    raise AssertionError(f"{name}: {_gpus(n)} work, but fewer would do: find the smallest count "
                         "that the heads, the MLP and the vocabulary divide by and whose "
                         "shares fit")


# --- 10.2 --------------------------------------------------------------------------------

def allreduce_bytes(allreduces, payload_KiB, sent_KiB) -> None:
    """Exercise 10.2: one decode step (one new token per sequence) of ``ALLREDUCE["batch"]``
    sequences of ``ALLREDUCE["preset"]`` in bf16 over ``ALLREDUCE["world_size"]`` ranks, split as
    ``infer_lib.parallel`` splits it: how many all-reduces the step makes, the payload of one
    (KiB), and the KiB each rank sends in a ring all-reduce of it
    (``roofline.ring_allreduce_bytes``)."""
    __tracebackhide__ = True
    cfg = ModelConfig.from_preset(ALLREDUCE["preset"])
    B, N, L = ALLREDUCE["batch"], ALLREDUCE["world_size"], cfg.n_layers
    count = cost.predict_decode_step(cfg, B, 1, N, hbm_bandwidth=1.0, link_bandwidth=1.0)["allreduces"]
    payload = B * cfg.dim * BF16_BYTES                     # the (B, 1, d) activations
    sent = ring_allreduce_bytes(payload, N)
    name = "Exercise 10.2 (all-reduces)"
    check_part(check_number, allreduces, count, name=name, rel=0, mistakes=_merged([
        (2 * L, "the vocabulary-parallel embedding all-reduces too: each rank looks up only "
                "the tokens in its range, and the sum puts every row together"),
        (L, "there are two per layer: one after the attention's o_proj, one after the MLP's "
            "down_proj"),
        (L + 1, "there are two per layer (after o_proj and after down_proj), plus the "
                "embedding's"),
        (2 * L + 2, "the output head gathers its logits (an all-gather), it does not all-reduce"),
        (4 * L + 1, "the column-parallel layers (q, k, v, gate, up) need no communication: "
                    "only the two row-parallel layers of a block sum their partial outputs"),
    ], count), explain=_wrap(name, "two per layer and one for the embedding, each waiting for "
                                   "the matmul before it."))
    KiB = 2**10
    name = "Exercise 10.2 (payload)"
    check_part(check_number, payload_KiB, payload / KiB, name=name, unit="KiB", rel=REL,
               mistakes=_merged([
                   (B * cfg.ffn_dim * BF16_BYTES / KiB,
                    "that uses the MLP's hidden units F: down_proj's output, the tensor the MLP's "
                    "all-reduce sums, is d wide"),
                   (payload / N / KiB, "every rank's partial sum is full width d: a row-parallel "
                                       "layer splits its inputs, not its outputs"),
                   (cfg.dim * BF16_BYTES / KiB, "that is one sequence: a decode step carries one "
                                                "token of each of the batch's sequences"),
                   (payload * 2 / KiB, "off by a factor of 2 — bf16 numbers are 2 bytes; 4 is "
                                       "fp32"),
                   (payload * 8 / KiB, "off by a factor of 8 — bits or bytes?"),
                   (payload / 1e3, "that is KB (1000 bytes); the question asks for KiB (1024 "
                                   "bytes)"),
                   (payload, "that is bytes; the question asks for KiB (1024 bytes)"),
                   *_not_gib(payload / KiB, "the factors B, d and the bytes per number"),
               ], payload / KiB),
               explain=_wrap(name, "B · d · 2 bytes: a token's activations for every sequence "
                                   "of the batch."))
    name = "Exercise 10.2 (sent per rank)"
    check_part(check_number, sent_KiB, sent / KiB, name=name, unit="KiB", rel=REL,
               mistakes=_merged([
                   (payload / KiB, "that is the payload itself; a ring passes chunks of it "
                                   "around twice, N − 1 steps to sum (reduce-scatter) and N − 1 "
                                   "to share the sums (all-gather)"),
                   (payload * (N - 1) / N / KiB, "that is one of the ring's two phases: add the "
                                                 "all-gather's N − 1 steps to the "
                                                 "reduce-scatter's"),
                   (2 * payload / KiB, "each of the 2(N − 1) steps moves one chunk, payload / N: "
                                       "2(N − 1)/N payloads in all, which comes near twice the "
                                       "payload only for many ranks"),
                   (payload * (2 * N - 1) / N / KiB, "a ring over N ranks takes N − 1 steps per "
                                                     "phase, 2(N − 1) in all, not 2N − 1"),
                   (N * payload / KiB, "a rank sends chunks of the payload, not a copy to every "
                                       "other rank"),
                   (2 * sent / KiB, "that counts what a rank receives as well as what it sends; "
                                    "the question asks for the bytes sent (as many again come in "
                                    "over the other direction of the link)"),
                   ((N - 1) * payload / KiB, "each step moves one chunk, payload / N, not the "
                                             "whole payload"),
                   (2 * (N - 1) * payload / KiB, "each step moves one chunk, payload / N, not the "
                                                 "whole payload"),
                   (count * sent / KiB, "that is every all-reduce of the step together; the "
                                        "question asks for one all-reduce"),
                   (count * 2 * sent / KiB, "that is every all-reduce of the step, counting what "
                                            "comes in as well as what goes out; the question asks "
                                            "for the bytes one all-reduce sends"),
                   (sent / 1e3, "that is KB (1000 bytes); the question asks for KiB (1024 "
                                "bytes)"),
                   *_not_gib(sent / KiB, "how many chunks of payload / N a rank sends"),
               ], sent / KiB),
               explain=_wrap(name, f"2 · (N − 1) / N = {2 * (N - 1) / N:g} payloads: the "
                                   "payload itself at N = 2, approaching twice the payload as N "
                                   "grows."))


# --- 10.3 (coding) -----------------------------------------------------------------------

def _split_ref(weight: torch.Tensor, split: str, rank: int, world_size: int) -> torch.Tensor:
    """``parallel.shard_tensor``'s piece for rank ``rank``: the MLP's gate_proj (column-parallel:
    outputs) or down_proj (row-parallel: inputs) of a config whose sizes match ``weight``."""
    out_f, in_f = weight.shape
    N = world_size
    if split == "column":
        name, dim, ffn = "layers.0.mlp.gate_proj.weight", in_f, out_f
    else:
        name, dim, ffn = "layers.0.mlp.down_proj.weight", out_f, in_f
    cfg = ModelConfig(vocab_size=N, dim=dim, n_layers=1, n_heads=N, head_dim=2, ffn_dim=ffn)
    return shard_tensor(name, weight, cfg, rank, N)


def _labelled_weight(out_f: int, in_f: int) -> torch.Tensor:
    """Element (o, i) holds 100·o + i, so every slip gives numbers of its own."""
    o = torch.arange(out_f, dtype=torch.float64)[:, None]
    i = torch.arange(in_f, dtype=torch.float64)[None, :]
    return 100 * o + i


def _split_slips(weight: torch.Tensor, split: str, r: int, N: int):
    """What the usual slips make of ``weight`` for rank ``r`` of ``N``, each with its hint."""
    dim = 0 if split == "column" else 1
    other = "row" if split == "column" else "column"
    size = weight.shape[dim] // N

    def piece(k, d=dim):
        s = weight.shape[d] // N
        return weight.narrow(d, k * s, s) if 0 <= k < N else None

    swapped = piece(r, 1 - dim) if weight.shape[1 - dim] % N == 0 else None
    return [
        (swapped, f"that is the {other}-parallel split: a {split}-parallel layer splits its "
                  + ("outputs, the rows of nn.Linear's (out, in) weight" if split == "column"
                     else "inputs, the columns of nn.Linear's (out, in) weight")),
        (weight.index_select(dim, torch.arange(r, weight.shape[dim], N)),
         "that takes every N-th row or column (interleaved); a rank holds one contiguous block: "
         "whole heads, or a block of hidden units"),
        (piece(r - 1), "ranks are numbered from 0: rank 0 holds the first block"),
        (piece(r + 1), "ranks are numbered from 0: rank 0 holds the first block, rank r the "
                       "(r + 1)-th"),
        (weight.split(N, dim=dim)[r] if r < len(weight.split(N, dim=dim)) else None,
         "torch.split takes the size of each piece, not the number of pieces (torch.chunk "
         "takes the number)"),
        (weight, "that is the whole matrix: each rank keeps 1/N of it"),
        (weight.narrow(dim, r * size, size).T, "keep nn.Linear's layout, (out, in): the piece "
                                               "is used as F.linear(x, piece)"),
    ]


def split_weight(fn) -> bool:
    """Exercise 10.3: the reader's ``split_weight(weight, split, rank, world_size)`` — rank
    ``rank``'s piece of a linear layer's ``(out, in)`` weight, split ``"column"`` (outputs) or
    ``"row"`` (inputs) into ``world_size`` contiguous blocks — first on a labelled case that
    names the usual slips, then against ``parallel.shard_tensor`` on fresh random weights
    (``check_function``)."""
    __tracebackhide__ = True
    name = "Exercise 10.3 (split a weight)"
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    out_f, in_f, N, r = (SPLIT[k] for k in ("out_features", "in_features", "world_size", "rank"))
    weight = _labelled_weight(out_f, in_f)
    for split in SPLITS:
        given = weight.clone()
        try:
            got = fn(given, split, r, N)
        except NotImplementedError:
            return _not_attempted(name, stub)
        if not torch.equal(given, weight):
            raise AssertionError(f"{name}: the function changed the weight it was given; return "
                                 "a piece of it (a view or a copy), leave the whole intact")
        if got is None:
            raise AssertionError(f"{name}: the function returned None: does it end with `return`?")
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{name}: return a tensor, got {type(got).__name__}")
        if got.dtype != weight.dtype:
            raise AssertionError(f"{name} ({split}): the piece is {got.dtype}, the weight "
                                 f"{weight.dtype}: return the weight's own numbers, no .float(), "
                                 ".bfloat16() or .to() — a rank computes with the weight's dtype")
        want = _split_ref(weight, split, r, N)
        if got.shape == want.shape and torch.equal(got.double(), want):
            continue
        for slip, hint in _split_slips(weight, split, r, N):
            if slip is not None and got.shape == slip.shape and torch.equal(got.double(), slip):
                raise AssertionError(f"{name} ({split}): {hint}.")
        if got.shape != want.shape:
            raise AssertionError(f"{name} ({split}): shape {tuple(got.shape)} for a "
                                 f"({out_f}, {in_f}) weight over {N} ranks: a {split}-parallel "
                                 "piece keeps the other dimension whole and 1/N of this one")
        raise AssertionError(f"{name} ({split}): the values are not rank {r}'s block: recheck "
                             "which rows or columns a rank holds")
    g = torch.Generator().manual_seed(10)
    cases = [(torch.randn(o, i, generator=g), split, rank, n)
             for o, i, n in ((16, 6, 2), (12, 20, 4), (64, 48, 8), (9, 15, 3), (5, 7, 1))
             for split in SPLITS for rank in sorted({0, n // 2, n - 1})
             if (o if split == "column" else i) % n == 0]
    ok = check_function(fn, _split_ref, cases, name=name, atol=0, rtol=0,
                        explain=_wrap(name, "the column pieces' outputs, side by side, are the "
                                            "layer's outputs; the row pieces' partial outputs "
                                            "add up to them: that sum is the all-reduce."))
    if ok:                                                   # the reason the pairing works
        x = torch.randn(3, in_f, generator=g, dtype=weight.dtype)
        full = x @ weight.T
        pieces = {split: [fn(weight, split, k, N) for k in range(N)] for split in SPLITS}
        for split, group in pieces.items():
            if any(not isinstance(p, torch.Tensor) or p.dtype != weight.dtype for p in group):
                raise AssertionError(f"{name} ({split}): some ranks' pieces are not tensors of "
                                     f"the weight's dtype ({weight.dtype}): return the weight's "
                                     "own numbers for every rank")
        columns = torch.cat([x @ p.T for p in pieces["column"]], dim=-1)
        rows = sum(x[:, k * in_f // N:(k + 1) * in_f // N] @ p.T
                   for k, p in enumerate(pieces["row"]))
        torch.testing.assert_close(columns, full)
        torch.testing.assert_close(rows, full)
    return ok


# --- 10.4 --------------------------------------------------------------------------------

def _step(cfg: ModelConfig, n: int, latency: float, link_factor: float = 1.0) -> dict:
    """``parallel.cost``'s decode step for exercise 10.4 on ``n`` ranks, the link's one-way
    bandwidth scaled by ``link_factor`` (2: the spec table's bidirectional figure)."""
    b = BREAK_EVEN
    spec = hardware.SPECS[b["gpu"]]
    return cost.predict_decode_step(
        cfg, b["batch"], b["context"], n, hbm_bandwidth=spec.bandwidth_GBps * 1e9,
        link_bandwidth=cost.link_bandwidth(spec, b["link"]) * link_factor if n > 1 else None,
        latency=latency)


def _step_s(cfg: ModelConfig, n: int, latency: float) -> float:
    return _step(cfg, n, latency)["step_s"]


def _link_s(step: dict) -> float:
    return step["allreduce_s"] + step["allgather_s"]


def break_even(ring_steps, link_us, latency_us) -> None:
    """Exercise 10.4: with the cost model of ``parallel.cost.predict_decode_step`` (weights and
    cache at the spec table's HBM bandwidth, ring collectives over one direction of the link,
    ``latency`` paid at every step of a ring), for ``BREAK_EVEN["preset"]`` decoding
    ``BREAK_EVEN["batch"]`` sequences of ``BREAK_EVEN["context"]`` tokens on
    ``BREAK_EVEN["gpu"]`` over ``BREAK_EVEN["link"]``: (a) the ring steps of one decode step on
    ``BREAK_EVEN["more"]`` ranks (the times it pays the latency), (b) the µs its collectives'
    bytes take on the link on ``BREAK_EVEN["fewer"]`` ranks at zero latency, (c) the latency per
    ring step in µs at which ``BREAK_EVEN["more"]`` ranks decode exactly as fast as
    ``BREAK_EVEN["fewer"]``."""
    __tracebackhide__ = True
    b = BREAK_EVEN
    cfg = ModelConfig.from_preset(b["preset"])
    few, many, L = b["fewer"], b["more"], cfg.n_layers
    # the step time grows linearly in the latency: its slope is the number of ring steps
    steps = {n: round(_step_s(cfg, n, 1.0) - _step_s(cfg, n, 0.0)) for n in (1, few, many)}
    count = 2 * L + 1                                             # all-reduces per step

    name = "Exercise 10.4 (ring steps)"
    N = many
    check_part(check_number, ring_steps, steps[many], name=name, rel=0, integer=True,
               mistakes=_merged([
                   (count * 2 * N + N, "a ring over N ranks takes N − 1 steps per phase: each "
                                       "rank passes on a chunk from each of the N − 1 others, "
                                       "not N"),
                   (count * (N - 1) + (N - 1), "an all-reduce is two phases of a ring, "
                                               "reduce-scatter and all-gather: 2(N − 1) steps"),
                   (2 * L * 2 * (N - 1) + (N - 1), "the vocabulary-parallel embedding "
                                                   "all-reduces too: 2L + 1 all-reduces"),
                   (count * 2 * (N - 1), "the logits' all-gather is a ring too: add its "
                                         "N − 1 steps"),
                   (count * 2 * (N - 1) + 2 * (N - 1), "an all-gather is one phase of a ring: "
                                                       "N − 1 steps, not 2(N − 1)"),
                   (count + 1, "that counts the collectives; the ring model pays the latency "
                               "at every step of a ring, 2(N − 1) per all-reduce and N − 1 "
                               "for the all-gather"),
                   (steps[few], f"that is for {few} ranks; the question asks for {many}"),
               ], steps[many]),
               explain=_wrap(name, "2(N − 1) per all-reduce, 2L + 1 all-reduces, and N − 1 "
                                   "for the logits' all-gather."))

    name = "Exercise 10.4 (link time)"
    at_few = _step(cfg, few, 0.0)
    link = _link_s(at_few)
    payload = b["batch"] * cfg.dim * BF16_BYTES
    unsplit = count * payload / cost.link_bandwidth(hardware.SPECS[b["gpu"]], b["link"])
    check_part(check_number, link_us, link * 1e6, name=name, unit="µs", rel=REL,
               mistakes=_merged([
                   (_link_s(_step(cfg, few, 0.0, link_factor=2)) * 1e6,
                    "that uses the spec table's figure, which counts both directions of the "
                    "link; a ring sends in one direction while it receives from the other, so "
                    "each rank's sending runs at half of it"),
                   (at_few["allreduce_s"] * 1e6, "the logits' all-gather crosses the link too: "
                                                 "each rank sends its B · V/N logits around "
                                                 "the ring"),
                   ((unsplit + at_few["allgather_s"]) * 1e6,
                    "a ring all-reduce sends 2(N − 1)/N of the payload per rank, not the "
                    "payload once"),
                   (_link_s(_step(cfg, many, 0.0)) * 1e6, f"that is for {many} ranks; the "
                                                          f"question asks for {few}"),
                   (at_few["memory_s"] * 1e6, "that is the time of the HBM reads; the question "
                                              "asks for the collectives' bytes on the link"),
                   (at_few["step_s"] * 1e6, "that is the whole step; the question asks for the "
                                            "collectives' bytes on the link only"),
                   (0.0, "at zero latency the bytes still take their time: payload over the "
                         "link's bandwidth, 2(N − 1) chunks per all-reduce"),
               ], link * 1e6),
               explain=_wrap(name, f"{link / at_few['step_s']:.0%} of the step: at this batch "
                                   "the bytes on the link are small beside the HBM reads."))

    name = "Exercise 10.4 (break-even latency)"
    saved = _step_s(cfg, few, 0.0) - _step_s(cfg, many, 0.0)          # s, at zero latency
    want = saved / (steps[many] - steps[few]) * 1e6
    calls = count + 1                                               # all-reduces + the all-gather
    memory_only = (_step(cfg, few, 0.0)["memory_s"] - _step(cfg, many, 0.0)["memory_s"])
    shift = abs(memory_only / saved - 1)
    check_part(check_number, latency_us, want, name=name, unit="µs", rel=REL, mistakes=_merged([
        (saved / calls * 1e6, "that is the saving spread over the collectives, one latency per "
                              "call; the model pays the latency at every step of a ring, "
                              "2(N − 1) per all-reduce and N − 1 per all-gather, so a call on "
                              "more ranks costs more latencies"),
        ((_step_s(cfg, 1, 0.0) - _step_s(cfg, many, 0.0)) / steps[many] * 1e6,
         f"that compares {many} ranks with one GPU; the question compares them with {few}"),
        (saved / (steps[many] - steps[few]) * 2e6, "a ring all-reduce has two phases, "
                                                   "reduce-scatter and all-gather: 2(N − 1) "
                                                   "steps, not N − 1"),
        (saved / steps[many] * 1e6, f"the {few} ranks pay latencies too: compare the two "
                                    "step times, each with its own count of ring steps"),
    ], want), explain=_wrap(name, f"below it, {many} ranks beat {few}; above it, the "
                                  f"{steps[many] - steps[few]} extra ring steps of a decode "
                                  "step cost more than the smaller shares of weights and cache "
                                  f"save. The link's bandwidth moves it by {shift:.1%}: in the "
                                  "ring model the latency decides."))
