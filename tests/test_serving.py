"""infer_lib.serving on the CPU with the tiny fp32 model: continuous batching over the paged cache
gives every request the tokens (exactly) and logits (within LOGITS_ATOL) of generating it alone,
whatever the arrival order, batch size, prefill chunk, preemptions and attention path; the
allocator and the tables stay consistent and nothing leaks; a request that cannot fit even alone
is refused with a clear error while the rest are served; the trace is reproducible."""

import random

import pytest
import torch

from conftest import random_model
from infer_lib import device
from infer_lib.model import KVCache, ModelConfig, decode_one_token, generate, prefill
from infer_lib.serving import (NULL_BLOCK, BlockAllocator, OutOfBlocks, PagedKVCache, Request, RequestRefused,
                               Server, batch_that_fits, percentile, poisson_arrivals, static_batch_cost,
                               synthetic_trace, with_arrivals)

#: fp32 logits of a request served in a batch against alone: the same operations on other
#: shapes (packed chunks, batched rows, a gathered cache) round differently in the last bits
LOGITS_ATOL = LOGITS_RTOL = 1e-4

DEV = device.DEVICE


@pytest.fixture(scope="module")
def model():
    return random_model("tiny").to(DEV)


def alone(model, prompt, n):
    """Greedy tokens of ``prompt`` generated alone with the contiguous cache, and each one's logits."""
    cache = KVCache(model.config, 1, len(prompt) + n, dtype=torch.float32, device=DEV)
    logits = prefill(model, torch.tensor([prompt], device=DEV), cache)
    tokens, rows = [], []
    for i in range(n):
        rows.append(logits[0])
        tokens.append(int(logits[0].argmax()))
        if i < n - 1:
            logits = decode_one_token(model, torch.tensor(tokens[-1:], device=DEV), cache)
    return tokens, rows


def assert_as_alone(model, requests, results):
    for req, res in zip(requests, results):
        assert res.error is None and res.finished, res
        tokens, rows = alone(model, list(req.prompt), req.max_new_tokens)
        n = len(res.tokens)
        assert res.tokens == tokens[:n], (req.id, res.tokens, tokens)
        if req.stop_token is None:
            assert n == req.max_new_tokens
        if res.logits is not None:
            assert len(res.logits) == n
            torch.testing.assert_close(torch.stack(res.logits), torch.stack(rows[:n]).cpu(), atol=LOGITS_ATOL,
                                       rtol=LOGITS_RTOL)


def trace(n=6, seed=1, prompt_len=(3, 40), new_tokens=(1, 8)):
    return synthetic_trace(n, seed=seed, prompt_len=prompt_len, new_tokens=new_tokens, vocab_size=256)


def test_alone_is_generate(model):
    prompt = list(range(5, 17))
    assert alone(model, prompt, 6)[0] == generate(model, torch.tensor([prompt], device=DEV), 6)[0, 12:].tolist()


# ----------------------------------------------------------------------------
# Each request as if alone, whatever the schedule
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["given", "reversed", "shuffled"])
@pytest.mark.parametrize("max_batch, prefill_chunk", [(1, 64), (3, 7), (8, 16)])
def test_every_request_gets_what_it_would_alone(model, order, max_batch, prefill_chunk):
    # batches of 1 to all of them, prompts of up to 40 tokens in chunks of 7 to 64
    reqs = trace()
    if order == "reversed":
        reqs = reqs[::-1]
    elif order == "shuffled":
        random.Random(3).shuffle(reqs)
    server = Server(model, attention="gather", max_batch=max_batch, prefill_chunk=prefill_chunk,
                    keep_logits=True)
    report = server.run(reqs)
    assert_as_alone(model, reqs, report.results)
    server.check_invariants()
    assert server.cache.allocator.num_used == 0 and server.cache.allocator.num_free == \
        server.cache.allocator.capacity
    s = report.summary()
    assert s["output_tokens"] == sum(r.max_new_tokens for r in reqs) and s["refused"] == 0
    assert s["prefill_tokens"] == sum(len(r.prompt) for r in reqs)       # no preemption, no recompute
    assert report.stats.peak_running <= max_batch
    log = report.stats.log
    assert len(log) == s["steps"] and sum(e.decode_rows for e in log) == report.stats.decode_rows
    assert sum(e.prefill_tokens for e in log) == s["prefill_tokens"]
    assert max(e.prefill_tokens for e in log) <= prefill_chunk
    # each prompt is gathered and attended causally chunk by chunk: its pairs add up to n(n+1)/2
    assert sum(e.prefill_pairs for e in log) == sum(len(r.prompt) * (len(r.prompt) + 1) // 2 for r in reqs)
    # the cache as the steps left it: whole blocks around the tokens written, empty at the end
    bs = server.cache.block_size
    assert all(e.tokens_held <= e.blocks_held * bs for e in log) and log[-1].blocks_held == 0
    assert max(e.blocks_held for e in log) == report.stats.peak_blocks
    # every token but each request's first comes from a decode row, each reading its keys so far
    assert report.stats.decode_rows == s["output_tokens"] - len(reqs)


def test_requests_that_arrive_while_others_run(model):
    # submitted between steps: a new request's prefill chunks run beside others' decode steps
    reqs = trace(7, seed=5)
    server = Server(model, attention="gather", max_batch=4, prefill_chunk=10, keep_logits=True)
    results = [server.submit(reqs[0]), server.submit(reqs[1])]
    arrivals = {2: [2], 3: [3, 4], 6: [5, 6]}             # step -> requests submitted before it
    step = 0
    while not server.idle or any(s >= step for s in arrivals):
        for i in arrivals.get(step, []):
            results.append(server.submit(reqs[i]))
        server.step()
        server.check_invariants()
        step += 1
    assert_as_alone(model, reqs, results)
    assert server.stats.decode_steps and server.stats.mean_decode_batch > 1


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_other_attention_backends_of_the_model(backend):
    # prefill attends through the model's backend (flash_attention for "triton")
    m = random_model("tiny-mqa", backend=backend).to(DEV)
    reqs = synthetic_trace(3, seed=2, prompt_len=(3, 14), new_tokens=(2, 3), vocab_size=m.config.vocab_size)
    server = Server(m, attention="gather", max_batch=2, prefill_chunk=12, keep_logits=True)
    assert_as_alone(m, reqs, server.run(reqs).results)


def test_the_paged_kernel_path(model):
    # decode through kernels.paged_decode_attention (the interpreter here): few, short requests
    reqs = synthetic_trace(3, seed=4, prompt_len=(5, 30), new_tokens=(2, 4), vocab_size=256)
    server = Server(model, attention="paged", max_batch=3, max_seq_len=48, prefill_chunk=32, keep_logits=True)
    report = server.run(reqs)
    assert_as_alone(model, reqs, report.results)
    server.check_invariants()


@pytest.mark.parametrize("attention", ["gather", "paged"])
def test_padded_batches_as_the_cuda_graphs_run_them(model, attention):
    # on a GPU each decode batch is padded to its bucket (1, 2, 4, ...) with rows that write to and
    # read the reserved null block: the same tokens, and no live block touched
    reqs = synthetic_trace(3, seed=6, prompt_len=(4, 12), new_tokens=(2, 4), vocab_size=256)
    server = Server(model, attention=attention, max_batch=4, max_seq_len=32, keep_logits=True)
    server.runner.pad_batch = True
    server.runner.capture()                                   # no graphs without a GPU: nothing to do
    assert_as_alone(model, reqs, server.run(reqs).results)
    server.check_invariants()


def test_preemption_recomputes_and_changes_nothing(model):
    # a pool of 9 usable blocks of 4 tokens for requests of up to 34 tokens: sequences are preempted
    # when they cannot grow, their blocks freed, and recomputed later from their tokens so far
    reqs = trace(6, seed=7, prompt_len=(8, 26), new_tokens=(4, 9))
    server = Server(model, attention="gather", block_size=4, num_blocks=10, max_batch=4, prefill_chunk=16,
                    keep_logits=True, watermark=0.0)
    results = [server.submit(r) for r in reqs]
    while not server.idle:
        server.step()
        server.check_invariants()
    assert server.stats.preemptions > 0 and any(r.preemptions for r in results)
    assert server.stats.prefill_tokens > sum(len(r.prompt) for r in reqs)        # recomputation
    assert_as_alone(model, reqs, results)
    assert server.cache.allocator.num_used == 0


def test_stop_token_ends_a_request_early(model):
    prompt = list(range(30, 42))
    tokens, _ = alone(model, prompt, 8)
    stop = tokens[2]
    n = tokens.index(stop) + 1
    server = Server(model, attention="gather")
    report = server.run([Request(prompt, 8, stop_token=stop, id="s"), Request(prompt[:5], 3, id="t")])
    assert report.results[0].tokens == tokens[:n] and report.results[0].finished
    assert len(report.results[1].tokens) == 3
    server.check_invariants()


def test_online_run_admits_requests_at_their_arrival(model):
    # a fake clock: 1 ms per reading, and sleeping moves it on
    class Clock:
        t = 100.0

        def now(self):
            self.t += 1e-3
            return self.t

        def sleep(self, s):
            self.t += s

    clock = Clock()
    reqs = synthetic_trace(5, seed=0, prompt_len=(3, 12), new_tokens=(2, 5), rate=20.0, vocab_size=256)
    report = Server(model, attention="gather", clock=clock.now).run(reqs, realtime=True, sleep=clock.sleep)
    for req, res in zip(reqs, report.results):
        assert res.arrival == pytest.approx(report.start + req.arrival)
        assert res.ttft > 0 and res.token_times == sorted(res.token_times)
    assert report.wall_s >= reqs[-1].arrival
    assert_as_alone(model, reqs, report.results)


def test_warm_up_serves_untimed_and_leaves_fresh_statistics(model):
    reqs = synthetic_trace(3, seed=2, prompt_len=(3, 12), new_tokens=(2, 4), vocab_size=256)
    server = Server(model, attention="gather", max_batch=2)
    server.warm_up(reqs)
    assert server.idle and server.stats.steps == 0 and not server.stats.log
    report = server.run(reqs)                    # the same requests again, counted from zero
    assert report.output_tokens == sum(r.max_new_tokens for r in reqs)
    assert report.stats is server.stats and server.stats.steps > 0
    assert_as_alone(model, reqs, report.results)


# ----------------------------------------------------------------------------
# Refusals and bad requests
# ----------------------------------------------------------------------------

def test_a_request_that_cannot_fit_alone_is_refused_and_the_rest_are_served(model):
    reqs = trace(4, seed=9)
    server = Server(model, attention="gather", block_size=4, num_blocks=13, max_seq_len=64, max_batch=2)
    too_long = Request(list(range(60)), 10, id="too long")       # 69 positions > max_seq_len 64
    too_big = Request(list(range(45)), 10, id="too big")          # 54 tokens: 14 blocks of 4, the pool has 12
    with pytest.raises(RequestRefused, match="69 positions in the cache, but this server holds sequences of at "
                                             "most 64"):
        server.submit(too_long)
    with pytest.raises(RequestRefused, match="need 14 blocks of 4 tokens .* but the whole pool has 12 blocks"):
        server.submit(too_big)
    assert server.idle
    mixed = reqs[:2] + [too_long] + reqs[2:] + [too_big]
    report = server.run(mixed)
    refused = [r for r in report.results if r.error is not None]
    assert [r.id for r in refused] == ["too long", "too big"] and all("refused" in r.error for r in refused)
    assert all(not r.tokens for r in refused)
    assert report.summary()["refused"] == 2
    served = [(q, r) for q, r in zip(mixed, report.results) if r.error is None]
    assert_as_alone(model, [q for q, _ in served], [r for _, r in served])
    server.check_invariants()


@pytest.mark.parametrize("request_, match", [
    (Request([], 3), "the prompt is empty"),
    (Request([1, 256], 3), r"integers in 0..255"),
    (Request([1, -1], 3), r"integers in 0..255"),
    (Request([1, 2], 0), "max_new_tokens must be an integer ≥ 1"),
    (Request([1, 2], 2.0), "max_new_tokens must be an integer ≥ 1"),
])
def test_malformed_requests_are_refused(model, request_, match):
    with pytest.raises(ValueError, match=match):
        Server(model, attention="gather").submit(request_)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_batch": 0}, "max_batch must be a positive integer"),
    ({"max_seq_len": 10**6}, "exceeds the model's max_seq_len"),
    ({"num_blocks": 1}, "at least 2 blocks"),
    ({"num_blocks": 10, "cache_bytes": 1e6}, "not both"),
    ({"attention": "magic"}, "attention must be one of"),
    ({"watermark": 1.5}, "watermark"),
])
def test_bad_server_settings_are_refused(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Server(model, **kwargs)


# ----------------------------------------------------------------------------
# The allocator and the paged cache
# ----------------------------------------------------------------------------

def test_allocator_hands_out_every_block_once_and_takes_them_back():
    a = BlockAllocator(6)
    assert a.capacity == 5 and a.num_free == 5
    first = a.allocate(3)
    assert NULL_BLOCK not in first and len(set(first)) == 3
    rest = a.allocate(2)
    assert sorted(first + rest) == [1, 2, 3, 4, 5]
    with pytest.raises(OutOfBlocks, match="asked for 1 blocks but 0 of 5 are free"):
        a.allocate(1)
    a.free(first)
    a.check()
    with pytest.raises(OutOfBlocks):
        a.allocate(4)
    assert a.num_free == 3                                 # all or nothing
    a.free(rest)
    a.check()
    assert a.num_free == 5 and a.num_used == 0


def test_allocator_refuses_a_double_free_and_counts_sharing():
    a = BlockAllocator(4)
    b = a.allocate(2)
    a.free(b[:1])
    with pytest.raises(ValueError, match=f"block {b[0]} is free but was freed 1 time.*double free"):
        a.free(b[:1])
    with pytest.raises(ValueError, match="double free"):
        a.free([b[1], b[1]])                               # one reference, two frees: nothing freed
    assert a.refs(b[1]) == 1
    with pytest.raises(ValueError, match="reserved"):
        a.free([NULL_BLOCK])
    a.share([b[1]])
    a.free([b[1]])
    assert a.refs(b[1]) == 1 and a.num_free == 2          # still held once
    a.free([b[1]])
    a.check()
    assert a.num_used == 0
    with pytest.raises(ValueError, match="only a held block can be shared"):
        a.share([b[1]])


def test_allocator_check_finds_a_leak_and_a_duplicate():
    a = BlockAllocator(5)
    a.allocate(1)
    a._refs.clear()                                        # a block dropped by nobody: leaked
    with pytest.raises(AssertionError, match="leaked"):
        a.check()
    b = BlockAllocator(5)
    b._free.append(b._free[0])
    with pytest.raises(AssertionError, match="twice"):
        b.check()


def test_paged_cache_tables_follow_the_blocks():
    config = ModelConfig.from_preset("tiny")
    cache = PagedKVCache(config, num_blocks=8, block_size=4, max_seqs=3, max_seq_len=16)
    assert cache.max_blocks == 4 and cache.k_blocks.shape == (2, 8, 2, 4, 16)
    s0, s1 = cache.add_sequence(), cache.add_sequence()
    assert cache.grow(s0, 5) and cache.grow(s1, 4)
    assert len(cache.blocks(s0)) == 2 and len(cache.blocks(s1)) == 1
    assert cache.table_host[s0, :2].tolist() == cache.blocks(s0) and cache.table_host[s0, 2:].tolist() == [0, 0]
    s2 = cache.add_sequence()
    assert cache.grow(s2, 16) and cache.allocator.num_free == 0          # 7 usable blocks: 2 + 1 + 4
    before = cache.blocks(s0)
    assert not cache.grow(s0, 9) and cache.blocks(s0) == before          # no block left: nothing changes
    cache.remove_sequence(s2)
    cache.check()
    mem = cache.memory()
    assert mem.sequences == 2 and mem.blocks == len(cache.blocks(s0)) + len(cache.blocks(s1))
    assert mem.contiguous_bytes == 2 * 16 * config.kv_cache_bytes_per_token(torch.float32)
    with pytest.raises(ValueError, match="exceed the 16"):
        cache.grow(s0, 17)
    cache.remove_sequence(s0)
    cache.remove_sequence(s1)
    with pytest.raises(ValueError, match="removed twice"):
        cache.remove_sequence(s1)
    cache.check()
    assert cache.allocator.num_used == 0 and cache.num_sequences == 0


def test_paged_cache_writes_and_gathers_keys_where_the_table_says():
    config = ModelConfig.from_preset("tiny")
    cache = PagedKVCache(config, num_blocks=9, block_size=4, max_seqs=2, max_seq_len=12)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.grow(a, 3)
    cache.grow(b, 10)
    cache.grow(a, 11)                                      # a's blocks interleave with b's
    k = torch.randn(21, 2, 16)
    v = torch.randn(21, 2, 16)
    slots = torch.tensor([a] * 11 + [b] * 10)
    positions = torch.cat([torch.arange(11), torch.arange(10)])
    block, row = cache.slots_of(slots, positions)
    cache.write(1, k, v, block, row)
    kg, vg = cache.gather(1, *cache.slots_of(torch.tensor([[a] * 10, [b] * 10]), torch.arange(10).expand(2, 10)))
    assert kg.shape == (2, 2, 10, 16) and kg.is_contiguous()
    torch.testing.assert_close(kg[0], k[:10].transpose(0, 1))
    torch.testing.assert_close(vg[1], v[11:].transpose(0, 1))
    assert (cache.k_blocks[0] == 0).all()                  # layer 0 untouched


def test_batch_that_fits():
    config = ModelConfig.from_preset("llama-3.2-1b")
    per_token = config.kv_cache_bytes_per_token(torch.bfloat16)          # 32 KiB
    lengths = [100, 20, 300, 17]
    fits = batch_that_fits(config, 2048 * per_token, lengths, max_seq_len=1024, block_size=16)
    assert fits["contiguous"] == 2
    # blocks of 16: 7 + 2 + 19 + 2 = 30 blocks of 16 = 480 tokens ≤ 2048
    assert fits["paged"] == 4
    # 112 tokens for the first, 32 for the second; the third's 304 do not fit in what is left
    assert batch_that_fits(config, 150 * per_token, lengths, max_seq_len=1024)["paged"] == 2
    assert batch_that_fits(config, 100 * per_token, lengths, max_seq_len=1024) == {"contiguous": 0, "paged": 0}


# ----------------------------------------------------------------------------
# The trace and the static baseline
# ----------------------------------------------------------------------------

def test_the_trace_is_fixed_by_its_seed_and_follows_its_distributions():
    t1 = synthetic_trace(300, seed=11, prompt_len=(32, 512), new_tokens=128, rate=4.0)
    t2 = synthetic_trace(300, seed=11, prompt_len=(32, 512), new_tokens=128, rate=4.0)
    assert [(r.prompt, r.arrival) for r in t1] == [(r.prompt, r.arrival) for r in t2]
    assert synthetic_trace(5, seed=12)[0].prompt != t1[0].prompt
    lengths = [len(r.prompt) for r in t1]
    assert min(lengths) >= 32 and max(lengths) <= 512 and 200 < sum(lengths) / 300 < 350
    assert all(r.max_new_tokens == 128 for r in t1) and [r.id for r in t1] == list(range(300))
    gaps = [b.arrival - a.arrival for a, b in zip(t1, t1[1:])]
    assert all(g >= 0 for g in gaps) and 0.2 < sum(gaps) / len(gaps) < 0.3      # mean 1 / rate
    assert all(0 <= t < 128256 for r in t1 for t in r.prompt)
    offline = synthetic_trace(10, seed=1, new_tokens=(5, 9))
    assert all(r.arrival == 0 for r in offline) and all(5 <= r.max_new_tokens <= 9 for r in offline)


def test_arrivals_do_not_change_the_prompts():
    offline = synthetic_trace(20, seed=3)
    online = synthetic_trace(20, seed=3, rate=2.0)
    assert [r.prompt for r in offline] == [r.prompt for r in online]
    assert [r.arrival for r in online] == poisson_arrivals(20, 2.0, seed=3)
    again = with_arrivals(offline, poisson_arrivals(20, 2.0, seed=3))
    assert [(r.prompt, r.arrival, r.id) for r in again] == [(r.prompt, r.arrival, r.id) for r in online]
    assert all(r.arrival == 0 for r in offline)                  # the originals are untouched
    with pytest.raises(ValueError, match="3 arrival times for 20 requests"):
        with_arrivals(offline, [0.0, 1.0, 2.0])


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt_len": (0, 5)}, "prompt_len"), ({"new_tokens": (9, 5)}, "new_tokens"),
    ({"rate": 0}, "rate"), ({"rate": float("inf")}, "rate"),
])
def test_bad_trace_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_trace(3, **kwargs)


def test_static_batches_waste_slots_and_cache():
    reqs = [Request([0] * p, n) for p, n in ((10, 4), (30, 1), (20, 2), (5, 8), (5, 8))]
    cost = static_batch_cost(reqs, 2)
    # batches (10, 4)+(30, 1): 4 steps; (20, 2)+(5, 8): 8 steps; (5, 8): 8 steps
    assert (cost.batches, cost.decode_steps, cost.slot_steps, cost.useful_tokens) == (3, 20, 32, 23)
    assert cost.padding_tokens == 20 + 15 and cost.wasted_slot_fraction == pytest.approx(9 / 32)
    assert cost.reserved_positions == 2 * 34 + 2 * 28 + 13 and cost.used_positions == 14 + 31 + 22 + 13 + 13


def test_percentile_interpolates_between_ranks():
    assert percentile([3, 1, 2, 4], 50) == 2.5 and percentile([5], 99) == 5 and percentile([], 50) is None
    assert percentile(list(range(101)), 99) == 99
