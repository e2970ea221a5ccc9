"""Chapter 11's exercise checks (the serving appendix): right answers pass, `...` is "not done
yet", typical slips get their hint, answers of the wrong kind are refused, and no hint gives the
answer away.

The right answers are worked out here as a learner would: static batches scheduled by hand from
the trace's lengths, blocks as ⌈n / BLOCK⌉ per sequence, the cache per token from the preset's
shapes (2 · L · H_kv · D · 2 bytes), the memory from the spec table's GiB, and the block table
looked up by hand.
"""

import math

import pytest
import torch

from conftest import assert_not_attempted, assert_not_given, hint_matching as hint
from infer_lib import hardware
from infer_lib.exercises import NOT_ATTEMPTED, ch11
from infer_lib.model import ModelConfig
from infer_lib.serving import synthetic_trace


# --- 11.1 --------------------------------------------------------------------------------

def _static_by_hand():
    """(idle slots, padding tokens) of exercise 11.1, batch by batch."""
    reqs = synthetic_trace(**ch11.STATIC_TRACE)
    B = ch11.STATIC_BATCH
    idle = padding = 0
    for i in range(0, len(reqs), B):
        batch = reqs[i:i + B]
        outs = [r.max_new_tokens for r in batch]
        prompts = [len(r.prompt) for r in batch]
        idle += sum(max(outs) - o for o in outs)          # rows that finished, still stepping
        padding += sum(max(prompts) - p for p in prompts)
    return idle, padding


def test_static_waste_right(capsys):
    idle, padding = _static_by_hand()
    assert idle > 0 and padding > 0               # the trace shows both wastes
    ch11.static_waste(idle, padding)
    out = capsys.readouterr().out
    assert out.count("✅") == 2 and "(idle slots): correct" in out and "(padding): correct" in out
    ch11.static_waste(float(idle), torch.tensor(padding))
    assert capsys.readouterr().out.count("✅") == 2


def test_static_waste_not_attempted(capsys):
    ch11.static_waste(..., ...)
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 2 and "✅" not in out
    ch11.static_waste(_static_by_hand()[0], ...)
    assert_not_attempted(capsys, r"11\.1 \(padding\)")


def test_static_waste_slips():
    reqs = synthetic_trace(**ch11.STATIC_TRACE)
    idle, padding = _static_by_hand()
    useful = sum(r.max_new_tokens for r in reqs)
    longest = max(r.max_new_tokens for r in reqs)
    hint(ch11.static_waste, idle + useful, ..., match="counts every slot")
    hint(ch11.static_waste, useful, ..., match="produce a requested token; the question asks for the "
                                             "others")
    hint(ch11.static_waste, len(reqs) * longest - useful, ..., match="as one batch|its own longest")
    hint(ch11.static_waste, 0, ..., match="idle on")
    hint(ch11.static_waste, idle + 0.5, ..., match="whole number")
    hint(ch11.static_waste, "many", ..., match="expected a number", error=TypeError)
    longest_prompt = max(len(r.prompt) for r in reqs)
    prompts = sum(len(r.prompt) for r in reqs)
    hint(ch11.static_waste, ..., len(reqs) * longest_prompt - prompts, match="its own batch")
    hint(ch11.static_waste, ..., prompts, match="prompts' own tokens")
    hint(ch11.static_waste, ..., padding + idle, match="padding only")
    hint(ch11.static_waste, ..., 0, match="padded to the longest")


def test_static_waste_hints_do_not_give_the_answer():
    reqs = synthetic_trace(**ch11.STATIC_TRACE)
    idle, padding = _static_by_hand()
    useful = sum(r.max_new_tokens for r in reqs)
    hints = [hint(ch11.static_waste, idle + useful, ..., match="every slot"),
             hint(ch11.static_waste, 0, ..., match="idle on"),
             hint(ch11.static_waste, 3 * idle, ..., match="."),
             hint(ch11.static_waste, ..., 0, match="padded"),
             hint(ch11.static_waste, ..., 3 * padding, match=".")]
    for h in hints:
        assert_not_given(h.split(":", 1)[1], idle, padding)


# --- 11.2 --------------------------------------------------------------------------------

def _blocks_by_hand():
    bs, lengths = ch11.BLOCKS["block_size"], ch11.BLOCKS["lengths"]
    blocks = sum(math.ceil(n / bs) for n in lengths)
    return blocks, blocks * bs - sum(lengths)


def test_blocks_held_right(capsys):
    blocks, empty = _blocks_by_hand()
    ch11.blocks_held(blocks, empty)
    out = capsys.readouterr().out
    assert out.count("✅") == 2
    ch11.blocks_held(torch.tensor(blocks), float(empty))
    assert capsys.readouterr().out.count("✅") == 2


def test_blocks_held_not_attempted(capsys):
    ch11.blocks_held(..., ...)
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 2 and "✅" not in out


def test_blocks_held_slips():
    bs, lengths = ch11.BLOCKS["block_size"], ch11.BLOCKS["lengths"]
    # the lengths hold what the slips need: an exact multiple of the block, and a lone token
    assert any(n % bs == 0 for n in lengths) and any(n < bs for n in lengths)
    hint(ch11.blocks_held, sum(n // bs for n in lengths), ..., match="rounds down")
    hint(ch11.blocks_held, sum(n // bs + 1 for n in lengths), ..., match="not k \\+ 1")
    hint(ch11.blocks_held, math.ceil(sum(lengths) / bs), ..., match="pools the tokens")
    hint(ch11.blocks_held, sum(lengths), ..., match="counts tokens")
    hint(ch11.blocks_held, ..., sum(bs - n % bs for n in lengths), match="fills its last block")
    hint(ch11.blocks_held, ..., 0, match="partly empty")
    hint(ch11.blocks_held, ..., len(lengths) * (bs - 1), match="the most")


def test_blocks_held_hints_do_not_give_the_answer():
    blocks, empty = _blocks_by_hand()
    bs, lengths = ch11.BLOCKS["block_size"], ch11.BLOCKS["lengths"]
    hints = [hint(ch11.blocks_held, sum(n // bs for n in lengths), ..., match="round"),
             hint(ch11.blocks_held, 5 * blocks, ..., match="."),
             hint(ch11.blocks_held, ..., 0, match="empty"),
             hint(ch11.blocks_held, ..., 5 * empty, match=".")]
    for h in hints:
        assert_not_given(h.split(":", 1)[1], blocks, empty)


# --- 11.3 --------------------------------------------------------------------------------

def _reserve_by_hand(per_token_factor=1.0, memory_unit=2**30, weights=True, rounded=True):
    """(reserved GB, paged GB, contiguous fit, paged fit) of exercise 11.3, from the formulas."""
    r = ch11.RESERVE
    cfg = ModelConfig.from_preset(r["preset"])
    per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2 * per_token_factor
    reqs = synthetic_trace(**r["trace"])
    lengths = [len(q.prompt) + q.max_new_tokens for q in reqs]
    bs, S_max = r["block_size"], r["max_seq_len"]

    def held(n):
        return (math.ceil(n / bs) * bs if rounded else n) * per_token

    reserved = r["batch"] * S_max * per_token
    paged = sum(held(n) for n in lengths[:r["batch"]])
    budget = hardware.SPECS[r["gpu"]].memory_GB * memory_unit - (cfg.num_params() * 2 if weights else 0)
    contiguous = int(budget // (S_max * per_token))
    fitted = 0
    for n in lengths:
        if held(n) > budget:
            break
        budget -= held(n)
        fitted += 1
    return reserved / 1e9, paged / 1e9, contiguous, fitted


def test_reservation_right(capsys):
    answers = _reserve_by_hand()
    ch11.reservation(*answers)
    out = capsys.readouterr().out
    assert out.count("✅") == 4
    reserved, paged, contiguous, fitted = answers
    assert fitted > 5 * contiguous                # the exercise's point
    ch11.reservation(reserved * 1.01, paged * 1.005, float(contiguous), torch.tensor(fitted))
    assert capsys.readouterr().out.count("✅") == 4


def test_reservation_not_attempted(capsys):
    ch11.reservation(..., ..., ..., ...)
    out = capsys.readouterr().out
    assert out.count(NOT_ATTEMPTED) == 4 and "✅" not in out


def test_reservation_slips():
    reserved, paged, contiguous, fitted = _reserve_by_hand()
    cfg = ModelConfig.from_preset(ch11.RESERVE["preset"])
    G = cfg.n_heads // cfg.n_kv_heads
    hint(ch11.reservation, reserved / 2, ..., ..., ..., match="keys or values only")
    hint(ch11.reservation, reserved * G, ..., ..., ..., match="GQA")
    hint(ch11.reservation, reserved / cfg.n_layers, ..., ..., ..., match="one layer")
    hint(ch11.reservation, reserved * 1e9 / 2**30, ..., ..., ..., match="GiB")
    hint(ch11.reservation, paged, ..., ..., ..., match="reserves max_seq_len|too small")
    unrounded = _reserve_by_hand(rounded=False)
    assert abs(unrounded[1] / paged - 1) > 0.015           # the tolerance can tell them apart
    hint(ch11.reservation, ..., unrounded[1], ..., ..., match="whole blocks")
    hint(ch11.reservation, ..., reserved, ..., ..., match="contiguous reservation")
    hint(ch11.reservation, ..., paged / 2, ..., ..., match="keys or values only")
    no_weights = _reserve_by_hand(weights=False)
    hint(ch11.reservation, ..., ..., no_weights[2], ..., match="weights take their share")
    gb = _reserve_by_hand(memory_unit=1e9)
    hint(ch11.reservation, ..., ..., gb[2], ..., match="GiB")
    hint(ch11.reservation, ..., ..., contiguous + 0.5, ..., match="whole number")
    hint(ch11.reservation, ..., ..., ..., no_weights[3], match="weights take their share")
    hint(ch11.reservation, ..., ..., ..., gb[3], match="GiB")
    assert unrounded[3] != fitted
    hint(ch11.reservation, ..., ..., ..., unrounded[3], match="whole blocks")
    hint(ch11.reservation, ..., ..., ..., contiguous, match="contiguous count")
    hint(ch11.reservation, "34 GB", ..., ..., ..., match="expected a number", error=TypeError)


def test_reservation_hints_do_not_give_the_answer():
    answers = _reserve_by_hand()
    reserved, paged, contiguous, fitted = answers
    hints = [hint(ch11.reservation, reserved / 2, ..., ..., ..., match="keys"),
             hint(ch11.reservation, reserved * 3, ..., ..., ..., match="."),
             hint(ch11.reservation, ..., _reserve_by_hand(rounded=False)[1], ..., ..., match="blocks"),
             hint(ch11.reservation, ..., paged * 3, ..., ..., match="."),
             hint(ch11.reservation, ..., ..., _reserve_by_hand(weights=False)[2], ..., match="weights"),
             hint(ch11.reservation, ..., ..., 3 * contiguous, ..., match="."),
             hint(ch11.reservation, ..., ..., ..., 3 * fitted, match=".")]
    for h in hints:
        assert_not_given(h.split(":", 1)[1], *answers)


# --- 11.4 (coding) -------------------------------------------------------------------------

def _right(table_row, positions, block_size):
    return table_row[positions // block_size], positions % block_size


def test_block_and_row_right(capsys):
    assert ch11.block_and_row(_right) is True
    assert "✅ Exercise 11.4 (block and row): correct." in capsys.readouterr().out

    def as_lists(table_row, positions, block_size):              # a list, int32: fine
        return [table_row.long()[positions // block_size].to(torch.int32),
                torch.remainder(positions, block_size)]

    assert ch11.block_and_row(as_lists) is True


@pytest.mark.parametrize("fn, match", [
    (lambda t, p, bs: (p // bs, p % bs), "contiguous cache"),
    (lambda t, p, bs: (t[p % bs], p // bs), "swapped"),
    (lambda t, p, bs: (t[p // bs], p), "position within its block"),
    (lambda t, p, bs: (p % bs, t[p // bs]), "in that order"),
    (lambda t, p, bs: (t[torch.clamp(p // bs + 1, max=t.numel() - 1)], p % bs), "count from 0"),
    (lambda t, p, bs: (t[(p + 1) // bs], (p + 1) % bs), "count from 0"),
    (lambda t, p, bs: t[p // bs] * bs + p % bs, "two tensors"),
    (lambda t, p, bs: None, "returned None"),
    (lambda t, p, bs: [1, 2], "pair of tensors"),
    (lambda t, p, bs: (t[p // bs][:3], p % bs), "one entry per position"),
    (lambda t, p, bs: (t[p // bs] + 1, p % bs), "block ids are not where"),
    (lambda t, p, bs: (t[p // bs], (p + 2) % bs), "rows are not where"),
])
def test_block_and_row_slips(fn, match):
    hint(ch11.block_and_row, fn, match=match)


def test_block_and_row_other_wrong_functions():
    def in_place(table_row, positions, block_size):
        table_row.zero_()
        return _right(table_row, positions, block_size)

    hint(ch11.block_and_row, in_place, match="changed the block table")

    def only_the_labelled_case(table_row, positions, block_size):    # rows of blocks of 4
        return table_row[positions // block_size], positions % 4

    with pytest.raises(AssertionError, match="values differ"):       # then the random cases
        ch11.block_and_row(only_the_labelled_case)


def test_block_and_row_not_attempted(capsys):
    def stub(table_row, positions, block_size):
        raise NotImplementedError

    for unattempted in (stub, ...):
        assert ch11.block_and_row(unattempted) is False
        out = capsys.readouterr().out
        assert NOT_ATTEMPTED in out and "✅" not in out


def test_checks_hide_their_frames():
    for check in (ch11.static_waste, ch11.blocks_held, ch11.reservation, ch11.block_and_row):
        assert "__tracebackhide__" in check.__code__.co_varnames, check.__name__
