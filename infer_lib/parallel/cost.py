"""What tensor parallelism costs and buys a decoding step: a prediction from byte counts.

A decode step of one rank of ``N`` reads that rank's share of the weights and of the KV cache
from its own HBM — the step's memory time falls about ``N``-fold — and then waits for the
collectives that put the pieces together (``infer_lib.parallel``'s scheme):

* ``2·L + 1`` all-reduces of the activations, ``B · d`` numbers each (one after each
  attention and each MLP of the ``L`` layers, one after the vocabulary-parallel embedding);
* one all-gather of the logits, ``B · V`` numbers in all, ``B · V / N`` from each rank.

The prediction adds the two, in sequence (a step's collectives wait for the matmuls before
them)::

    step = rank_bytes / hbm_bandwidth
         + (2L + 1) · ring_allreduce_time(B·d·bytes, N, link, latency)
         + (N − 1) · (latency + B·V·bytes / (N · link))          # ring all-gather

``link`` is the bandwidth of **one direction** of a GPU's link to the others: half the
bidirectional NVLink or PCIe totals of ``hardware.SPECS`` (``link_bandwidth``). ``latency``
is the cost of one step of a ring (the link's latency and the neighbours' handshake; the
collective's kernel is launched once per call, not per step): not in any datasheet, so it is
a parameter, 0 unless given — a prediction that ignores it is a
lower bound on the communication, and at decode batch sizes, where each message is a few
tens of KB, it is the term that dominates. The measurement of several GPUs supplies it.

Compute is not counted: at decode batch sizes the matmuls are memory-bound (chapter 3), and
with ``N`` ranks each does ``1/N`` of them. Neither is anything the roofline leaves out on one
GPU (launches, small kernels): the prediction is a bound, not a forecast.

References: M. Shoeybi et al., "Megatron-LM" (2019), https://arxiv.org/abs/1909.08053;
NVIDIA nccl-tests, "Performance reported by NCCL tests" (ring algorithm and bus bandwidth),
https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md.
"""

from __future__ import annotations

import torch

from .. import hardware, roofline
from ..model import ModelConfig
from .sharding import check_shardable, kv_heads_for_rank

#: links of ``hardware.GPUSpec`` a prediction can use: name → the spec's field (GB/s, both
#: directions together)
LINKS = {"nvlink": "nvlink_GBps", "pcie": "pcie_GBps"}


def link_bandwidth(spec: hardware.GPUSpec, link: str = "nvlink") -> float:
    """Bytes per second in **one direction** of ``spec``'s ``link`` (``"nvlink"`` or
    ``"pcie"``): half the bidirectional total the spec table quotes, as NVIDIA quotes it."""
    if link not in LINKS:
        raise ValueError(f"link must be one of {sorted(LINKS)}, got {link!r}")
    total = getattr(spec, LINKS[link])
    if not total:
        raise ValueError(f"{spec.name} has no {link} figure in the spec table")
    return total * 1e9 / 2


def _esize(dtype: torch.dtype | int) -> int:
    return dtype if isinstance(dtype, int) else torch.empty((), dtype=dtype).element_size()


def rank_weight_bytes(config: ModelConfig, world_size: int, dtype: torch.dtype | int = torch.bfloat16) -> int:
    """Bytes of weights one rank reads per decode step: its columns of ``q, k, v, gate, up``,
    its rows of ``o, down``, the replicated norms and its ``V/N`` rows of the output head (the
    input embedding is left out: a step looks up only ``B`` of its rows). With fewer K/V heads
    than ranks, each rank reads the K/V head its query heads need."""
    check_shardable(config, world_size)
    n = world_size
    d, D, F, L = config.dim, config.head_dim, config.ffn_dim, config.n_layers
    kv = len(kv_heads_for_rank(config, 0, n))                  # the same count on every rank
    per_layer = (d * (config.n_heads // n) * D * 2             # q (columns) and o (rows)
                 + 2 * d * kv * D                              # k and v
                 + 3 * d * (F // n)                            # gate, up (columns), down (rows)
                 + 2 * d)                                      # two norms, replicated
    return (L * per_layer + d + (config.vocab_size // n) * d) * _esize(dtype)


def rank_kv_bytes(config: ModelConfig, batch: int, context: int, world_size: int,
                  dtype: torch.dtype | int = torch.bfloat16) -> int:
    """Bytes of KV cache one rank reads per decode step: its K/V heads, ``context`` tokens of
    ``batch`` sequences."""
    check_shardable(config, world_size)
    kv = len(kv_heads_for_rank(config, 0, world_size))
    return 2 * config.n_layers * kv * config.head_dim * _esize(dtype) * context * batch


def predict_decode_step(config: ModelConfig, batch: int, context: int, world_size: int, *,
                        hbm_bandwidth: float, link_bandwidth: float | None = None,
                        latency: float = 0.0, dtype: torch.dtype | int = torch.bfloat16) -> dict:
    """The predicted time of one decode step at ``world_size`` ranks (module docstring):
    ``memory_s`` (the rank's weights and cache at ``hbm_bandwidth`` B/s), ``allreduce_s``
    (``2L + 1`` ring all-reduces of ``B·d`` numbers), ``allgather_s`` (the logits),
    ``step_s``, ``tokens_per_s``, and the counts behind them. ``link_bandwidth`` (B/s, one
    direction) is needed for more than one rank."""
    for name, value in (("batch", batch), ("context", context), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    if not hbm_bandwidth > 0:
        raise ValueError(f"hbm_bandwidth must be > 0 B/s, got {hbm_bandwidth!r}")
    n, esize = world_size, _esize(dtype)
    if n > 1 and not (link_bandwidth and link_bandwidth > 0):
        raise ValueError(f"{n} ranks communicate: give link_bandwidth (B/s in one direction, "
                         "e.g. parallel.cost.link_bandwidth(spec, 'nvlink'))")
    weights = rank_weight_bytes(config, n, dtype)
    cache = rank_kv_bytes(config, batch, context, n, dtype)
    memory_s = (weights + cache) / hbm_bandwidth
    payload = batch * config.dim * esize                       # one all-reduce's message
    count = 2 * config.n_layers + 1
    if n == 1:
        allreduce_s = allgather_s = 0.0
    else:
        allreduce_s = count * roofline.ring_allreduce_time(payload, n, link_bandwidth, latency)
        logits = batch * config.vocab_size * esize
        allgather_s = (n - 1) * (latency + logits / (n * link_bandwidth))
    step_s = memory_s + allreduce_s + allgather_s
    return {"world_size": n, "batch": batch, "context": context,
            "rank_weight_bytes": weights, "rank_kv_bytes": cache,
            "allreduces": count, "allreduce_payload_bytes": payload,
            "memory_s": memory_s, "allreduce_s": allreduce_s, "allgather_s": allgather_s,
            "step_s": step_s, "tokens_per_s": batch / step_s}
