"""Tensor parallelism: one ``Transformer`` split across ``N`` GPUs (or CPU processes), Megatron-style.

Each of ``N`` ranks holds ``1/N`` of every large matrix and computes ``1/N`` of every
matmul; a few collectives put the pieces back together, so every rank ends each block
with the full activations and returns the full logits. Shoeybi et al. 2019, *Megatron-LM*
(https://arxiv.org/abs/1909.08053), section 3; the collectives are ``torch.distributed``'s
(https://pytorch.org/docs/stable/distributed.html): NCCL on GPUs, gloo on CPUs.

What rank ``r`` of ``N`` holds (``sharding``; a linear layer ``y = x·Wᵀ``, ``W`` (out, in)):

==========================  ===============================  ===================================
weight                      split                            then
==========================  ===============================  ===================================
embedding (V, d)            rows ``r·V/N …``: its tokens     all-reduce (exact: one rank's row
                                                             + N − 1 zeros)
q_proj (H·D, d)             columns = query heads ``r·H/N …`` —
k_proj, v_proj (H_kv·D, d)  columns = the K/V heads those    —
                            query heads read (below)
attention                   per head, on the rank's heads    —
o_proj (d, H·D)             rows = the same query heads      **all-reduce** (B·S·d)
gate_proj, up_proj (F, d)   columns: hidden units ``r·F/N …`` —
down_proj (d, F)            rows: the same hidden units      **all-reduce** (B·S·d)
RMSNorms (d,)               replicated                       —
output head (V, d)          rows ``r·V/N …``: its logits     all-gather → (B, S, V) on every rank
==========================  ===============================  ===================================

Column-then-row is Megatron's pairing: the column-split layer's outputs are exactly the
row-split layer's inputs, so attention (heads are independent) and SwiGLU (elementwise in
``F``) run on local data and one all-reduce per pair sums the partial outputs. A tied head
(``config.tie_embeddings``) shares the embedding's rows, which are split the same way.

**K/V heads.** Query head ``h`` reads K/V head ``h // (H/H_kv)``; rank ``r`` has query
heads ``r·H/N … (r+1)·H/N − 1``. Supported:

* ``N`` divides ``H_kv``: rank ``r`` holds K/V heads ``r·H_kv/N …``, each head on one rank;
* ``H_kv`` divides ``N`` (``H_kv < N``, e.g. MQA): every rank's query heads fall in one
  group, so it holds that one K/V head, ``r·H_kv // N``, which ``N/H_kv`` ranks replicate
  (their K/V projections repeat the same work; their KV caches each hold a copy).

Anything else (``H = 12, H_kv = 6, N = 4``: rank 1's query heads 3, 4, 5 read K/V heads 1
and 2 unevenly) is refused, as is an ``N`` that does not divide ``H``, ``F`` or ``V``:
a ``ValueError`` naming the size, raised before any communication. Each rank's KV cache
holds ``2·L·max(H_kv/N, 1)·D·bytes`` per token (``KVCache(model.config, ...)``).

**Communication per forward pass**: one all-reduce after the embedding and two per block,
``2L + 1`` all-reduces of a ``(B, S, d)`` tensor — ``B·d·bytes`` each in a decode step
(``S = 1``; a ring all-reduce sends about ``2·(N−1)/N`` times that per rank) — plus one
all-gather of the logits, ``B·V/N·bytes`` from each rank. They are on the critical path: a
decode step waits for each in turn.

**Exactness.** Row-parallel layers sum ``N`` partial sums, so results differ from one
device's in the last bits (fp32: ~1e-6 relative); the embedding is exact, and each logit
is one dot product on one rank (no sum across ranks). Every rank receives the same all-reduced bits, so greedy decoding picks the
same tokens on every rank. Sampling (``temperature > 0``) draws on each rank: give every
rank a ``torch.Generator`` seeded alike, or the ranks' sequences part ways.

**Safety.** ``init`` bounds every collective by a timeout (a rank that never arrives
makes the others fail, not hang). ``TensorParallelTransformer`` checks, before sharding,
that every rank holds the same config and the same weights (exact integer checksums,
all-gathered) and raises on every rank, naming the mismatch. (A process group started
without ``init`` keeps its own timeout: pass ``timeout=`` to ``init_process_group``.)

Usage, under ``torchrun --nproc-per-node N script.py``::

    from infer_lib import parallel
    from infer_lib.model import from_pretrained, generate
    info = parallel.init()                               # NCCL + cuda:LOCAL_RANK, or gloo
    model = from_pretrained(path, device=info.device)    # the whole model, on every rank
    tp = parallel.TensorParallelTransformer(model)       # keeps this rank's 1/N
    del model
    out = generate(tp, tokens, max_new_tokens=32)        # the same tokens on every rank
    parallel.shutdown()

Modules: ``sharding`` (the rules, pure functions), ``distributed`` (``init``, ``shutdown``,
``check_replicas``), ``tensor_parallel`` (the model and its parallel layers).

``cost`` predicts what it buys a decode step: each rank's bytes at its HBM bandwidth plus the
collectives at its link's (``cost.predict_decode_step``).
"""

from .distributed import DEFAULT_TIMEOUT, RankInfo, check_replicas, checksum, init, rank_info, shutdown
from .sharding import (check_shardable, kv_heads_for_rank, shard_config, shard_state_dict, shard_tensor,
                       vocab_range)
from .tensor_parallel import (RowParallelLinear, TensorParallelTransformer, VocabParallelEmbedding,
                              VocabParallelHead)

__all__ = [
    "DEFAULT_TIMEOUT", "RankInfo", "RowParallelLinear", "TensorParallelTransformer", "VocabParallelEmbedding",
    "VocabParallelHead", "check_replicas", "check_shardable", "checksum", "init", "kv_heads_for_rank",
    "rank_info", "shard_config", "shard_state_dict", "shard_tensor", "shutdown", "vocab_range",
]
