"""Serving many users: continuous batching over a paged KV cache (the appendix).

Chapters 5–9 make one batch of sequences fast. A server sees a stream of requests of
different lengths that arrive and finish at different times; this package serves them
with the course's model and kernels, one file per idea:

* ``paged_cache`` — the paged KV cache (Kwon et al., PagedAttention, SOSP 2023): one pool
  of fixed-size blocks per layer, a block table per sequence, and ``BlockAllocator`` (a free
  list with reference counts, and ``check()`` for its invariants: no leak, no double free);
  ``batch_that_fits`` compares how many sequences a memory budget holds, paged and contiguous.
* ``paged_model`` — ``PagedModel``: the ``Transformer``'s own modules run over the paged
  cache; prompts prefilled in packed chunks (keys written into the blocks, then gathered
  into contiguous tiles for the model's attention backend), decode steps batched over
  ``kernels.paged_decode_attention`` and replayed from CUDA graphs on a GPU.
* ``scheduler`` — ``Server``: continuous (iteration-level) batching (Yu et al., Orca,
  OSDI 2022) — every step admits waiting requests, decodes every running one, prefills the
  next prompt chunks and retires the finished; preemption by recomputation when blocks run
  out; ``RequestRefused`` for a request that could never fit. Per-request time to first
  token and time per output token, and the run's throughput (``Report.summary``).
* ``trace`` — ``synthetic_trace`` (a fixed seed; arrival times, prompt and output lengths
  from stated distributions) and ``static_batch_cost``, what static batches waste on it.

    >>> import torch
    >>> from infer_lib.model import ModelConfig, Transformer
    >>> from infer_lib.serving import Server, synthetic_trace
    >>> model = Transformer(ModelConfig.from_preset("tiny")).eval()
    >>> trace = synthetic_trace(3, prompt_len=(4, 9), new_tokens=2, vocab_size=256)
    >>> report = Server(model, attention="gather").run(trace)
    >>> [len(r.tokens) for r in report.results]
    [2, 2, 2]

``python -m infer_lib.experiments.serving`` measures it on a GPU against ``transformers``'
own continuous batching.
"""

from .paged_cache import NULL_BLOCK, BlockAllocator, MemoryUse, OutOfBlocks, PagedKVCache, batch_that_fits, blocks_for
from .paged_model import PagedModel
from .scheduler import Report, Request, RequestRefused, Result, Server, Stats, StepWork, percentile
from .trace import StaticBatchCost, poisson_arrivals, static_batch_cost, synthetic_trace, with_arrivals

__all__ = ["NULL_BLOCK", "BlockAllocator", "MemoryUse", "OutOfBlocks", "PagedKVCache", "PagedModel", "Report",
           "Request", "RequestRefused", "Result", "Server", "StaticBatchCost", "Stats", "StepWork", "batch_that_fits",
           "blocks_for", "percentile", "poisson_arrivals", "static_batch_cost", "synthetic_trace",
           "with_arrivals"]
