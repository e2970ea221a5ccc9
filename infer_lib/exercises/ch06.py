"""Checks for chapter 6's exercises (the KV cache).

Each check computes its expected answer itself — from the model presets
(``ModelConfig.kv_cache_bytes_per_token``, ``num_params``) and the spec table
(``infer_lib.hardware.SPECS``) — so the reader's cell does not give it away. The only
numbers typed here are the exercises' given inputs, named as in the exercise text. A check
prints ✅ when the answer is right, prints "not attempted yet" and returns while the answer
is still ``...`` (or the function still raises ``NotImplementedError``), and raises
``AssertionError`` with a hint when it is wrong. A hint names the kind of slip (the factor 2
of K and V, the layers, query heads for KV heads, bits for bytes, GB for GiB, rounding); it
never states the expected value.
"""

from __future__ import annotations

import math

import torch

from .. import hardware, measure
from ..model import ModelConfig
from . import _not_attempted, check_function, check_number, whole_sequences
from . import wrap_explanation as _wrap

# Exercise 6.1: the KV cache of a batch
CACHE = {"preset": "llama-3-8b", "batch": 16, "context": 8192}
CACHE_DTYPE = torch.bfloat16

# Exercise 6.2: the largest batch beside the weights on one GPU
FIT = {"preset": "llama-3-8b", "gpu": "h100_sxm", "context": 8192}
FIT_DTYPE = torch.bfloat16

# Exercise 6.3: a decode step whose cache lives in host memory, datasheet figures
OFFLOAD = {"preset": "llama-3-8b", "gpu": "h200", "batch": 16, "context": 4096}
OFFLOAD_DTYPE = torch.bfloat16
# The shipped measurement printed under 6.3's solution: a slip is to use it instead of the datasheet
OFFLOAD_MEASURED = ("kv_cache", "h200")

REL = 0.02


def _esize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --- 6.1 ---------------------------------------------------------------------------------

def cache_size(cache_GB) -> bool:
    """Exercise 6.1: the KV cache (GB) of ``CACHE["batch"]`` sequences of ``CACHE["context"]``
    tokens of the preset, in bf16."""
    __tracebackhide__ = True
    name = "Exercise 6.1 (KV cache)"
    cfg = ModelConfig.from_preset(CACHE["preset"])
    L, H, H_kv = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads
    nbytes = cfg.kv_cache_bytes_per_token(CACHE_DTYPE) * CACHE["context"] * CACHE["batch"]
    want = nbytes / 1e9
    mistakes = [
        (want / 2, "off by a factor of 2 — the cache keeps a key *and* a value for every layer, "
                   "KV head and token (and each bf16 number is 2 bytes)"),
        (want * 2, "off by a factor of 2 — is every factor counted once? A bf16 number is 2 "
                   "bytes, and K and V are the only factor of 2"),
        (want / L, "that leaves out the layers: every layer keeps its own keys and values"),
        (want * H / H_kv, "that counts the query heads; the cache holds the key/value heads "
                          "(H_kv), which grouped-query attention makes fewer"),
        (want * 8, "off by a factor of 8 — that counts bits; the question asks for bytes"),
        (nbytes / 2**30, "that is GiB (2**30 bytes); the question asks for GB (1e9 bytes)"),
        (want / CACHE["batch"], "that is one sequence; the batch has several, each with its own "
                                "cache"),
        (want * 1e3, "that is MB (1e6 bytes); the question asks for GB (1e9 bytes)"),
    ]
    return check_number(cache_GB, want, name=name, unit="GB", rel=REL, mistakes=mistakes,
                        explain=_wrap(name, f"{cfg.kv_cache_bytes_per_token(CACHE_DTYPE) // 1024} "
                                            "KiB per token: 2 · L · H_kv · D · 2 bytes."))


# --- 6.2 ---------------------------------------------------------------------------------

def _fit_batch(memory_bytes: float, weights: float, per_sequence: float) -> float:
    return (memory_bytes - weights) / per_sequence


def max_batch(batch) -> bool:
    """Exercise 6.2: the most sequences of ``FIT["context"]`` tokens whose KV cache fits in the
    GPU's memory beside the bf16 weights (activations and fragmentation ignored)."""
    __tracebackhide__ = True
    name = "Exercise 6.2 (largest batch)"
    if batch is ... or batch is None:
        return _not_attempted(name)
    batch = whole_sequences(batch, name)
    cfg = ModelConfig.from_preset(FIT["preset"])
    spec = hardware.SPECS[FIT["gpu"]]
    s = _esize(FIT_DTYPE)
    weights = cfg.num_params() * s
    per_seq = cfg.kv_cache_bytes_per_token(FIT_DTYPE) * FIT["context"]
    memory = spec.memory_bytes            # NVIDIA's memory "GB" are binary: GiB (chapter 1)
    exact = _fit_batch(memory, weights, per_seq)
    want = math.floor(exact)
    slips = [
        (math.ceil(exact), "that rounds up: the last sequence's cache would not fit — round down"),
        (math.floor(_fit_batch(spec.memory_GB * 1e9, weights, per_seq)),
         "that reads the memory as 1e9-byte GB; NVIDIA's memory \"GB\" are binary, GiB "
         "(2**30 bytes each, chapter 1)"),
        (math.floor(memory / per_seq), "that leaves no room for the weights: they stay in memory "
                                       "beside the cache"),
        (math.floor(_fit_batch(memory, weights, per_seq / 2)),
         "the cache of a token holds a key *and* a value in every layer: a factor of 2 is missing"),
        (math.floor(_fit_batch(memory, weights, per_seq * cfg.n_heads / cfg.n_kv_heads)),
         "that counts the query heads; the cache holds only the H_kv key/value heads"),
        (math.floor(_fit_batch(memory, weights / 2, per_seq)),
         "the weights take 2 bytes per parameter in bf16"),
        (math.floor(_fit_batch(memory, weights, per_seq / cfg.n_layers)),
         "that leaves out the layers: every layer keeps its own keys and values"),
        (math.floor(_fit_batch(memory, weights, per_seq / FIT["context"])),
         "that counts tokens; the question asks for whole sequences, each of "
         f"{FIT['context']} tokens"),
    ]
    if batch == want:
        print(f"✅ {name}: correct. " + _wrap(name, f"{spec.memory_GB:g} GiB = {memory / 1e9:.1f} GB "
                                                  f"− {weights / 1e9:.1f} GB of weights leaves room "
                                                  f"for {exact:.1f} caches of {per_seq / 1e9:.2f} GB."))
        return True
    for value, hint in slips:
        if value != want and batch == value:
            raise AssertionError(f"{name}: {int(batch)} is not right — {hint}")
    direction = "too large" if batch > want else "too small"
    raise AssertionError(f"{name}: {int(batch)} is {direction}. Recheck each factor: the memory, "
                         "the weights, and the cache of one sequence.")


# --- 6.3 ---------------------------------------------------------------------------------

def offload_times(pcie_ms, slowdown) -> None:
    """Exercise 6.3: the least time (ms) to bring one decode step's KV cache across PCIe at the
    datasheet rate of one direction, and how many times the time to read it from HBM that is."""
    __tracebackhide__ = True
    cfg = ModelConfig.from_preset(OFFLOAD["preset"])
    spec = hardware.SPECS[OFFLOAD["gpu"]]
    nbytes = cfg.kv_cache_bytes_per_token(OFFLOAD_DTYPE) * OFFLOAD["context"] * OFFLOAD["batch"]
    pcie_one_way = spec.pcie_GBps / 2 * 1e9
    hbm = spec.bandwidth_GBps * 1e9
    want_ms = nbytes / pcie_one_way * 1e3
    doc = measure.load_reference(*OFFLOAD_MEASURED)
    pinned = max(t["GBps"] for t in doc["transfer"] if t["pinned"]) * 1e9   # measured, not datasheet
    measured_hint = ("that uses the measured pinned bandwidth; the question asks for the least time "
                     "from the datasheet (the spec table's PCIe figure, one direction)")
    name = "Exercise 6.3 (time across PCIe)"
    if pcie_ms is ... or pcie_ms is None:
        _not_attempted(name, "replace its `...`")
    else:
        check_number(pcie_ms, want_ms, name=name, unit="ms", rel=REL, mistakes=[
            (want_ms / 2, "the spec table's PCIe figure counts both directions together; the "
                          "cache travels one way, host to device, at half of it"),
            (nbytes / hbm * 1e3, "that is the time to read it from HBM; the cache comes across "
                                 "PCIe"),
            (want_ms / 1e3, "that is seconds; the question asks for ms"),
            (want_ms * 1e3, "that is µs; the question asks for ms"),
            (want_ms * 8, "off by a factor of 8 — bits or bytes?"),
            (want_ms * 2**30 / 1e9, "the cache's bytes and the link's GB/s must use the same "
                                    "unit: GB/s is 1e9 bytes per second"),
            (want_ms / OFFLOAD["batch"], "that is one sequence's cache; the step reads the cache "
                                         "of every sequence of the batch"),
            (want_ms / cfg.n_layers, "that leaves out the layers: every layer keeps its own keys "
                                     "and values"),
            (want_ms * cfg.n_heads / cfg.n_kv_heads,
             "that counts the query heads; the cache holds only the H_kv key/value heads"),
            (nbytes / pinned * 1e3, measured_hint),
        ])
    name = "Exercise 6.3 (slowdown)"
    want = hbm / pcie_one_way
    if slowdown is ... or slowdown is None:
        _not_attempted(name, "replace its `...`")
        return
    check_number(slowdown, want, name=name, unit="", rel=REL, mistakes=[
        (want / 2, "the spec table's PCIe figure counts both directions together; the cache "
                   "travels one way, at half of it"),
        (1 / want, "upside down: the slowdown is the PCIe time over the HBM time, larger than 1"),
        (1 / (want / 2), "upside down, and the PCIe figure counts both directions: the slowdown "
                         "is the PCIe time over the HBM time"),
        (hbm / pinned, measured_hint),
        (doc["device_copy_GBps"] * 1e9 / pinned,
         "that is the measured ratio (device copy over pinned PCIe); the question asks for the "
         "datasheet figures of the spec table"),
    ], explain=_wrap(name, "It is just the ratio of the two bandwidths: the bytes cancel."))


# --- 6.4 (coding) ------------------------------------------------------------------------

def _combine_ref(m1, l1, o1, m2, l2, o2):
    """Two partial softmax results over disjoint sets of keys, merged exactly.

    Each partial has, per row, the maximum score ``m`` (R,), the sum ``l = Σ exp(s − m)`` (R,)
    and the un-normalised output ``o = Σ exp(s − m) v`` (R, D). A partial that saw no key has
    ``m = −inf``, ``l = 0``, ``o = 0``; two such partials merge into one (no NaN)."""
    m = torch.maximum(m1, m2)
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    w1, w2 = torch.exp(m1 - shift), torch.exp(m2 - shift)
    return m, w1 * l1 + w2 * l2, w1[:, None] * o1 + w2[:, None] * o2


def _partial(s: torch.Tensor, v: torch.Tensor):
    """(m, l, o) of the scores ``s`` (R, N) and values ``v`` (N, D), as a split computes them."""
    m = s.amax(dim=1)
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    p = torch.exp(s - shift[:, None])
    return m, p.sum(dim=1), p @ v


def _combine_case(R: int, N1: int, N2: int, D: int, seed: int, empty: bool = False):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(N1 + N2, D, generator=g, dtype=torch.float64)
    s = 4 * torch.randn(R, N1 + N2, generator=g, dtype=torch.float64)
    s[:, N1:] += 3.0 * torch.randn(R, 1, generator=g, dtype=torch.float64)   # splits differ
    if empty:                                     # a row that sees no key of the second split
        s[0, N1:] = float("-inf")
        s[1, :] = float("-inf")                   # a row that sees no key at all
    return (*_partial(s[:, :N1], v[:N1]), *_partial(s[:, N1:], v[N1:]))


def _combine_slips(m1, l1, o1, m2, l2, o2):
    m = torch.maximum(m1, m2)
    shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    w1, w2 = torch.exp(m1 - shift), torch.exp(m2 - shift)
    return [
        ((m, l1 + l2, o1 + o2), "the partials are relative to their own maxima: rescale each to "
                                "the common maximum before adding"),
        ((m, w1 * l1 + w2 * l2, o1 + o2), "the sums are rescaled but the outputs are not: o gets "
                                          "the same factor as l"),
        ((m, l1 + l2, w1[:, None] * o1 + w2[:, None] * o2),
         "the outputs are rescaled but the sums are not: l gets the same factor as o"),
        ((m, (l1 + l2) / 2, (o1 + o2) / 2), "averaging the partials weighs every split equally; "
                                            "each must count by its share of the exponentials"),
    ]


def combine_partials(fn) -> bool:
    """Exercise 6.4: the reader's ``combine(m1, l1, o1, m2, l2, o2)`` against the reference,
    first on a case that names the usual slips, then on fresh random partials (``check_function``)."""
    __tracebackhide__ = True
    name = "Exercise 6.4 (combine)"
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    case = _combine_case(5, 7, 6, 4, seed=0)
    inputs = [t.clone() for t in case]
    try:
        got = fn(*inputs)
    except NotImplementedError:
        return _not_attempted(name, stub)
    if not all(torch.equal(a, b) for a, b in zip(inputs, case)):
        raise AssertionError(f"{name}: the function changed its inputs in place; return new tensors")
    if got is None:
        raise AssertionError(f"{name}: the function returned None: does it end with "
                             "`return m, l, o`?")
    if not (isinstance(got, (tuple, list)) and len(got) == 3
            and all(isinstance(t, torch.Tensor) for t in got)):
        raise AssertionError(f"{name}: return three tensors, (m, l, o); got {type(got).__name__}")
    want = _combine_ref(*case)
    for t, w, what in zip(got, want, ("m", "l", "o")):
        if t.shape != w.shape:
            raise AssertionError(f"{name}: {what} has shape {tuple(t.shape)}, expected "
                                 f"{tuple(w.shape)}")

    def close(a, b):
        return all(torch.allclose(x.double(), y.double(), rtol=1e-6, atol=1e-9)
                   for x, y in zip(a, b))

    if not close(got, want):
        for slip, hint in _combine_slips(*case):
            if close(got, slip):
                raise AssertionError(f"{name}: {hint}.")
        if torch.allclose(got[2].double(), (want[2] / want[1][:, None]).double(), rtol=1e-6):
            raise AssertionError(f"{name}: o comes out normalised (divided by l); keep it "
                                 "un-normalised, as the partials are: the division comes once, "
                                 "after the last combine")
        wrong = [w for w, a, b in zip("mlo", got, want) if not close([a], [b])]
        verb = "differs" if len(wrong) == 1 else "differ"
        raise AssertionError(f"{name}: {' and '.join(wrong)} {verb} from the reference: recheck "
                             "the common maximum and the factor that rescales each partial")
    empty = _combine_case(4, 5, 3, 4, seed=1, empty=True)
    got_empty = fn(*[t.clone() for t in empty])
    if isinstance(got_empty, (tuple, list)) and any(
            isinstance(t, torch.Tensor) and t.isnan().any() for t in got_empty):
        raise AssertionError(f"{name}: NaN for a row that saw no key in either split (m = −inf "
                             "in both): −inf − (−inf) is NaN. Shift such a row by 0 inside the "
                             "exponentials; it keeps m = −inf, l = 0, o = 0")
    want_empty = _combine_ref(*empty)
    if (isinstance(got_empty, (tuple, list)) and len(got_empty) == 3
            and all(isinstance(t, torch.Tensor) for t in got_empty)
            and got_empty[0].shape == want_empty[0].shape):
        none = want_empty[0] == float("-inf")            # rows that saw no key in either split
        if not torch.equal(got_empty[0][none].double(), want_empty[0][none].double()):
            raise AssertionError(f"{name}: a row that saw no key in either split must come out "
                                 "with m = −inf (and l = 0, o = 0): the shift by 0 belongs inside "
                                 "the exponentials only, not in the m you return")
        if not close(got_empty, want_empty):
            wrong = [w for w, a, b in zip("mlo", got_empty, want_empty) if not close([a], [b])]
            verb = "differs" if len(wrong) == 1 else "differ"
            raise AssertionError(f"{name}: {' and '.join(wrong)} {verb} from the reference where a "
                                 "split saw no key of a row (m = −inf, l = 0, o = 0 there): its "
                                 "factor must come out 0, and nothing may become NaN")
    cases = [_combine_case(R, N1, N2, D, seed, empty=R > 3)
             for R, N1, N2, D, seed in ((3, 4, 9, 8, 2), (17, 33, 5, 16, 3), (64, 20, 20, 32, 4))]

    def flat(m, l, o):
        return torch.cat([m[:, None], l[:, None], o], dim=1)

    return check_function(lambda *a: flat(*fn(*a)), lambda *a: flat(*_combine_ref(*a)), cases,
                          name=name, atol=1e-9, rtol=1e-6,
                          explain=_wrap(name, "The combine kernel does the same over all the "
                                              "splits of a (sequence, head) at once, in base 2."))
