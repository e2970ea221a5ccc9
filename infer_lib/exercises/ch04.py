"""Checks for chapter 4's exercises.

Each check computes its expected answer itself — from ``infer_lib.experiments.attention_sweep``'s
counts (the same ones the chapter uses) or from the exercise's given values below —
so the reader's cell does not give it away. The only numbers typed here are the
exercises' given inputs, named as in the exercise text. A check prints ✅ when the
answer is right, prints "not attempted yet" and returns while the answer is still
``...`` (or the function still raises ``NotImplementedError``), and raises
``AssertionError`` with a hint when it is wrong. A hint names the kind of slip; it
never states the expected value, the quantities that give it, or a function that
computes it.
"""

from __future__ import annotations

import math
import numbers

import torch

from .. import roofline
from ..experiments import attention_sweep

from . import _not_attempted, check_choice, check_function, check_number
from . import wrap_explanation as _wrap

# Exercise 4.1: naive attention, non-causal
NAIVE_SHAPE = {"B": 1, "H": 32, "S": 4096, "D": 128}
NAIVE_DTYPE = torch.bfloat16

# Exercise 4.2: the running state of one row and the next block of its scores
ONLINE_M = 3.0                      # running maximum of the scores seen so far
ONLINE_L = 2.5                      # running sum of exp(x − ONLINE_M) over those scores
ONLINE_BLOCK = (1.0, 4.0, 2.0)      # the next block of scores

# Exercise 4.3: a causal kernel, new queries after a cached prefix (bottom-right alignment)
TILES = {"S_q": 256, "S_k": 1024, "BLOCK_M": 64, "BLOCK_N": 64}

# Exercise 4.4: FlashAttention with grouped-query attention, non-causal
FLASH_SHAPE = {"B": 1, "H": 32, "H_kv": 8, "S": 8192, "D": 128, "BLOCK_M": 128}
FLASH_DTYPE = torch.bfloat16

# Exercise 4.5: a finite m_new below this, for a row that has seen only −inf, is a floor such as
# the kernel's −FLT_MAX (far below any score of the diagnostic case) rather than −inf.
FLOOR_BELOW = -1e4

# Tolerances of the numeric answers, relative: 2% for quantities worked out with rounded
# intermediate values (GB, ratios), 1% for 4.2's hand computation with rounded exponentials.
REL = 0.02
REL_ONLINE = 0.01


def _number(answer, expected, *, name, unit="", rel=REL, mistakes=(), explain=""):
    """``check_number``, but should a generic message state the ratio to the expected value
    (which gives the answer away), only whether the answer is too large or too small is kept.
    For an answer without a unit (``unit=""``), every generic message is replaced so: its
    hints about units (GB vs GiB, unit prefixes) would be beside the point."""
    __tracebackhide__ = True
    try:
        return check_number(answer, expected, name=name, unit=unit, rel=rel, mistakes=mistakes,
                            explain=_wrap(name, explain))
    except AssertionError as err:
        message = str(err)
        if "is not right —" in message:
            raise                               # a named slip: its hint stands
        if unit and "by a factor of" not in message and "not within" not in message:
            raise                               # a generic hint that names no ratio
        u = f" {unit}" if unit else ""
        direction = "too large" if answer > expected else "too small"
        recheck = ("Recheck each factor of your formula and its units." if unit else
                   "Recheck each term of your formula.")
        raise AssertionError(
            f"{name}: {answer:g}{u} is {direction} (the tolerance is ±{rel * 100:g}%). "
            f"{recheck}") from None


# --- 4.1 ---------------------------------------------------------------------------------

def _score_bytes(n_passes: int) -> float:
    sh = NAIVE_SHAPE
    return n_passes * sh["B"] * sh["H"] * sh["S"] ** 2 * roofline.bytes_per_element(NAIVE_DTYPE)


def naive_score_traffic(score_GB, ratio) -> None:
    """Exercise 4.1: HBM bytes (GB) naive attention moves for its score matrix, and how many
    times FlashAttention's whole traffic that is."""
    __tracebackhide__ = True
    sh = NAIVE_SHAPE
    steps = attention_sweep.naive_steps(sh["B"], sh["H"], sh["S"], sh["D"], NAIVE_DTYPE, causal=False)
    flash = attention_sweep.flash_bytes(sh["B"], sh["H"], sh["S"], sh["S"], sh["D"], NAIVE_DTYPE)
    # Every step's traffic minus q, k, v read once and the output written once: the scores' share.
    score = sum(op.bytes for op in steps) - flash
    # Slips: naive attention's whole traffic (q, k, v and the output too), and the causal version's
    # score traffic (its mask step reads and writes the scores once more, and reads the mask).
    whole = score + flash
    causal_steps = attention_sweep.naive_steps(sh["B"], sh["H"], sh["S"], sh["D"], NAIVE_DTYPE, causal=True)
    score_causal = sum(op.bytes for op in causal_steps) - flash
    _number(
        score_GB, score / 1e9, name="Exercise 4.1 (score-matrix traffic)", unit="GB",
        mistakes=[(_score_bytes(4) / 1e9, "that counts 4 passes over the scores: a step that reads "
                                          "the scores and writes them back moves the matrix twice"),
                  (_score_bytes(5) / 1e9, "that counts 5 passes over the scores: one read or write is "
                                          "missing; go through the steps of the exercise one by one"),
                  (_score_bytes(3) / 1e9, "that counts each kernel once; a kernel that reads the scores and "
                                          "writes them moves the matrix twice"),
                  (score / sh["H"] / 1e9, "that is one head: every head has its own score matrix"),
                  (score / 2**30, "that is GiB (2**30 bytes); the question asks for GB (1e9 bytes)"),
                  (whole / 1e9, "that includes the reads of q, k, v and the write of the output: the "
                                "question asks for the score matrix's traffic alone"),
                  (score_causal / 1e9, "that counts a mask step; this attention is not causal, so "
                                       "there is none: the scores go straight from the scale to the "
                                       "softmax"),
                  (score / 1e6, "that is MB (1e6 bytes); the question asks for GB (1e9 bytes)")])
    _number(
        ratio, score / flash, name="Exercise 4.1 (ratio to FlashAttention)", unit="×",
        mistakes=[(score / (flash * 3 / 4), "the fused kernel's traffic leaves out the output, which it "
                                            "also writes once"),
                  (flash / score, "upside down: the score traffic divided by FlashAttention's traffic"),
                  (whole / flash, "that divides naive attention's whole traffic; the numerator is the "
                                  "score matrix's traffic alone, without q, k, v and the output")],
        explain=f"The ratio is 6·S² / (4·S·D) = 1.5·S/D = {score / flash:g}: it grows with S, so the "
                "longer the sequence, the more the score matrix dominates.")


# --- 4.2 ---------------------------------------------------------------------------------

def online_update(m_new, l_new) -> None:
    """Exercise 4.2: the running max and running sum after one more block of the online softmax."""
    __tracebackhide__ = True
    m_want = max(ONLINE_M, *ONLINE_BLOCK)
    _number(
        m_new, m_want, name="Exercise 4.2 (m_new)", rel=REL_ONLINE,
        mistakes=[(ONLINE_M, "that is the old maximum; the new block may hold a larger score")]
        if ONLINE_M != m_want else [])
    l_want = ONLINE_L * math.exp(ONLINE_M - m_want) + sum(math.exp(x - m_want) for x in ONLINE_BLOCK)
    _number(
        l_new, l_want, name="Exercise 4.2 (l_new)", rel=REL_ONLINE,
        mistakes=[(ONLINE_L + sum(math.exp(x - m_want) for x in ONLINE_BLOCK),
                   "the old sum was taken relative to the old maximum: multiply it by exp(m_old − m_new) "
                   "before adding the new block's terms"),
                  (ONLINE_L * math.exp(m_want - ONLINE_M) + sum(math.exp(x - m_want) for x in ONLINE_BLOCK),
                   "the rescaling factor is upside down: exp(m_old − m_new) ≤ 1, it shrinks the old sum"),
                  (ONLINE_L + sum(math.exp(x - ONLINE_M) for x in ONLINE_BLOCK),
                   "that keeps the old maximum; the new sum must be relative to m_new, or the "
                   "exponentials can overflow"),
                  (sum(math.exp(x - m_want) for x in ONLINE_BLOCK),
                   "that drops the scores seen before: add the rescaled old sum")],
        explain="The old sum is rescaled once per block; the kernel does the same to its output "
                "accumulator, so neither ever needs the whole row.")


# --- 4.3 ---------------------------------------------------------------------------------

def _top_left_skipped() -> int:
    """Skipped tiles if the mask were aligned top-left (query i sees keys j ≤ i): a common slip."""
    t = TILES
    skipped = 0
    for m in range(math.ceil(t["S_q"] / t["BLOCK_M"])):
        last_row = min((m + 1) * t["BLOCK_M"], t["S_q"]) - 1
        for n in range(math.ceil(t["S_k"] / t["BLOCK_N"])):
            skipped += n * t["BLOCK_N"] > last_row
    return skipped


def _tile_count(answer, name: str, total: int):
    """``answer`` as an int when it is a whole number of tile pairs (``6`` or ``6.0``); ``...`` and
    ``None`` pass through. Anything else raises a short message, not the list of every option."""
    __tracebackhide__ = True
    if answer is ... or answer is None:
        return answer
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        raise TypeError(f"{name}: expected a whole number of tile pairs, got "
                        f"{type(answer).__name__} {answer!r}")
    if not (math.isfinite(answer) and answer == int(answer)):
        raise ValueError(f"{name}: expected a whole number, got {answer!r}: each (query tile, key "
                         "tile) pair is skipped or run, with or without the mask; count the pairs")
    if not 0 <= answer <= total:
        raise ValueError(f"{name}: {int(answer)} is not a possible count: it lies between 0 and the "
                         "number of (query tile, key tile) pairs")
    return int(answer)


def causal_tiles(skipped, masked) -> None:
    """Exercise 4.3: (query tile, key tile) pairs a bottom-right causal kernel skips, and how many
    of those it runs need the element-wise mask."""
    __tracebackhide__ = True
    t = TILES
    counts = attention_sweep.tile_counts(t["S_q"], t["S_k"], t["BLOCK_M"], t["BLOCK_N"], causal=True)
    total = sum(counts.values())
    skipped = _tile_count(skipped, "Exercise 4.3 (skipped)", total)
    masked = _tile_count(masked, "Exercise 4.3 (masked)", total)
    options = list(range(total + 1))
    by_tile = (f"Go query tile by query tile: tile m holds queries m·{t['BLOCK_M']} … m·{t['BLOCK_M']} + "
               f"{t['BLOCK_M'] - 1}, and query i sees keys j ≤ i + S_k − S_q")
    why_skipped = {n: f"{by_tile}." for n in options}
    why_skipped.update({
        _top_left_skipped(): "That aligns the mask top-left (query i sees keys j ≤ i); here query i sees "
                             f"keys j ≤ i + S_k − S_q = i + {t['S_k'] - t['S_q']}: the queries come after "
                             "a cached prefix",
        total - counts["skipped"]: "That is the number of pairs that run; the question asks for those "
                                   "that are skipped",
        0: "A causal kernel never loads a key tile that every query of the tile is forbidden to see",
    })
    check_choice(skipped, counts["skipped"], name="Exercise 4.3 (skipped)", options=options, why=why_skipped)
    why_masked = {n: "A tile needs the mask when some of its keys are visible to "
                     "some rows of the query tile and not to others." for n in options}
    why_masked.update({
        0: "The tiles on the diagonal hold keys that some rows of the query tile may see and others "
           "may not: they need the element-wise mask",
        2 * counts["masked"]: "That is too many: find the key tile where the first query of a tile stops "
                              "seeing keys and the one where its last query stops; with these block "
                              "sizes and this offset, how many key tiles lie between?",
    })
    check_choice(masked, counts["masked"], name="Exercise 4.3 (masked)", options=options, why=why_masked,
                 explain=_wrap("Exercise 4.3 (masked)", f"Of {total} pairs, {counts['full']} run without a mask, {counts['masked']} with "
                         f"it and {counts['skipped']} not at all."))


# --- 4.4 ---------------------------------------------------------------------------------

def flash_kv_reads(tile_MB, total_GB) -> None:
    """Exercise 4.4: bytes of K and V one query-tile program reads (MB), and all programs together (GB)."""
    __tracebackhide__ = True
    f = FLASH_SHAPE
    s = roofline.bytes_per_element(FLASH_DTYPE)
    per_tile = 2 * f["S"] * f["D"] * s                         # the whole K and V of its K/V head
    n_programs = math.ceil(f["S"] / f["BLOCK_M"]) * f["B"] * f["H"]
    _number(
        tile_MB, per_tile / 1e6, name="Exercise 4.4 (per query tile)", unit="MB",
        mistakes=[(per_tile / 2 / 1e6, "that is K alone; the program streams V through SRAM too"),
                  (per_tile * f["BLOCK_M"] / 1e6, "K and V are read once per query *tile*, not once per query"),
                  (per_tile / 2**20, "that is MiB (2**20 bytes); the question asks for MB (1e6 bytes)"),
                  (per_tile / 1e9, "that is GB (1e9 bytes); this part asks for MB (1e6 bytes)"),
                  (per_tile / 1e3, "that is kB (1e3 bytes); this part asks for MB (1e6 bytes)")])
    total = n_programs * per_tile
    minimum = 2 * f["B"] * f["H_kv"] * f["S"] * f["D"] * s    # K and V read once each from HBM
    _number(
        total_GB, total / 1e9, name="Exercise 4.4 (all programs)", unit="GB",
        mistakes=[(total * f["H_kv"] / f["H"] / 1e9,
                   f"GQA shares the K/V *data*, not the programs: each of the H = {f['H']} query heads "
                   "runs its own query tiles"),
                  (per_tile * f["B"] * f["H"] / 1e9, "that is one program per head; every query tile of a "
                                                     "head is a program of its own, and each reads K and V"),
                  (minimum / 1e9, "that is the HBM minimum (K and V read once); the programs read far more, "
                                  "mostly from L2"),
                  (total / 1e6, "that is MB (1e6 bytes); this part asks for GB (1e9 bytes)"),
                  (total / 2**30, "that is GiB (2**30 bytes); the question asks for GB (1e9 bytes)")],
        explain=f"{total / minimum:g}× the {minimum / 1e6:.1f} MB of K and V (S/BLOCK_M × H/H_kv): the "
                "programs of one head run side by side, so after the first read K and V come from L2.")


# --- 4.5 (coding) ------------------------------------------------------------------------

def _online_softmax_step_ref(m: torch.Tensor, l: torch.Tensor, block: torch.Tensor):
    """One step of the online softmax for R rows at once: the running maximum ``m`` (R,) and
    sum ``l`` (R,) of ``exp(x − m)`` over the scores seen so far, and the next ``block`` (R, N)
    of scores, which may hold −inf (masked keys). Returns ``(m_new, l_new)``. A row that has
    seen only −inf keeps ``m = −inf`` and ``l = 0``: it is shifted by 0 inside the exponentials,
    as the kernel does, so that −inf − (−inf) never makes a NaN."""
    m_new = torch.maximum(m, block.amax(dim=1))
    shift = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
    l_new = l * torch.exp(m - shift) + torch.exp(block - shift[:, None]).sum(dim=1)
    return m_new, l_new


def _step_slips(m, l, block):
    """The usual wrong versions of the step, each with the kind of slip it makes."""
    inf = float("-inf")
    m_new = torch.maximum(m, block.amax(dim=1))
    shift = torch.where(m_new == inf, torch.zeros_like(m_new), m_new)
    new_terms = torch.exp(block - shift[:, None]).sum(dim=1)
    old_shift = torch.where(m == inf, torch.zeros_like(m), m)
    return [
        ((m_new, l + new_terms),
         "the old sum is relative to the old maximum: it has to be rescaled to the new one before "
         "the block's terms are added"),
        ((m_new, l * torch.exp(shift - torch.where(m == inf, shift, m)) + new_terms),
         "the rescaling factor is upside down: it may only shrink the old sum, never grow it"),
        ((m_new, new_terms),
         "l_new forgets the scores seen before: the rescaled old sum belongs in it"),
        ((m, l + torch.exp(block - old_shift[:, None]).sum(dim=1)),
         "the maximum is not updated: the block may hold a larger score, and then its "
         "exponentials can exceed 1 and, in the end, overflow"),
        ((block.amax(dim=1), torch.exp(block - block.amax(dim=1, keepdim=True)).sum(dim=1)),
         "m_new and l_new only look at the new block: the running values carry the scores seen "
         "before"),
    ]


def _step_diagnostic():
    """A small case that tells the slips apart: a row whose maximum grows, one whose maximum
    stays, one that has seen only −inf and gets more, one that meets its first finite score."""
    inf = float("-inf")
    m = torch.tensor([3.0, 0.5, inf, inf])
    l = torch.tensor([2.5, 1.5, 0.0, 0.0])
    block = torch.tensor([[1.0, 4.0, 2.0, inf],
                          [-1.0, 0.0, -2.0, 0.25],
                          [inf, inf, inf, inf],
                          [inf, 0.5, 1.0, inf]])
    return m, l, block


def _as_pair(got, name):
    __tracebackhide__ = True
    if got is None:
        raise AssertionError(f"{name}: the function returned None: does it end with "
                             "`return m_new, l_new`?")
    if not (isinstance(got, (tuple, list)) and len(got) == 2
            and all(isinstance(t, torch.Tensor) for t in got)):
        raise AssertionError(f"{name}: return a pair of tensors, (m_new, l_new); got "
                             f"{type(got).__name__}")
    return got


def _random_step_case(R: int, N: int, seed: int):
    """Fresh rows: random running states (some rows have seen only −inf) and a block of scores
    with masked entries (some rows entirely masked)."""
    g = torch.Generator().manual_seed(seed)
    inf = float("-inf")
    m = 5 * torch.randn(R, generator=g)
    l = 1 + 10 * torch.rand(R, generator=g)                 # ≥ 1: it holds exp(m − m) = 1
    fresh = torch.rand(R, generator=g) < 0.25               # rows that have seen only −inf
    m[fresh], l[fresh] = inf, 0.0
    block = 5 * torch.randn(R, N, generator=g)
    block[torch.rand(R, N, generator=g) < 0.3] = inf        # masked keys
    block[torch.rand(R, generator=g) < 0.2] = inf           # whole rows masked in this block
    return m, l, block


def online_softmax_step(fn) -> bool:
    """Exercise 4.5: the reader's ``online_update(m, l, block)`` against the reference, first on a
    small case that names the usual slips, then on fresh random inputs (``check_function``)."""
    __tracebackhide__ = True
    name = "Exercise 4.5 (online_update)"
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    m, l, block = _step_diagnostic()
    inputs = [t.clone() for t in (m, l, block)]
    try:
        got = fn(*inputs)
    except NotImplementedError:
        return _not_attempted(name, stub)
    if not all(torch.equal(a, b) for a, b in zip(inputs, (m, l, block))):
        raise AssertionError(f"{name}: the function changed its inputs in place; return new "
                             "tensors instead (the caller still needs the old m and l)")
    m_got, l_got = _as_pair(got, name)
    m_want, l_want = _online_softmax_step_ref(m, l, block)
    for t, want, what in ((m_got, m_want, "m_new"), (l_got, l_want, "l_new")):
        if t.shape != want.shape:
            raise AssertionError(f"{name}: {what} has shape {tuple(t.shape)} for {len(m)} rows; "
                                 "reduce over the block's entries (dim=1), one value per row")

    def close(a, b):
        return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6, equal_nan=True)

    if not (close(m_got, m_want) and close(l_got, l_want)):
        for (m_slip, l_slip), hint in _step_slips(m, l, block):
            if close(m_got, m_slip) and close(l_got, l_slip):
                raise AssertionError(f"{name}: {hint}.")
        if (m_got.isnan() | l_got.isnan()).any():
            raise AssertionError(
                f"{name}: NaN for a row that has seen only −inf: −inf − (−inf) is NaN. Such a row "
                "keeps m = −inf and l = 0; shift it by 0 inside the exponentials instead of by −inf")
        seen_nothing = m_want == float("-inf")
        floored = m_got[seen_nothing]
        if close(l_got, l_want) and close(m_got[~seen_nothing], m_want[~seen_nothing]) and bool(
                (floored.isfinite() & (floored < FLOOR_BELOW)).all()):
            raise AssertionError(f"{name}: a row that has seen only −inf returns a huge negative but "
                                 "finite m_new: that is the kernel's −FLT_MAX floor (or one like it). "
                                 "Here m must stay −inf for a row that has seen only −inf")
        if close(l_got, l_want) and not close(m_got, m_want) and close(
                m_got[~seen_nothing], m_want[~seen_nothing]):
            raise AssertionError(f"{name}: a row that has seen only −inf must keep m_new = −inf; "
                                 "the shift by 0 is for the exponentials only")
        wrong = " and ".join(w for w, ok in (("m_new", close(m_got, m_want)),
                                              ("l_new", close(l_got, l_want))) if not ok)
        raise AssertionError(f"{name}: {wrong} differ from the reference on a small case: "
                             "recheck the two formulas of the online softmax, term by term")

    cases = [_random_step_case(R, N, seed) for R, N, seed in ((7, 5, 1), (33, 64, 2), (128, 17, 3))]
    return check_function(lambda *a: torch.stack(tuple(_as_pair(fn(*a), name))),
                          lambda *a: torch.stack(_online_softmax_step_ref(*a)), cases, name=name,
                          atol=1e-5, rtol=1e-4,
                          explain=_wrap(name, "The kernel does the same per tile, with exp2 and a third "
                                              "running quantity, the output accumulator, rescaled by "
                                              "the same factor."))
