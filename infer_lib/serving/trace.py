"""Synthetic request traces, and what static batching wastes on them.

``synthetic_trace(n, seed=...)`` draws ``n`` requests from stated distributions with one
seeded generator (Python's ``random.Random(seed)``: the same trace on every machine):

* **prompt lengths**: uniform integers in ``prompt_len = (lo, hi)``, both included
  (32–512 tokens by default);
* **output lengths**: ``new_tokens``, an integer (every request the same: 128 by default)
  or ``(lo, hi)``, uniform integers, both included;
* **arrival times**: all at 0 for ``rate=None`` (offline: every request known at the
  start), else a Poisson process of ``rate`` requests per second — independent
  exponential gaps of mean ``1/rate`` seconds, the first after one gap (``poisson_arrivals``,
  from a generator of their own: the same seed gives the same prompts at any rate);
* **prompt tokens**: uniform in ``0 … vocab_size − 1`` (random weights do not care what
  the words are; only lengths matter for the time).

``static_batch_cost(requests, batch_size)`` counts what serving the same requests in
static batches (consecutive requests in groups of ``batch_size``, each group run to its
end before the next starts) wastes: decode slots of requests that have finished while
their batch runs on, padding of prompts to the longest of their batch, and cache
positions reserved for the longest possible sequence but never filled.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from .scheduler import Request


def _span(name: str, value) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else tuple(value)
    if isinstance(lo, bool) or isinstance(hi, bool) or not (isinstance(lo, int) and isinstance(hi, int)) \
            or not 1 <= lo <= hi:
        raise ValueError(f"synthetic_trace: {name} must be an integer ≥ 1 or a pair (lo, hi) with "
                         f"1 ≤ lo ≤ hi, got {value!r}")
    return lo, hi


def synthetic_trace(n: int, *, seed: int = 0, prompt_len=(32, 512), new_tokens=128,
                    rate: float | None = None, vocab_size: int = 128256) -> list[Request]:
    """``n`` requests drawn from the module docstring's distributions; ids ``0 … n − 1`` in
    arrival order."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"synthetic_trace: n must be a non-negative integer, got {n!r}")
    p_lo, p_hi = _span("prompt_len", prompt_len)
    n_lo, n_hi = _span("new_tokens", new_tokens)
    if rate is not None and not (isinstance(rate, (int, float)) and rate > 0 and rate != float("inf")):
        raise ValueError(f"synthetic_trace: rate must be None (offline) or a finite number of requests "
                         f"per second > 0, got {rate!r}")
    rng = random.Random(seed)
    arrivals = [0.0] * n if rate is None else poisson_arrivals(n, rate, seed)
    requests = []
    for i in range(n):
        length = rng.randint(p_lo, p_hi)
        prompt = [rng.randrange(vocab_size) for _ in range(length)]
        requests.append(Request(prompt=prompt, max_new_tokens=rng.randint(n_lo, n_hi), arrival=arrivals[i], id=i))
    return requests


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """``n`` arrival times (seconds) of a Poisson process of ``rate`` requests per second:
    cumulative sums of independent exponential gaps of mean ``1 / rate``."""
    rng = random.Random(f"arrivals-{seed}")
    t, times = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def with_arrivals(requests: list[Request], arrivals: list[float]) -> list[Request]:
    """The same requests (prompts, lengths, ids) arriving at ``arrivals``: an online run of an
    offline trace."""
    if len(arrivals) != len(requests):
        raise ValueError(f"with_arrivals: {len(arrivals)} arrival times for {len(requests)} requests")
    return [dataclasses.replace(r, arrival=float(t)) for r, t in zip(requests, arrivals)]


@dataclass
class StaticBatchCost:
    """What static batches of ``batch_size`` do with a trace (``static_batch_cost``).

    ``decode_steps``: steps run, each batch as many as its longest output; ``slot_steps``:
    rows × steps, of which ``useful_tokens`` produce a token someone asked for;
    ``padding_tokens``: prompt padding to the longest prompt of each batch;
    ``reserved_positions``: cache positions a contiguous cache reserves, every row of a batch
    ``longest prompt + longest output`` of it; ``used_positions``: those filled at the end."""

    batch_size: int
    batches: int
    decode_steps: int
    slot_steps: int
    useful_tokens: int
    padding_tokens: int
    reserved_positions: int
    used_positions: int

    @property
    def wasted_slot_fraction(self) -> float:
        return 1 - self.useful_tokens / self.slot_steps if self.slot_steps else 0.0

    @property
    def unused_cache_fraction(self) -> float:
        return 1 - self.used_positions / self.reserved_positions if self.reserved_positions else 0.0


def static_batch_cost(requests: list[Request], batch_size: int) -> StaticBatchCost:
    """Serve ``requests`` in order in static batches of ``batch_size`` (the last may be smaller)
    and count the work and memory (``StaticBatchCost``)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"static_batch_cost: batch_size must be a positive integer, got {batch_size!r}")
    steps = slots = useful = padding = reserved = used = batches = 0
    for i in range(0, len(requests), batch_size):
        batch = requests[i:i + batch_size]
        prompts = [len(r.prompt) for r in batch]
        outs = [r.max_new_tokens for r in batch]
        batches += 1
        steps += max(outs)
        slots += len(batch) * max(outs)
        useful += sum(outs)
        padding += sum(max(prompts) - p for p in prompts)
        reserved += len(batch) * (max(prompts) + max(outs))
        used += sum(p + o for p, o in zip(prompts, outs))
    return StaticBatchCost(batch_size, batches, steps, slots, useful, padding, reserved, used)
