"""Checks for the serving appendix's exercises (chapter 11: continuous batching, the paged KV cache).

Each check computes its expected answer itself — from the request traces and the static-batching
count of ``infer_lib.serving`` (``synthetic_trace``, ``static_batch_cost``), its paged cache
(``blocks_for``, ``batch_that_fits``, ``PagedKVCache.slots_of``), the model presets and the spec
table (``hardware.SPECS``) — so the reader's cell does not give it away. The only numbers typed
here are the exercises' given inputs, named as in the exercise text. A check prints ✅ when the
answer is right, prints "not attempted yet" and returns while the answer is still ``...`` (or the
function still raises ``NotImplementedError``), and raises ``AssertionError`` with a hint when it
is wrong. A hint names the kind of slip (every slot counted or only the useful ones, a batch run
to the trace's longest output, padding to the trace's longest prompt, blocks rounded down or
pooled across sequences, a block too many for an exact multiple, keys or values only, a K/V head
per query head, the weights left in the budget, GiB read as GB, tokens not rounded up to whole
blocks, the table not looked up, block and row swapped); it never states the expected value.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import hardware
from ..model import ModelConfig
from ..serving import PagedKVCache, batch_that_fits, blocks_for, static_batch_cost, synthetic_trace
from . import _not_attempted, check_function, check_number, check_part
from . import wrap_explanation as _wrap, merge_slips as _merged

BF16 = torch.bfloat16
BF16_BYTES = 2
REL = 0.02                 # relative tolerance of the answers that are not counts

# Exercise 11.1: static batches of `STATIC_BATCH` requests of this trace (synthetic_trace's arguments)
STATIC_TRACE = {"n": 8, "seed": 4, "prompt_len": (8, 64), "new_tokens": (4, 64), "vocab_size": 256}
STATIC_BATCH = 4

# Exercise 11.2: sequences holding these many tokens in a paged cache of blocks of `block_size`
BLOCKS = {"block_size": 16, "lengths": (37, 16, 130, 1, 64, 200)}

# Exercise 11.3: the bf16 KV cache of the first `batch` requests of the trace (synthetic_trace's
# arguments; each request at its end holds prompt + new tokens), contiguous at `max_seq_len` or
# paged in blocks of `block_size`; then how many of the trace's requests, in order, fit beside
# the bf16 weights on `gpu`
RESERVE = {"preset": "llama-3-8b", "gpu": "a100_80gb", "batch": 32, "max_seq_len": 4096, "block_size": 16,
           "trace": {"n": 3000, "seed": 3, "prompt_len": (16, 256), "new_tokens": (8, 256),
                     "vocab_size": 128256}}

# Exercise 11.4: the block table of the labelled case (one sequence), its block size and length
ADDRESS = {"table_row": (6, 2, 9, 4, 0, 0), "block_size": 4, "length": 14}


# --- 11.1 --------------------------------------------------------------------------------

def static_waste(idle_slots, padding_tokens) -> None:
    """Exercise 11.1: the requests of ``synthetic_trace(**STATIC_TRACE)`` served in order in
    static batches of ``STATIC_BATCH``, each batch run until its longest output is done: (a) the
    decode slots — a row of a batch for one step — that produce no token anyone asked for, over
    all the batches; (b) the padding tokens, each prompt padded to the longest of its batch."""
    __tracebackhide__ = True
    reqs = synthetic_trace(**STATIC_TRACE)
    B, n = STATIC_BATCH, len(reqs)
    cost = static_batch_cost(reqs, B)
    idle = cost.slot_steps - cost.useful_tokens
    one_batch = static_batch_cost(reqs, n)
    longest_out = max(r.max_new_tokens for r in reqs)
    longest_prompt = max(len(r.prompt) for r in reqs)
    name = "Exercise 11.1 (idle slots)"
    check_part(check_number, idle_slots, idle, name=name, rel=0, integer=True, rounding=None,
               mistakes=_merged([
        (cost.slot_steps, "that counts every slot; subtract those that produce a requested token"),
        (cost.useful_tokens, "that counts the slots that produce a requested token; the question "
                             "asks for the others"),
        (one_batch.slot_steps - one_batch.useful_tokens,
         f"that runs all {n} requests as one batch; the batches hold {B} each"),
        (n * longest_out - cost.useful_tokens,
         "each batch runs to its own longest output, not to the longest of the whole trace"),
        (0, "a static batch keeps every row until its longest request is done: the rows of the "
            "requests that finished earlier idle on"),
    ], idle), explain=_wrap(name, f"{idle / cost.slot_steps:.0%} of the {cost.slot_steps} "
                                  "slots the batches ran produced nothing anyone asked for."))
    name = "Exercise 11.1 (padding)"
    prompts = sum(len(r.prompt) for r in reqs)
    check_part(check_number, padding_tokens, cost.padding_tokens, name=name, rel=0, integer=True,
               rounding=None, mistakes=_merged([
                   (n * longest_prompt - prompts, "each prompt is padded to the longest of its own "
                                                  "batch, not of the whole trace"),
                   (prompts, "that counts the prompts' own tokens; the question asks for the padding "
                             "added to them"),
                   (cost.padding_tokens + idle, "the question asks for the prompts' padding "
                                                "only; the idle decode slots are part (a)"),
                   (0, "prompts of different lengths in one rectangular batch: the shorter are "
                       "padded to the longest"),
               ], cost.padding_tokens),
               explain=_wrap(name, "Padded positions go through every layer with the prompt and "
                                   "are thrown away."))


# --- 11.2 --------------------------------------------------------------------------------

def blocks_held(blocks, empty_positions) -> None:
    """Exercise 11.2: sequences of ``BLOCKS["lengths"]`` tokens in a paged cache of blocks of
    ``BLOCKS["block_size"]`` tokens, none shared: (a) how many blocks they hold together, (b) how
    many positions of those blocks hold no token."""
    __tracebackhide__ = True
    bs, lengths = BLOCKS["block_size"], BLOCKS["lengths"]
    want = sum(blocks_for(n, bs) for n in lengths)
    tokens = sum(lengths)
    name = "Exercise 11.2 (blocks)"
    check_part(check_number, blocks, want, name=name, rel=0, integer=True, mistakes=_merged([
        (sum(n // bs for n in lengths), "that rounds down: a sequence's last, partly filled block "
                                        "is held too — round up for each sequence"),
        (sum(n // bs + 1 for n in lengths), "a sequence of exactly k blocks' worth of tokens needs k "
                                            "blocks, not k + 1: round up, ⌈n / BLOCK⌉"),
        (-(-tokens // bs), "that pools the tokens of all the sequences; each sequence has blocks of "
                           "its own, and each rounds up"),
        (tokens, "that counts tokens; the question asks for blocks"),
        (want * bs, "that counts the positions of the blocks; the question asks for the blocks"),
    ], want), explain=_wrap(name, f"{len(lengths)} sequences, {tokens} tokens."))
    name = "Exercise 11.2 (empty positions)"
    empty = want * bs - tokens
    check_part(check_number, empty_positions, empty, name=name, rel=0, integer=True, rounding=None,
               mistakes=_merged([
        (sum(bs - n % bs for n in lengths), "a sequence whose length is a multiple of the block size "
                                            "fills its last block: it leaves no position empty"),
        (0, "a block holds BLOCK positions whether they are filled or not: the last block of most "
            "sequences is partly empty"),
        (len(lengths) * (bs - 1), "that is the most the sequences could leave empty (BLOCK − 1 "
                                  "each); count what their lengths leave"),
    ], empty), explain=_wrap(name, f"{empty / (want * bs):.1%} of the positions held: at most "
                                   f"{bs - 1} per sequence, however long it grows."))


# --- 11.3 --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _reserve_lengths() -> tuple[int, ...]:
    """Tokens each request of exercise 11.3's trace holds at its end: prompt + new tokens."""
    reqs = synthetic_trace(**RESERVE["trace"])
    return tuple(len(r.prompt) + r.max_new_tokens for r in reqs)


def _reserve_numbers() -> dict:
    """Exercise 11.3's answers and the numbers its slips are built from."""
    r = RESERVE
    cfg = ModelConfig.from_preset(r["preset"])
    spec = hardware.SPECS[r["gpu"]]
    per_token = cfg.kv_cache_bytes_per_token(BF16)
    lengths = _reserve_lengths()
    batch = lengths[:r["batch"]]
    bs, S_max = r["block_size"], r["max_seq_len"]
    weights = cfg.num_params() * BF16_BYTES
    budget = spec.memory_bytes - weights
    fits = batch_that_fits(cfg, budget, lengths, max_seq_len=S_max, block_size=bs, dtype=BF16)
    assert fits["paged"] < len(lengths), "exercise 11.3's trace is too short for its paged answer"
    return {"cfg": cfg, "spec": spec, "per_token": per_token, "lengths": lengths, "batch": batch,
            "weights": weights, "budget": budget, "fits": fits,
            "reserved": len(batch) * S_max * per_token,
            "paged": sum(blocks_for(n, bs) for n in batch) * bs * per_token,
            "written": sum(batch) * per_token}


def _paged_count(budget: float, lengths, cost) -> int:
    """Sequences of ``lengths`` that fit in ``budget`` bytes, in order, each costing ``cost(n)``."""
    fitted = 0
    for n in lengths:
        if cost(n) > budget:
            break
        budget -= cost(n)
        fitted += 1
    return fitted


def reservation(reserved_GB, paged_GB, contiguous_fit, paged_fit) -> None:
    """Exercise 11.3: ``RESERVE["preset"]``'s bf16 KV cache for the first ``RESERVE["batch"]``
    requests of its trace (``synthetic_trace`` of ``RESERVE["trace"]``; each request at its end
    holds its prompt and its new tokens): (a) the GB (1e9 bytes) a contiguous cache reserves for
    them at ``RESERVE["max_seq_len"]`` positions each, (b) the GB a paged cache of blocks of
    ``RESERVE["block_size"]`` holds for them; then, in the memory ``RESERVE["gpu"]`` has beside
    the bf16 weights, how many of the trace's requests, in order (stopping at the first that does
    not fit), fit (c) in a contiguous cache and (d) in a paged one."""
    __tracebackhide__ = True
    x = _reserve_numbers()
    cfg, spec, per_token = x["cfg"], x["spec"], x["per_token"]
    GB = 1e9
    S_max, bs = RESERVE["max_seq_len"], RESERVE["block_size"]
    heads = cfg.n_heads / cfg.n_kv_heads
    name = "Exercise 11.3 (reserved)"
    check_part(check_number, reserved_GB, x["reserved"] / GB, name=name, unit="GB", rel=REL,
               mistakes=_merged([
                   (x["reserved"] / 2 / GB, "that counts keys or values only: the cache holds both "
                                            "(the 2 of 2 · L · H_kv · D · bytes)"),
                   (x["reserved"] * heads / GB, f"that gives every query head its own K/V head; "
                                                f"{RESERVE['preset']} shares each K/V head among "
                                                f"{cfg.n_heads // cfg.n_kv_heads} (GQA)"),
                   (x["reserved"] / cfg.n_layers / GB, "that is one layer; every layer keeps its own "
                                                       "keys and values"),
                   (x["reserved"] * 2 / GB, "that counts 4 bytes a number (fp32); the cache is bf16, "
                                            "2 bytes"),
                   (x["reserved"] / 2**30, "that is GiB (2**30 bytes); the question asks for GB "
                                           "(1e9 bytes)"),
                   (x["written"] / GB, "that is what the sequences write; a contiguous cache reserves "
                                       "max_seq_len positions for each, written or not"),
               ], x["reserved"] / GB),
               explain=_wrap(name, f"{S_max} positions × {per_token // 1024} KiB per token for "
                                   "each sequence, however short it turns out."))
    name = "Exercise 11.3 (paged)"
    tol = 0.01          # tighter than REL: rounding up to whole blocks adds a few percent
    check_part(check_number, paged_GB, x["paged"] / GB, name=name, unit="GB", rel=tol,
               mistakes=_merged([
                   (x["written"] / GB, "that counts the tokens; a paged cache holds whole blocks: "
                                       "round each sequence up to a multiple of the block size"),
                   (x["paged"] / 2 / GB, "that counts keys or values only: the cache holds both"),
                   (x["paged"] * heads / GB, "that gives every query head its own K/V head (GQA "
                                             "shares them)"),
                   (x["paged"] / 2**30, "that is GiB (2**30 bytes); the question asks for GB"),
                   (x["reserved"] / GB, "that is the contiguous reservation of (a); a paged cache "
                                        "holds only the blocks its sequences fill"),
               ], x["paged"] / GB),
               explain=_wrap(name, f"{x['reserved'] / x['paged']:.1f}x less than the contiguous "
                                   "reservation, for the same sequences."))
    budget, lengths, fits = x["budget"], x["lengths"], x["fits"]
    name = "Exercise 11.3 (contiguous fit)"
    per_seq = S_max * per_token
    check_part(check_number, contiguous_fit, fits["contiguous"], name=name, rel=0, integer=True,
               rounding="down", mistakes=_merged([
                   (int(spec.memory_bytes // per_seq), "the weights take their share of the memory "
                                                       "first: the cache gets what they leave"),
                   (int((spec.memory_GB * GB - x["weights"]) // per_seq),
                    "that reads the memory as 1e9-byte GB; NVIDIA's memory \"GB\" are GiB (2**30 "
                    "bytes, chapter 1)"),
                   (int(budget // (per_seq * heads)), "that gives every query head its own K/V head "
                                                      "(GQA shares them)"),
                   (int(budget // (per_seq / 2)), "that counts keys or values only: the cache "
                                                  "holds both"),
                   (math.ceil(budget / per_seq), "that rounds up: a sequence's reservation fits "
                                                 "whole or not at all"),
               ], fits["contiguous"]),
               explain=_wrap(name, f"{fits['contiguous']} sequences of {S_max} positions, whatever "
                                   "their real lengths."))
    name = "Exercise 11.3 (paged fit)"
    block_bytes = bs * per_token
    check_part(check_number, paged_fit, fits["paged"], name=name, rel=0, integer=True,
               rounding="down", mistakes=_merged([
                   (_paged_count(budget, lengths, lambda n: n * per_token),
                    "that counts tokens; each sequence holds whole blocks: round it up to a "
                    "multiple of the block size"),
                   (_paged_count(spec.memory_bytes, lengths, lambda n: blocks_for(n, bs) * block_bytes),
                    "the weights take their share of the memory first: the cache gets what they "
                    "leave"),
                   (_paged_count(spec.memory_GB * GB - x["weights"], lengths,
                                 lambda n: blocks_for(n, bs) * block_bytes),
                    "that reads the memory as 1e9-byte GB; NVIDIA's memory \"GB\" are GiB"),
                   (int(budget // (sum(lengths) / len(lengths) * per_token)),
                    "that divides by the mean length; add the requests in order until the next one "
                    "does not fit"),
                   (fits["contiguous"], "that is the contiguous count of (c); the paged cache holds "
                                        "each sequence's blocks only"),
               ], fits["paged"]),
               explain=_wrap(name, f"{fits['paged'] / fits['contiguous']:.1f}x the contiguous "
                                   "cache's batch, in the same memory."))


# --- 11.4 (coding) -----------------------------------------------------------------------

def _slots_reference(table_row: torch.Tensor, positions: torch.Tensor, block_size: int):
    """``(block, row)`` of each position, as the paged cache finds them (``PagedKVCache.slots_of``
    over a one-row table)."""
    cache = PagedKVCache(ModelConfig.from_preset("tiny"), num_blocks=2, block_size=block_size, max_seqs=1,
                         max_seq_len=block_size)
    return cache.slots_of(torch.zeros_like(positions), positions, table_row[None].to(torch.int32))


def _pair(result, name: str):
    """The reader's result as two int64 tensors ``(block, row)``; AssertionError naming what is off."""
    if result is None:
        raise AssertionError(f"{name}: the function returned None: does it end with `return`?")
    if isinstance(result, torch.Tensor):
        raise AssertionError(f"{name}: return two tensors, `return block, row` — not one tensor "
                             "(a flat index block · BLOCK + row is not an address in a pool of shape "
                             "(num_blocks, H_kv, BLOCK, D))")
    if not (isinstance(result, (tuple, list)) and len(result) == 2
            and all(isinstance(t, torch.Tensor) for t in result)):
        raise AssertionError(f"{name}: return a pair of tensors, `return block, row`; got "
                             f"{type(result).__name__}")
    return tuple(t.long() for t in result)


def _labelled_slips(table: torch.Tensor, pos: torch.Tensor, bs: int):
    """What the usual slips make of the labelled case, each with its hint."""
    top = table.numel() - 1
    return [
        ((pos // bs, pos % bs), "that is where the token would sit in a contiguous cache; in the "
                                "paged one, position // BLOCK indexes the block table, which holds "
                                "the block's id"),
        ((table[pos % bs].long(), pos // bs), "block and row swapped: the block comes from "
                                              "position // BLOCK (through the table), the row is "
                                              "position % BLOCK"),
        ((table[pos // bs].long(), pos), "the row is the position within its block, position % "
                                         "BLOCK, not the position in the sequence"),
        ((pos % bs, table[pos // bs].long()), "return (block, row), in that order"),
        ((table[torch.clamp(pos // bs + 1, max=top)].long(), pos % bs),
         "positions count from 0: token t sits in the block at table entry t // BLOCK"),
        ((table[(pos + 1) // bs].long(), (pos + 1) % bs),
         "positions count from 0: token 0 is row 0 of the first block"),
    ]


def _address_cases():
    g = torch.Generator().manual_seed(11)
    cases = []
    for bs, max_blocks, n in ((16, 5, 70), (1, 9, 9), (5, 8, 33), (64, 2, 100)):
        table = torch.randperm(40, generator=g)[:max_blocks].to(torch.int32)
        positions = torch.randperm(n, generator=g)                         # any order, int64
        cases.append((table, positions, bs))
    return cases


def block_and_row(fn) -> bool:
    """Exercise 11.4: the reader's ``block_and_row(table_row, positions, block_size)`` — for one
    sequence's row of the block table (int32, its block ids in order) and token positions (int64),
    the block id holding each token and its row in that block, ``(block, row)`` — first on the
    labelled case ``ADDRESS`` (a shuffled table), which names the usual slips, then against the
    paged cache's own ``PagedKVCache.slots_of`` on random tables and positions
    (``check_function``); a right answer then gathers keys through the table and attends over
    them, against ``kernels.paged_decode_attention_ref``."""
    __tracebackhide__ = True
    name = "Exercise 11.4 (block and row)"
    stub = "write the function (its body still raises NotImplementedError)"
    if fn is ... or fn is None:
        return _not_attempted(name, stub)
    table = torch.tensor(ADDRESS["table_row"], dtype=torch.int32)
    bs = ADDRESS["block_size"]
    pos = torch.arange(ADDRESS["length"])
    given = table.clone()
    try:
        got = fn(given, pos.clone(), bs)
    except NotImplementedError:
        return _not_attempted(name, stub)
    if not torch.equal(given, table):
        raise AssertionError(f"{name}: the function changed the block table it was given; read it, "
                             "leave it intact")
    block, row = _pair(got, name)
    want_block, want_row = (t.long() for t in _slots_reference(table, pos, bs))
    if block.shape != pos.shape or row.shape != pos.shape:
        raise AssertionError(f"{name}: block and row must each have one entry per position, shape "
                             f"{tuple(pos.shape)}; got {tuple(block.shape)} and {tuple(row.shape)}")
    if not (torch.equal(block, want_block) and torch.equal(row, want_row)):
        for (b, r), hint in _labelled_slips(table, pos, bs):
            if torch.equal(block, b.long()) and torch.equal(row, r.long()):
                raise AssertionError(f"{name}: {hint}.")
        what = "the block ids" if not torch.equal(block, want_block) else "the rows"
        raise AssertionError(f"{name}: {what} are not where the tokens sit, for the table "
                             f"{ADDRESS['table_row']} with blocks of {bs}: recheck which entry of "
                             "the table a position reads, and its row within the block")

    def stacked(*args):
        return torch.stack(_pair(fn(*args), name))

    def reference(*args):
        return torch.stack([t.long() for t in _slots_reference(*args)])

    ok = check_function(stacked, reference, _address_cases(), name=name, atol=0, rtol=0,
                        explain=_wrap(name, "The one line the paged kernel adds to decode "
                                            "attention: with these addresses, attention over the "
                                            "gathered keys is the paged reference's."))
    if ok:                                           # the addresses, used: attention through them
        from ..kernels import paged_decode_attention_ref
        from ..reference import attention_ref

        g = torch.Generator().manual_seed(12)
        num_blocks, H, H_kv, D = 12, 4, 2, 8
        k_blocks = torch.randn(num_blocks, H_kv, bs, D, generator=g)
        v_blocks = torch.randn(num_blocks, H_kv, bs, D, generator=g)
        q = torch.randn(1, H, D, generator=g)
        b, r = _pair(fn(table.clone(), pos.clone(), bs), name)
        k = k_blocks[b, :, r].transpose(0, 1)[None]              # (1, H_kv, S, D)
        v = v_blocks[b, :, r].transpose(0, 1)[None]
        out = attention_ref(q[:, :, None], k, v)[:, :, 0]
        lens = torch.tensor([pos.numel()], dtype=torch.int32)
        torch.testing.assert_close(out, paged_decode_attention_ref(q, k_blocks, v_blocks, table[None], lens))
    return ok
