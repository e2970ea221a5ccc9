"""Checks for chapter 4's exercises.

Each check computes its expected answer itself — from ``infer_lib.experiments.attention_sweep``'s
counts (the same ones the chapter uses) or from the exercise's given values below —
so the reader's cell does not give it away. The only numbers typed here are the
exercises' given inputs, named as in the exercise text. A check prints ✅ when the
answer is right, raises ``NotImplementedError`` while it is still ``...``, and
``AssertionError`` with a hint when it is wrong.
"""

from __future__ import annotations

import math

import torch

from .. import roofline
from ..experiments import attention_sweep
from . import check_choice, check_number

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
    check_number(
        score_GB, score / 1e9, name="Exercise 4.1 (score-matrix traffic)", unit="GB",
        mistakes=[(_score_bytes(4) / 1e9, "that counts 4 passes over the scores; count each step: QKᵀ "
                                          "writes them, scale reads and writes, softmax reads and writes, "
                                          "PV reads — 6 passes"),
                  (_score_bytes(5) / 1e9, "that counts 5 passes; QKᵀ writes (1), scale reads and writes (2), "
                                          "softmax reads and writes (2), PV reads (1)"),
                  (_score_bytes(3) / 1e9, "that counts each kernel once; a kernel that reads the scores and "
                                          "writes them moves the matrix twice"),
                  (score / sh["H"] / 1e9, f"that is one head; there are H = {sh['H']} of them"),
                  (score / 2**30, "that is GiB (2**30 bytes); the question asks for GB (1e9 bytes)")])
    check_number(
        ratio, score / flash, name="Exercise 4.1 (ratio to FlashAttention)", unit="×",
        mistakes=[(score / (flash * 3 / 4), "FlashAttention also writes the output: q, k, v read and o "
                                            "written, 4 · B · H · S · D elements"),
                  (flash / score, "upside down: the score traffic divided by FlashAttention's traffic")],
        explain=f"The ratio is 6·S² / (4·S·D) = 1.5·S/D = {score / flash:g}: it grows with S, so the "
                "longer the sequence, the more the score matrix dominates.")


# --- 4.2 ---------------------------------------------------------------------------------

def online_update(m_new, l_new) -> None:
    """Exercise 4.2: the running max and running sum after one more block of the online softmax."""
    __tracebackhide__ = True
    m_want = max(ONLINE_M, *ONLINE_BLOCK)
    check_number(
        m_new, m_want, name="Exercise 4.2 (m_new)", rel=1e-6,
        mistakes=[(ONLINE_M, "that is the old maximum; the new block may hold a larger score")]
        if ONLINE_M != m_want else [])
    l_want = ONLINE_L * math.exp(ONLINE_M - m_want) + sum(math.exp(x - m_want) for x in ONLINE_BLOCK)
    check_number(
        l_new, l_want, name="Exercise 4.2 (l_new)", rel=1e-4,
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


def causal_tiles(skipped, masked) -> None:
    """Exercise 4.3: (query tile, key tile) pairs a bottom-right causal kernel skips, and how many
    of those it runs need the element-wise mask."""
    __tracebackhide__ = True
    t = TILES
    counts = attention_sweep.tile_counts(t["S_q"], t["S_k"], t["BLOCK_M"], t["BLOCK_N"], causal=True)
    total = sum(counts.values())
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
        2 * counts["masked"]: "With BLOCK_M = BLOCK_N and an offset S_k − S_q that is a multiple of the "
                              "block, the diagonal crosses exactly one key tile per query tile",
    })
    check_choice(masked, counts["masked"], name="Exercise 4.3 (masked)", options=options, why=why_masked,
                 explain=f"Of {total} pairs, {counts['full']} run without a mask, {counts['masked']} with "
                         f"it and {counts['skipped']} not at all.")


# --- 4.4 ---------------------------------------------------------------------------------

def flash_kv_reads(tile_MB, total_GB) -> None:
    """Exercise 4.4: bytes of K and V one query-tile program reads (MB), and all programs together (GB)."""
    __tracebackhide__ = True
    f = FLASH_SHAPE
    s = roofline.bytes_per_element(FLASH_DTYPE)
    per_tile = 2 * f["S"] * f["D"] * s                         # the whole K and V of its K/V head
    n_programs = math.ceil(f["S"] / f["BLOCK_M"]) * f["B"] * f["H"]
    check_number(
        tile_MB, per_tile / 1e6, name="Exercise 4.4 (per query tile)", unit="MB",
        mistakes=[(per_tile / 2 / 1e6, "that is K alone; the program streams V through SRAM too"),
                  (per_tile * f["BLOCK_M"] / 1e6, "K and V are read once per query *tile*, not once per query"),
                  (per_tile / 2**20, "that is MiB (2**20 bytes); the question asks for MB (1e6 bytes)")])
    total = n_programs * per_tile
    minimum = 2 * f["B"] * f["H_kv"] * f["S"] * f["D"] * s    # K and V read once each from HBM
    check_number(
        total_GB, total / 1e9, name="Exercise 4.4 (all programs)", unit="GB",
        mistakes=[(total * f["H_kv"] / f["H"] / 1e9,
                   f"GQA shares the K/V *data*, not the programs: each of the H = {f['H']} query heads "
                   "runs its own query tiles"),
                  (per_tile * f["B"] * f["H"] / 1e9, f"there are S / BLOCK_M = {f['S'] // f['BLOCK_M']} query "
                                                     "tiles per head, each reading K and V"),
                  (minimum / 1e9, "that is the HBM minimum (K and V read once); the programs read far more, "
                                  "mostly from L2")],
        explain=f"{total / minimum:g}× the {minimum / 1e6:.1f} MB of K and V (S/BLOCK_M × H/H_kv): the "
                "programs of one head run side by side, so after the first read K and V come from L2.")
