"""Checks for chapter 7's exercises (MQA and GQA).

Each check computes its expected answer itself — from the model presets and their variants
with fewer K/V heads (``dataclasses.replace(config, n_kv_heads=...)``,
``ModelConfig.kv_cache_bytes_per_token``, ``model.max_cached_tokens``), the spec table
(``hardware.SPECS``) and the conversion of ``model.gqa`` — so the reader's cell does not give
it away. The only numbers typed here are the exercises' given inputs, named as in the
exercise text. A check prints ✅ when the answer is right, prints "not attempted yet" and
returns while the answer is still ``...`` (or the function still raises
``NotImplementedError``), and raises ``AssertionError`` with a hint when it is wrong. A hint
names the kind of slip (query heads for K/V heads, the factor 2 of K and V, KB for KiB, the
interleaved grouping, the weights of the wrong model, rounding); it never states the
expected value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from .. import hardware
from ..model import ModelConfig, max_cached_tokens
from ..model.gqa import _pool_heads
from . import _not_attempted, check_function, check_number, check_part, whole_sequences
from . import wrap_explanation as _wrap

BF16 = torch.bfloat16
REL = 0.02                 # relative tolerance of every numeric answer

# Exercise 7.1: the cache per token of a multi-head model's GQA-8 and MQA versions, in bf16
CACHE = {"preset": "llama-2-7b", "gqa_kv_heads": 8}

# Exercise 7.2: which K/V head a query head reads, and which query heads share a K/V head
HEADS = {"preset": "llama-3-8b", "query_head": 13, "kv_head": 5}

# Exercise 7.3: the largest batch of the MHA model and of its MQA version on one GPU
FIT = {"preset": "llama-2-7b", "gpu": "a100_80gb", "context": 4096}


def _variant(preset: str, n_kv_heads: int) -> ModelConfig:
    return dataclasses.replace(ModelConfig.from_preset(preset), n_kv_heads=n_kv_heads)


# --- 7.1 ---------------------------------------------------------------------------------

def cache_per_token(gqa_KiB, mqa_KiB) -> None:
    """Exercise 7.1: KiB of bf16 KV cache per token of the ``CACHE["preset"]`` model converted
    to ``CACHE["gqa_kv_heads"]`` K/V heads, and to one (MQA)."""
    __tracebackhide__ = True
    mha = ModelConfig.from_preset(CACHE["preset"])
    L = mha.n_layers
    full = mha.kv_cache_bytes_per_token(BF16) / 2**10            # every query head's K and V
    for answer, n, part in ((gqa_KiB, CACHE["gqa_kv_heads"], f"GQA-{CACHE['gqa_kv_heads']}"),
                            (mqa_KiB, 1, "MQA")):
        want = _variant(CACHE["preset"], n).kv_cache_bytes_per_token(BF16) / 2**10
        mistakes = [
            (full, "that is the multi-head model's cache: the converted model keeps only its "
                   "H_kv key/value heads per layer (the query heads are not cached)"),
            (want / 2, "off by a factor of 2 — every layer caches a key *and* a value per K/V "
                       "head"),
            (want / L, "that leaves out the layers: every layer keeps its own keys and values"),
            (want * 8, "off by a factor of 8 — that counts bits; the question asks for bytes "
                       "(in KiB)"),
            (want * 2**10 / 1e3, "that is KB (1000 bytes); the question asks for KiB (1024 bytes)"),
            (want * 2**10, "that is bytes; the question asks for KiB (1024 bytes)"),
            (want / 2**10, "that is MiB (1024 KiB); the question asks for KiB"),
            (want * 2, "off by a factor of 2 — the cache holds 2-byte numbers; 4 bytes is fp32"),
            (full * (mha.n_heads // n),
             "the cache shrinks by H / H_kv, the number of query heads sharing each K/V head: "
             "divide, do not multiply"),
        ]
        check_part(check_number, answer, want, name=f"Exercise 7.1 ({part})", unit="KiB",
                   rel=REL, mistakes=[(v, h) for v, h in mistakes if v != want],
                   explain=_wrap(f"Exercise 7.1 ({part})",
                                 f"{mha.n_heads // n}× smaller than the multi-head model's."))


# --- 7.2 ---------------------------------------------------------------------------------

def _as_heads(group, name: str) -> list[int]:
    if isinstance(group, torch.Tensor):
        group = group.flatten().tolist()
    if isinstance(group, (str, bytes)) or not hasattr(group, "__iter__"):
        raise TypeError(f"{name}: expected the query heads as a list of whole numbers, got "
                        f"{type(group).__name__} {group!r}")
    heads = list(group)
    if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in heads):
        raise TypeError(f"{name}: expected whole numbers (head indices), got {heads!r}")
    if len(set(heads)) != len(heads):
        raise AssertionError(f"{name}: a query head appears twice in {heads}: list each once")
    return sorted(int(h) for h in heads)


def kv_head_of(kv_head, group) -> None:
    """Exercise 7.2: in the ``HEADS["preset"]`` model, the K/V head that query head
    ``HEADS["query_head"]`` reads, and the query heads that read K/V head ``HEADS["kv_head"]``
    (0-based indices, the layout of ``layers.Attention`` and ``decode_attention``)."""
    __tracebackhide__ = True
    cfg = ModelConfig.from_preset(HEADS["preset"])
    H, H_kv = cfg.n_heads, cfg.n_kv_heads
    G = H // H_kv                                      # query heads per K/V head
    q, j = HEADS["query_head"], HEADS["kv_head"]

    name = "Exercise 7.2 (K/V head)"
    if kv_head is ... or kv_head is None:
        _not_attempted(name, "replace its `...`")
    else:
        if isinstance(kv_head, torch.Tensor) and kv_head.numel() == 1:
            kv_head = kv_head.item()
        if isinstance(kv_head, bool) or not isinstance(kv_head, numbers.Real) \
                or kv_head != int(kv_head):
            raise TypeError(f"{name}: expected a whole number (a head index), got {kv_head!r}")
        want = q // G
        slips = [
            (q % H_kv, "that deals the query heads out in turn (head h to K/V head h mod H_kv); "
                       "here a K/V head serves a block of *consecutive* query heads"),
            (q // H_kv, "that divides by the number of K/V heads; divide by the size of a group, "
                        "the query heads that share one K/V head"),
            (-(-(q + 1) // G), "heads are numbered from 0 here, as in the code: query head 0 "
                               "reads K/V head 0"),
            (q, "that is the multi-head layout, one K/V head per query head; here several query "
                "heads share each K/V head"),
        ]
        if kv_head == want:
            print(f"✅ {name}: correct. " + _wrap(name, f"G = H / H_kv = {G} query heads per K/V "
                                                      "head; K/V head = query head // G."))
        else:
            for value, hint in slips:
                if value != want and kv_head == value:
                    raise AssertionError(f"{name}: {int(kv_head)} is not right — {hint}")
            raise AssertionError(f"{name}: {int(kv_head)} is not right. Work out how many query "
                                 "heads share one K/V head, then which block query head "
                                 f"{q} falls in.")

    name = "Exercise 7.2 (group)"
    if group is ... or group is None:
        _not_attempted(name, "replace its `...`")
        return
    heads = _as_heads(group, name)
    want = list(range(j * G, (j + 1) * G))
    if heads == want:
        print(f"✅ {name}: correct. " + _wrap(name, f"query heads {j}·G … {j}·G + G − 1: the "
                                                  "block the kernel loads as one tile."))
        return
    if heads == sorted(range(j, H, H_kv)):
        raise AssertionError(f"{name}: those are every H_kv-th head (the interleaved layout); "
                             "here a group is a block of consecutive query heads")
    if len(heads) != G:
        hint = ("one K/V head serves H / H_kv query heads" if len(heads) != H_kv else
                "that is as many heads as there are K/V heads; a group has H / H_kv")
        raise AssertionError(f"{name}: {len(heads)} heads, but a group has a different size — "
                             f"{hint}")
    if heads == [h + 1 for h in want]:
        raise AssertionError(f"{name}: off by one — heads are numbered from 0, as in the code")
    if heads == list(range(heads[0], heads[0] + G)) and heads[0] % G == 0:
        raise AssertionError(f"{name}: that is the group of another K/V head: K/V head j serves "
                             "the j-th block of G consecutive query heads, counting from block 0")
    raise AssertionError(f"{name}: {heads} is not the group of K/V head {j}. Recheck which "
                         "block of consecutive query heads it serves.")


# --- 7.3 ---------------------------------------------------------------------------------

def _fit(cfg: ModelConfig, memory: float, context: int, *, weights_of: ModelConfig | None = None,
         cache_scale: float = 1.0) -> float:
    """Sequences of ``context`` tokens whose bf16 cache (times ``cache_scale``: a slip) fits
    beside the bf16 weights (of ``weights_of``, default ``cfg``), unrounded."""
    weights = (weights_of or cfg).num_params() * 2
    return (memory - weights) / (cfg.kv_cache_bytes_per_token(BF16) * context * cache_scale)


def max_batches(mha_batch, mqa_batch) -> None:
    """Exercise 7.3: the most sequences of ``FIT["context"]`` tokens whose bf16 KV cache fits
    beside the bf16 weights on the GPU, for the multi-head ``FIT["preset"]`` and for its MQA
    version (activations and fragmentation ignored): ``model.max_cached_tokens`` over the
    context, the chapter's table."""
    __tracebackhide__ = True
    spec = hardware.SPECS[FIT["gpu"]]
    T, memory = FIT["context"], spec.memory_bytes      # NVIDIA's memory "GB" are GiB
    mha = ModelConfig.from_preset(FIT["preset"])
    mqa = _variant(FIT["preset"], 1)
    common = [
        (lambda c: math.ceil(_fit(c, memory, T)),
         "that rounds up: the last sequence's cache would not fit — round down"),
        (lambda c: math.floor(_fit(c, spec.memory_GB * 1e9, T)),
         "that reads the memory as 1e9-byte GB; NVIDIA's memory \"GB\" are binary, GiB "
         "(2**30 bytes each, chapter 1)"),
        (lambda c: math.floor(memory / (c.kv_cache_bytes_per_token(BF16) * T)),
         "that leaves no room for the weights: they stay in memory beside the cache"),
        (lambda c: math.floor(_fit(c, memory, T, cache_scale=0.5)),
         "the cache of a token holds a key *and* a value in every layer: a factor of 2 is "
         "missing"),
        (lambda c: math.floor(_fit(c, memory, T, cache_scale=8)),
         "off by a factor of 8 in the cache — bits or bytes?"),
        (lambda c: math.floor(_fit(c, memory, T, cache_scale=1 / c.n_layers)),
         "that leaves out the layers: every layer keeps its own keys and values"),
    ]
    for answer, cfg, part, extra in (
            (mha_batch, mha, "MHA", []),
            (mqa_batch, mqa, "MQA", [
                (math.floor(_fit(mqa, memory, T, weights_of=mha)),
                 "that keeps the multi-head model's weights: the MQA version has smaller key and "
                 "value projections (one K/V head), so its weights take less memory too"),
                (math.floor(_fit(mha, memory, T)) * (mha.n_heads // mqa.n_kv_heads),
                 "that multiplies the multi-head batch by H / H_kv; redo the division with the "
                 "MQA model's own weights and cache per sequence (and round once, at the end)"),
                (math.floor(_fit(mha, memory, T)),
                 "that is the multi-head model's batch; the MQA version caches one K/V head per "
                 "layer"),
            ])):
        name = f"Exercise 7.3 ({part})"
        if answer is ... or answer is None:
            _not_attempted(name, "replace its `...`")
            continue
        batch = whole_sequences(answer, name)
        want = max_cached_tokens(cfg, memory) // T
        if batch == want:
            exact = _fit(cfg, memory, T)
            print(f"✅ {name}: correct. " + _wrap(name, f"{spec.memory_GB:g} GiB = "
                                                      f"{memory / 1e9:.1f} GB − "
                                                      f"{cfg.num_params() * 2 / 1e9:.1f} GB of "
                                                      f"weights leaves room for {exact:.1f} "
                                                      "sequences' caches."))
            continue
        for value, hint in extra + [(f(cfg), h) for f, h in common]:
            if value != want and batch == value:
                raise AssertionError(f"{name}: {batch} is not right — {hint}")
        direction = "too large" if batch > want else "too small"
        raise AssertionError(f"{name}: {batch} is {direction}. Recheck each factor: the memory, "
                             "this model's weights, and the cache of one sequence.")


# --- 7.4 (coding) ------------------------------------------------------------------------

def _pool_ref(weight: torch.Tensor, n_kv_heads: int, head_dim: int) -> torch.Tensor:
    """``model.gqa``'s pooling: each group of H_kv / n_kv_heads consecutive heads averaged."""
    H_kv = weight.shape[0] // head_dim
    return _pool_heads(weight, n_kv_heads, H_kv // n_kv_heads, head_dim)


def _labelled(H_kv: int, D: int, d: int) -> torch.Tensor:
    """A K projection whose rows say where they come from: head h, row r, column c holds
    100·h + r + c / 100, so every slip gives numbers of its own."""
    h = torch.arange(H_kv, dtype=torch.float64)[:, None, None]
    r = torch.arange(D, dtype=torch.float64)[None, :, None]
    c = torch.arange(d, dtype=torch.float64)[None, None, :]
    return (100 * h + r + c / 100).reshape(H_kv * D, d)


def _pool_slips(weight: torch.Tensor, n: int, D: int):
    H_kv, d = weight.shape[0] // D, weight.shape[1]
    g = H_kv // n
    w = weight.reshape(H_kv, D, d)
    return [
        (w.reshape(g, n, D, d).mean(0).reshape(n * D, d),
         "that averages every n_kv_heads-th head (the interleaved grouping); a group is a block "
         "of consecutive heads, the ones whose query heads share the new head"),
        (w.reshape(n, g, D, d).sum(1).reshape(n * D, d),
         "that is the sum of the group's heads; the conversion takes their mean"),
        (w.reshape(n, g, D, d)[:, 0].reshape(n * D, d),
         "that keeps the first head of each group; the conversion averages all of them "
         "(Ainslie et al. found the mean better than keeping one head)"),
        (weight.reshape(n, g * D, d).mean(1).repeat_interleave(D, 0),
         "that averages all the rows of a group into one; average head by head, row r of each "
         "head with row r of the others"),
    ]


def mean_pool(fn) -> bool:
    """Exercise 7.4: the reader's ``pool_kv_heads(weight, n_kv_heads, head_dim)`` — a K or V
    projection ``(H_kv·D, d)`` pooled into ``n_kv_heads`` heads, ``(n_kv_heads·D, d)`` —
    first on a labelled case that names the usual slips, then against ``model.gqa``'s pooling
    on fresh random weights (``check_function``)."""
    __tracebackhide__ = True
    name = "Exercise 7.4 (mean-pooling)"
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    H_kv, n, D, d = 8, 2, 4, 3
    weight = _labelled(H_kv, D, d)
    given = weight.clone()
    try:
        got = fn(given, n, D)
    except NotImplementedError:
        return _not_attempted(name, stub)
    if not torch.equal(given, weight):
        raise AssertionError(f"{name}: the function changed the weight it was given; return a "
                             "new tensor (to_gqa leaves the original model untouched)")
    if got is None:
        raise AssertionError(f"{name}: the function returned None: does it end with `return`?")
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: return a tensor, got {type(got).__name__}")
    want = _pool_ref(weight, n, D)
    if got.shape != want.shape:
        if got.numel() == want.numel():
            raise AssertionError(f"{name}: shape {tuple(got.shape)}; return it as the projection's "
                                 "weight, (n_kv_heads · head_dim, d), one block of head_dim rows "
                                 "per new head")
        raise AssertionError(f"{name}: shape {tuple(got.shape)} for {H_kv} heads of {D} rows "
                             f"pooled into {n}: expected (n_kv_heads · head_dim, d)")
    if not torch.allclose(got.double(), want.double(), rtol=1e-6, atol=1e-9):
        for slip, hint in _pool_slips(weight, n, D):
            if torch.allclose(got.double(), slip.double(), rtol=1e-6, atol=1e-9):
                raise AssertionError(f"{name}: {hint}.")
        raise AssertionError(f"{name}: the values differ from the mean of each group of "
                             "consecutive heads: recheck which rows belong to which head and group")
    g = torch.Generator().manual_seed(7)
    cases = [(torch.randn(H * Dh, dm, generator=g), m, Dh)
             for H, m, Dh, dm in ((8, 4, 4, 6), (4, 1, 8, 16), (6, 3, 2, 5), (8, 8, 4, 6),
                                  (32, 8, 16, 24))]
    return check_function(fn, _pool_ref, cases, name=name, atol=1e-6, rtol=1e-5,
                          explain=_wrap(name, "to_gqa does this to k_proj and v_proj of every "
                                              "layer, in fp32, rounded once to the weights' dtype."))
