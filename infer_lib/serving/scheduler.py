"""Continuous batching: a scheduler that admits and retires requests at every decoding step.

A static batch (``model.generate`` on ``B`` prompts) runs until its longest request is done:
a request that finishes early keeps its row, burning a decode slot every step, and a request
that arrives meanwhile waits for the whole batch. Iteration-level scheduling (Yu et al.,
Orca, OSDI 2022) re-forms the batch at every step instead. ``Server.step()`` is one
iteration:

1. **Admit** waiting requests, first come first served, while there is a free sequence slot
   (at most ``max_batch`` running) and the pool has blocks for the request's whole prompt
   plus a small reserve (``watermark``, a fraction of the pool) for the running sequences to
   grow into. The prompt's blocks are taken now, so its prefill can always finish.
2. **Decode** one token for every running request whose prompt is done, in one batched
   step (``PagedModel.decode``: ``kernels.paged_decode_attention`` over the block tables,
   replayed from a CUDA graph on a GPU). A sequence crossing a block boundary takes one
   more block; if the pool is empty, the most recently admitted request is **preempted**:
   its blocks are freed and it goes back to the front of the queue, to be recomputed
   (its prompt and the tokens it already produced prefilled again) when blocks free up —
   the recompute policy of vLLM (Kwon et al., SOSP 2023, §4.5). Greedy tokens do not
   change; the time does.
3. **Prefill** the next chunks of prompts, at most ``prefill_chunk`` tokens in all, oldest
   request first, packed into one pass (``PagedModel.prefill``): a long prompt is spread
   over several steps (chunked prefill, as in Sarathi-Serve: Agrawal et al., OSDI 2024), so
   it never stalls the running sequences for more than one chunk. The keys of a chunk go
   into the request's blocks; the chunk's queries attend to the request's keys gathered from
   its blocks (``paged_model``'s docstring). The last chunk of a prompt gives its first token.
4. **Retire** the requests that produced their last token (``max_new_tokens``, or their
   ``stop_token``): their blocks and slot are free for the next step's admissions.

A request that could never fit — more positions than the block table or the model's RoPE
tables hold, or more blocks than the whole pool, even alone — is refused at ``submit`` with
``RequestRefused`` (a ``ValueError``) saying what it needs and what there is; the others
are served as usual (``run`` records the refusal in that request's result).

Each request's ``Result`` holds its tokens and times: **time to first token** (arrival to
the end of the step that produced it: queueing and prefill), **time per output token**
(from the first token to the last, per later token), and the whole run's **throughput**
(output tokens per second of wall clock). Times are host wall clock after the step's one
synchronisation (reading the new tokens), so on a GPU they are what a client would see.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import torch

from .. import device
from ..model.layers import Transformer
from .paged_cache import PagedKVCache, blocks_for
from .paged_model import PagedModel


class RequestRefused(ValueError):
    """A request that cannot be served even alone (too long for the table, the model or the pool)."""


@dataclass
class Request:
    """One generation request: ``prompt`` token ids, ``max_new_tokens`` ≥ 1 to generate (fewer if
    ``stop_token`` comes first), ``arrival`` in seconds from the start of a run (``Server.run``
    with ``realtime=True`` admits it no earlier), and an ``id`` for the results."""

    prompt: Sequence[int]
    max_new_tokens: int
    arrival: float = 0.0
    stop_token: int | None = None
    id: int | str | None = None


@dataclass
class Result:
    """What became of one request. Times are ``clock()`` readings (seconds); ``error`` is the
    refusal's message for a refused request (then it has no tokens)."""

    id: int | str | None
    prompt_len: int
    max_new_tokens: int
    arrival: float
    tokens: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    error: str | None = None
    preemptions: int = 0
    #: when the last token came (None while it runs, and for a refused request)
    finish_time: float | None = None
    #: the logits each token was chosen from, on the CPU (only with ``Server(keep_logits=True)``)
    logits: list[torch.Tensor] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_time is not None

    @property
    def first_token_time(self) -> float | None:
        return self.token_times[0] if self.token_times else None

    @property
    def ttft(self) -> float | None:
        """Seconds from arrival to the first token."""
        return None if not self.token_times else self.token_times[0] - self.arrival

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first (None with fewer than two tokens)."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)


WAITING, PREFILL, DECODE = "waiting", "prefill", "decode"


@dataclass(eq=False)
class _Sequence:
    """A request in the server: its tokens so far and where it stands."""

    request: Request
    result: Result
    prompt: list[int]
    state: str = WAITING
    slot: int | None = None
    order: int = -1          # admission count: the largest is preempted first
    cached: int = 0          # tokens whose keys and values are in the cache
    target: int = 0          # tokens to prefill: the prompt, or after a preemption what was fed before

    @property
    def generated(self) -> list[int]:
        return self.result.tokens


class StepWork(NamedTuple):
    """The work of one iteration: ``decode_rows`` sequences decoded, reading ``decode_keys`` keys
    in all (their own tokens included); ``prefill_tokens`` prompt tokens in ``prefill_chunks``
    chunks, which gathered ``prefill_keys`` keys and attended ``prefill_pairs`` (query, key)
    pairs (causal) — what a roofline of the step is computed from; and the cache at its end:
    ``blocks_held`` blocks held for ``tokens_held`` tokens of keys and values written."""

    decode_rows: int
    decode_keys: int
    prefill_tokens: int
    prefill_chunks: int
    prefill_keys: int
    prefill_pairs: int
    blocks_held: int = 0
    tokens_held: int = 0


@dataclass
class Stats:
    """Counters of a server's life: iterations, decode steps and the sequences they ran,
    prompt tokens prefilled (recomputation included), preemptions, and the most blocks and
    running sequences at once."""

    steps: int = 0
    #: the work of each iteration, in order
    log: list[StepWork] = field(default_factory=list)
    decode_steps: int = 0
    decode_rows: int = 0
    prefill_steps: int = 0
    prefill_tokens: int = 0
    preemptions: int = 0
    peak_blocks: int = 0
    peak_running: int = 0

    @property
    def mean_decode_batch(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) with linear interpolation between ranks (numpy's default);
    None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Report:
    """The results of ``Server.run`` (in the order of the requests given) and the run's totals."""

    results: list[Result]
    start: float
    end: float
    stats: Stats

    @property
    def wall_s(self) -> float:
        return self.end - self.start

    @property
    def output_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.results)

    def summary(self) -> dict:
        """Throughput and latency percentiles (ms), with the counts they come from."""
        served = [r for r in self.results if r.error is None]
        ttft = [r.ttft for r in served if r.ttft is not None]
        tpot = [r.tpot for r in served if r.tpot is not None]

        def ms(x):
            return None if x is None else 1e3 * x
        return {
            "requests": len(self.results), "refused": len(self.results) - len(served),
            "prompt_tokens": sum(r.prompt_len for r in served), "output_tokens": self.output_tokens,
            "wall_s": self.wall_s, "output_tokens_per_s": self.output_tokens / self.wall_s if self.wall_s else None,
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "tpot_p50_ms": ms(percentile(tpot, 50)), "tpot_p99_ms": ms(percentile(tpot, 99)),
            "steps": self.stats.steps, "decode_steps": self.stats.decode_steps,
            "mean_decode_batch": self.stats.mean_decode_batch, "prefill_tokens": self.stats.prefill_tokens,
            "preemptions": self.stats.preemptions, "peak_blocks": self.stats.peak_blocks,
            "peak_running": self.stats.peak_running,
        }


class Server:
    """Continuous batching of ``model`` over a paged KV cache (module docstring).

    ``block_size`` tokens per block; ``num_blocks`` in the pool (one of them the reserved null
    block; default: enough for ``max_batch`` sequences of ``max_seq_len``, so nothing is ever
    preempted) or ``cache_bytes`` of keys and values to fill with blocks; ``max_batch``
    sequences running at once; ``max_seq_len`` the longest sequence (prompt and output; default
    the model's, at most 4096); ``prefill_chunk`` prompt tokens per step; ``attention``
    ``"paged"`` (the Triton kernel; default where Triton is installed) or ``"gather"``
    (``PagedModel``); ``cuda_graphs`` for the decode steps (default: on a GPU);
    ``keep_logits`` keeps every token's logits in its result (for tests); ``watermark`` the
    share of the pool kept free at admission for running sequences to grow into; ``clock``
    the time source.

    ``submit(request)`` queues a request (or raises ``RequestRefused``) and returns its
    ``Result``, which fills in as it runs; ``step()`` runs one iteration and returns the
    results that finished in it; ``run(requests)`` does both until every request is done.
    """

    def __init__(self, model: Transformer, *, block_size: int = 16, num_blocks: int | None = None,
                 cache_bytes: float | None = None, max_batch: int = 64, max_seq_len: int | None = None,
                 prefill_chunk: int = 512, attention: str | None = None, cuda_graphs: bool | None = None,
                 keep_logits: bool = False, watermark: float = 0.01,
                 clock: Callable[[], float] = time.perf_counter):
        config = model.config
        for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk),
                            ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Server: {name} must be a positive integer, got {value!r}")
        if not 0 <= watermark < 1:
            raise ValueError(f"Server: watermark must be a fraction in [0, 1), got {watermark!r}")
        max_seq_len = min(config.max_seq_len, 4096) if max_seq_len is None else max_seq_len
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"Server: max_seq_len must be a positive integer, got {max_seq_len!r}")
        if max_seq_len > config.max_seq_len:
            raise ValueError(f"Server: max_seq_len={max_seq_len} exceeds the model's max_seq_len="
                             f"{config.max_seq_len} (the positions its RoPE tables cover)")
        weight = model.embed_tokens.weight
        dtype = weight.dtype
        if num_blocks is None:
            if cache_bytes is not None:
                num_blocks = PagedKVCache.num_blocks_for_memory(config, cache_bytes, block_size, dtype)
            else:
                num_blocks = max_batch * blocks_for(max_seq_len, block_size) + 1
        elif cache_bytes is not None:
            raise ValueError("Server: give num_blocks or cache_bytes, not both")
        if num_blocks < 2:
            raise ValueError(f"Server: the pool needs at least 2 blocks (one is the reserved null block), "
                             f"got {num_blocks}")
        if attention is None:
            attention = "paged" if device.HAS_TRITON else "gather"
        self.model = model
        self.cache = PagedKVCache(config, num_blocks, block_size, max_seqs=max_batch, max_seq_len=max_seq_len,
                                  dtype=dtype, device=weight.device)
        self.runner = PagedModel(model, self.cache, attention=attention, cuda_graphs=cuda_graphs,
                                 max_batch=max_batch)
        self.max_batch = max_batch
        # the model's RoPE tables and the table's width bound the positions
        self.max_seq_len = min(self.cache.max_seq_len, config.max_seq_len)
        self.prefill_chunk = prefill_chunk
        self.keep_logits = keep_logits
        self.watermark_blocks = int(watermark * self.cache.allocator.capacity)
        self.clock = clock
        self.waiting: collections.deque[_Sequence] = collections.deque()
        self.running: list[_Sequence] = []
        self.stats = Stats()
        self._admitted = 0

    # -- requests ---------------------------------------------------------------------------

    def check(self, request: Request) -> list[int]:
        """The request's prompt as a list of ints; ``ValueError`` for a malformed request,
        ``RequestRefused`` for one that could never fit."""
        prompt = request.prompt.tolist() if isinstance(request.prompt, torch.Tensor) else list(request.prompt)
        V = self.model.config.vocab_size
        if not prompt:
            raise ValueError(f"request {request.id!r}: the prompt is empty; a request needs at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in prompt):
            raise ValueError(f"request {request.id!r}: prompt tokens must be integers in 0..{V - 1}")
        n = request.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"request {request.id!r}: max_new_tokens must be an integer ≥ 1, got {n!r}")
        # the cache holds every token but the last generated one (it is never fed back)
        need = len(prompt) + n - 1
        bs = self.cache.block_size
        if need > self.max_seq_len:
            raise RequestRefused(
                f"request {request.id!r} refused: {len(prompt)} prompt tokens + {n} new tokens need "
                f"{need} positions in the cache, but this server holds sequences of at most "
                f"{self.max_seq_len} (Server(max_seq_len=...); the model's RoPE tables cover "
                f"{self.model.config.max_seq_len})")
        blocks = blocks_for(need, bs)
        have = self.cache.allocator.capacity
        if blocks > have:
            per_block = bs * self.cache.bytes_per_token()
            raise RequestRefused(
                f"request {request.id!r} refused: {need} cached tokens need {blocks} blocks of {bs} tokens "
                f"({blocks * per_block / 2**20:.1f} MiB of keys and values), but the whole pool has "
                f"{have} blocks ({have * per_block / 2**20:.1f} MiB): it cannot fit even alone")
        return prompt

    def submit(self, request: Request, arrival: float | None = None) -> Result:
        """Queue ``request`` (arrived at ``arrival``, a ``clock()`` reading; default now) and return
        its ``Result``. Raises ``ValueError`` for a malformed request and ``RequestRefused`` for
        one that could never fit; the server is unchanged then."""
        prompt = self.check(request)
        result = Result(id=request.id, prompt_len=len(prompt), max_new_tokens=request.max_new_tokens,
                        arrival=self.clock() if arrival is None else arrival,
                        logits=[] if self.keep_logits else None)
        self.waiting.append(_Sequence(request, result, prompt, target=len(prompt)))
        return result

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        return not self.waiting and not self.running

    # -- one iteration ----------------------------------------------------------------------

    def step(self) -> list[Result]:
        """One iteration: admit, decode, prefill, retire (module docstring). Returns the results
        of the requests that finished in it."""
        finished: list[Result] = []
        self._admit()
        rows, keys = self._decode(finished)
        prefill = self._prefill(finished)
        s = self.stats
        s.log.append(StepWork(rows, keys, *prefill, self.cache.allocator.num_used,
                              sum(seq.cached for seq in self.running)))
        s.steps += 1
        s.peak_blocks = max(s.peak_blocks, self.cache.allocator.num_used)
        return finished

    def _admit(self) -> None:
        alloc = self.cache.allocator
        while self.waiting and len(self.running) < self.max_batch:
            seq = self.waiting[0]
            need = blocks_for(seq.target, self.cache.block_size)
            reserve = self.watermark_blocks if self.running else 0
            if need + reserve > alloc.num_free:
                break                                # first come first served: nobody overtakes
            self.waiting.popleft()
            seq.slot = self.cache.add_sequence()
            grown = self.cache.grow(seq.slot, seq.target)
            assert grown
            seq.state, seq.cached, seq.order = PREFILL, 0, self._admitted
            self._admitted += 1
            self.running.append(seq)
        self.stats.peak_running = max(self.stats.peak_running, len(self.running))

    def _preempt(self, seq: _Sequence) -> None:
        """Free ``seq``'s blocks and queue it first, to be prefilled again from its tokens so far."""
        self.cache.remove_sequence(seq.slot)
        self.running.remove(seq)
        seq.slot, seq.state, seq.cached = None, WAITING, 0
        # everything that was fed: the prompt and every generated token but the last (pending)
        seq.target = len(seq.prompt) + max(len(seq.generated) - 1, 0)
        seq.result.preemptions += 1
        self.stats.preemptions += 1
        self.waiting.appendleft(seq)

    def _decode(self, finished: list[Result]) -> tuple[int, int]:
        for seq in [s for s in self.running if s.state == DECODE]:
            if seq.state != DECODE:                  # preempted by an older one this step
                continue
            while not self.cache.grow(seq.slot, seq.cached + 1):
                victim = max(self.running, key=lambda s: s.order)
                self._preempt(victim)
                if victim is seq:
                    break
        batch = [s for s in self.running if s.state == DECODE]
        if not batch:
            return 0, 0
        logits, tokens = self.runner.decode([s.slot for s in batch], [s.generated[-1] for s in batch],
                                            [s.cached for s in batch])
        now = self.clock()
        self.stats.decode_steps += 1
        self.stats.decode_rows += len(batch)
        keys = 0
        for i, (seq, token) in enumerate(zip(batch, tokens)):
            seq.cached += 1
            keys += seq.cached
            self._emit(seq, token, now, logits[i] if self.keep_logits else None, finished)
        return len(batch), keys

    def _prefill(self, finished: list[Result]) -> tuple[int, int, int, int]:
        budget = self.prefill_chunk
        work = []
        for seq in self.running:
            if budget == 0:
                break
            if seq.state != PREFILL:
                continue
            c = min(seq.target - seq.cached, budget)
            work.append((seq, seq.cached, c))
            budget -= c
        if not work:
            return 0, 0, 0, 0
        chunks = []
        for seq, start, c in work:
            tokens = seq.prompt[start:start + c]
            if start + c > len(seq.prompt):          # recomputing after a preemption
                tokens = (seq.prompt + seq.generated)[start:start + c]
            chunks.append(tokens)
        logits = self.runner.prefill([s.slot for s, _, _ in work], [start for _, start, _ in work], chunks)
        first = logits.argmax(-1).tolist()
        now = self.clock()
        self.stats.prefill_steps += 1
        tokens = sum(c for _, _, c in work)
        self.stats.prefill_tokens += tokens
        for i, (seq, start, c) in enumerate(work):
            seq.cached += c
            if seq.cached < seq.target:
                continue
            seq.state = DECODE
            if not seq.generated:                    # a fresh prompt's last chunk: the first token
                self._emit(seq, first[i], now, logits[i] if self.keep_logits else None, finished)
        gathered = sum(start + c for _, start, c in work)
        pairs = sum(c * start + c * (c + 1) // 2 for _, start, c in work)
        return tokens, len(work), gathered, pairs

    def _emit(self, seq: _Sequence, token: int, now: float, logits, finished: list[Result]) -> None:
        r = seq.result
        r.tokens.append(token)
        r.token_times.append(now)
        if logits is not None:
            r.logits.append(logits.float().cpu())
        if len(r.tokens) == r.max_new_tokens or token == seq.request.stop_token:
            r.finish_time = now
            self.cache.remove_sequence(seq.slot)
            self.running.remove(seq)
            seq.slot = None
            finished.append(r)

    # -- a whole trace ----------------------------------------------------------------------

    def run(self, requests: Sequence[Request], *, realtime: bool = False,
            sleep: Callable[[float], None] = time.sleep) -> Report:
        """Serve ``requests`` until each is done or refused; return their results in order.

        ``realtime=False`` (offline): every request is there at the start (its ``arrival`` is
        ignored; its time to first token counts from the start). ``realtime=True`` (online):
        a request is submitted once ``arrival`` seconds have passed since the start, the server
        sleeping while it has nothing to do. A refused or malformed request gets a result with
        ``error`` set and no tokens; the others are served as usual."""
        order = sorted(range(len(requests)), key=lambda i: requests[i].arrival if realtime else 0.0)
        results: list[Result | None] = [None] * len(requests)
        start = self.clock()
        pending = collections.deque(order)
        while pending or not self.idle:
            now = self.clock()
            while pending and (not realtime or start + requests[pending[0]].arrival <= now):
                i = pending.popleft()
                r = requests[i]
                arrival = start + (r.arrival if realtime else 0.0)
                try:
                    results[i] = self.submit(r, arrival=arrival)
                except ValueError as err:
                    results[i] = Result(id=r.id, prompt_len=len(r.prompt), max_new_tokens=r.max_new_tokens,
                                        arrival=arrival, error=str(err))
            if self.idle:
                if pending:
                    sleep(max(0.0, start + requests[pending[0]].arrival - self.clock()))
                continue
            self.step()
        return Report(results=results, start=start, end=self.clock(), stats=self.stats)

    def warm_up(self, requests: Sequence[Request]) -> None:
        """Serve ``requests`` once, untimed, check the invariants, and start ``stats`` afresh: what
        a measurement runs first, so that the first call of each kernel shape (which compiles and
        tunes it) and the capture of each decode graph fall outside the timed run."""
        self.run(requests)
        self.check_invariants()
        self.stats = Stats()

    # -- checks -----------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """The cache's and allocator's invariants, and that every block held belongs to a running
        request (``AssertionError`` otherwise). After the last request, nothing is held."""
        self.cache.check()
        held = {s.slot for s in self.running}
        if self.cache.num_sequences != len(held):
            raise AssertionError(f"Server: {self.cache.num_sequences} cache slots in use but "
                                 f"{len(held)} requests running")
        if self.idle and self.cache.allocator.num_used:
            raise AssertionError(f"Server: idle but {self.cache.allocator.num_used} blocks are still held")
