"""Tensor parallelism (``infer_lib.parallel``): the sharding rules in this process, then the
model split over N = 2 and N = 4 gloo processes on the CPU, each compared with the whole
model in one process: full-sequence and last-only logits, prefill and decode-step logits
through each rank's KV cache, greedy ``generate`` (the same tokens on every rank), and the
refusals — indivisible sizes before any collective, different weights or configs on
different ranks on every rank, a collective some rank never joins after its timeout.

The processes are started with ``torch.multiprocessing`` (``spawn``: a fresh interpreter,
nothing inherited from pytest's threads), find each other through ``127.0.0.1`` and a port
the OS picked as free (so two xdist workers never share one), and are killed if they outlive
a deadline: a failure never leaves a process behind or hangs the run.
"""

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from infer_lib import parallel
from infer_lib.model import PRESETS, KVCache, ModelConfig, Transformer, decode_one_token, generate, prefill
from conftest import free_port, spawn_ranks  # noqa: E402

ATOL, RTOL = 1e-5, 1e-5          # fp32: the row-parallel sums add in another order
DEADLINE_S = 150                 # a spawned group that outlives this is killed and the test fails

#: tiny: GQA (H = 4, H_kv = 2), tied head — H_kv = N at N = 2, H_kv < N (replicated) at N = 4.
#: tiny-mha: untied head. mqa: H_kv = 1 < N, untied (vocab 97 → 96, so that N divides it).
CONFIGS = {
    "tiny": PRESETS["tiny"],
    "tiny-mha": PRESETS["tiny-mha"],
    "mqa": dataclasses.replace(PRESETS["tiny-mqa"], vocab_size=96),
}


def _model(config: ModelConfig, seed: int = 0) -> Transformer:
    """Random weights, the same in every process for one seed, norms included."""
    torch.manual_seed(seed)
    model = Transformer(config).eval().requires_grad_(False)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.normal_(1.0, 0.2)
    return model


# -- the rules, in this process -------------------------------------------------------------------


@pytest.mark.parametrize("H, H_kv, N", [(4, 4, 2), (4, 2, 2), (4, 2, 4), (4, 1, 2), (4, 1, 4), (8, 4, 8),
                                        (32, 8, 4), (32, 8, 16), (9, 3, 3), (12, 4, 2)])
def test_each_rank_holds_the_kv_heads_its_query_heads_read(H, H_kv, N):
    config = ModelConfig(vocab_size=8 * N, dim=16 * H, n_layers=1, n_heads=H, n_kv_heads=H_kv,
                         head_dim=16, ffn_dim=8 * N)
    local = parallel.shard_config(config, N)
    G = H // H_kv                                        # query heads per K/V head
    G_local = local.n_heads // local.n_kv_heads
    assert local.n_heads == H // N and local.n_kv_heads == max(H_kv // N, 1)
    held_by = [0] * H_kv
    for r in range(N):
        kv = parallel.kv_heads_for_rank(config, r, N)
        assert len(kv) == local.n_kv_heads
        for j in range(local.n_heads):                   # local query head j is global r·H/N + j
            assert kv[j // G_local] == (r * local.n_heads + j) // G
        for k in kv:
            held_by[k] += 1
    assert held_by == [max(N // H_kv, 1)] * H_kv        # replicated N/H_kv times when H_kv < N


def test_refuses_what_it_cannot_split():
    tiny = PRESETS["tiny"]
    cases = [
        (dataclasses.replace(tiny, n_heads=6, n_kv_heads=6, head_dim=16), 4, r"n_heads=6 query heads"),
        (dataclasses.replace(tiny, n_heads=12, n_kv_heads=6, head_dim=16), 4, r"n_kv_heads=6 K/V heads neither"),
        (dataclasses.replace(tiny, ffn_dim=162), 4, r"ffn_dim=162 hidden units"),
        (PRESETS["tiny-mqa"], 2, r"vocab_size=97 does not divide into 2"),
    ]
    for config, N, message in cases:
        with pytest.raises(ValueError, match=message):
            parallel.check_shardable(config, N)
        with pytest.raises(ValueError, match=message):
            parallel.shard_state_dict(_model(config).state_dict(), config, 0, N)
    with pytest.raises(ValueError, match="world_size must be an integer ≥ 1"):
        parallel.shard_config(tiny, 0)
    with pytest.raises(ValueError, match="rank 2 is not below world_size 2"):
        parallel.kv_heads_for_rank(tiny, 2, 2)


@pytest.mark.parametrize("name, N", [("tiny-mha", 2), ("tiny", 4), ("mqa", 2)])
def test_shards_put_back_together_are_the_model(name, N):
    config = CONFIGS[name]
    full = _model(config).state_dict()
    shards = [parallel.shard_state_dict(full, config, r, N) for r in range(N)]
    assert ("lm_head.weight" in shards[0]) == (not config.tie_embeddings)
    cat = {name: torch.cat([s[name] for s in shards], dim=0) for name in shards[0]}
    cat_cols = {name: torch.cat([s[name] for s in shards], dim=1) for name in shards[0] if shards[0][name].dim() == 2}
    D = config.head_dim
    for key, tensor in full.items():
        if config.tie_embeddings and key == "lm_head.weight":
            continue
        if key.endswith(("norm.weight",)):
            assert all(torch.equal(s[key], tensor) for s in shards)
        elif key.endswith(("o_proj.weight", "down_proj.weight")):
            assert torch.equal(cat_cols[key], tensor), key
        elif key.endswith(("k_proj.weight", "v_proj.weight")):
            for r, s in enumerate(shards):
                heads = parallel.kv_heads_for_rank(config, r, N)
                assert torch.equal(s[key], tensor[heads.start * D:heads.stop * D]), (key, r)
        else:
            assert torch.equal(cat[key], tensor), key
    assert all(t.is_contiguous() for s in shards for t in s.values())


def test_shard_state_dict_refuses_a_state_that_is_not_the_config():
    config = PRESETS["tiny-mha"]
    state = _model(config).state_dict()
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\]"):
        parallel.shard_state_dict({k: v for k, v in state.items() if k != "norm.weight"}, config, 0, 2)
    with pytest.raises(ValueError, match=r"layers.0.mlp.up_proj.weight has shape \(160, 32\), the config needs"):
        parallel.shard_state_dict({**state, "layers.0.mlp.up_proj.weight": torch.zeros(160, 32)}, config, 0, 2)
    hf = {f"model.{k}" if k != "lm_head.weight" else k: v for k, v in state.items()}   # Hugging Face names
    assert parallel.shard_state_dict(hf, config, 1, 2).keys() == parallel.shard_state_dict(state, config, 1, 2).keys()


def test_checksum_is_exact():
    x = torch.randn(5, 7)
    assert int(parallel.checksum(x)) == int(parallel.checksum(x.clone()))
    y = x.clone()
    y[2, 3] = torch.nextafter(y[2, 3], torch.tensor(float("inf")))        # one ulp
    assert int(parallel.checksum(y)) != int(parallel.checksum(x))
    swapped = x.clone()
    swapped[0, 0], swapped[0, 1] = x[0, 1], x[0, 0]
    assert int(parallel.checksum(swapped)) != int(parallel.checksum(x))
    assert int(parallel.checksum(x.t())) == int(parallel.checksum(x.t().contiguous()))
    for t in (x.bfloat16(), torch.arange(5, dtype=torch.uint8), torch.empty(0)):
        assert int(parallel.checksum(t)) == int(parallel.checksum(t.clone()))


def test_refuses_without_a_process_group(monkeypatch):
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        parallel.TensorParallelTransformer(_model(PRESETS["tiny"]))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="RANK is not set: start the processes with torchrun"):
        parallel.init(backend="gloo")
    with pytest.raises(ValueError, match="backend must be 'nccl', 'gloo' or None"):
        parallel.init(backend="mpi")
    assert not dist.is_initialized()


# -- N processes -------------------------------------------------------------------------------


def _join(rank: int, world_size: int, port: int, timeout_s: float = 30, ready_dir=None) -> parallel.RankInfo:
    """``parallel.init`` as under torchrun. With ``ready_dir``, first wait (files, not
    collectives) until every process has started, so that a short ``timeout_s`` measures the
    collectives, not how unevenly a loaded machine starts interpreters."""
    if ready_dir is not None:
        Path(ready_dir, str(rank)).touch()
        deadline = time.monotonic() + 60
        while len(list(Path(ready_dir).iterdir())) < world_size:
            assert time.monotonic() < deadline, "the other processes never started"
            time.sleep(0.05)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)                 # N processes on two cores
    info = parallel.init(backend="gloo", timeout=timeout_s)
    assert info == (rank, world_size, rank, torch.device("cpu"), "gloo")
    return info


def _same_on_every_rank(t: torch.Tensor) -> bool:
    gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, t.contiguous())
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _check_matches_one_process(name: str) -> None:
    config = CONFIGS[name]
    N, V = dist.get_world_size(), config.vocab_size
    model = _model(config)
    tp = parallel.TensorParallelTransformer(model)
    assert tp.full_config == config and tp.config.n_kv_heads == max(config.n_kv_heads // N, 1)
    assert tp.embed_tokens.weight.shape == (V // N, config.dim)
    assert (tp.lm_head.weight is tp.embed_tokens.weight) == config.tie_embeddings
    tokens = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))   # the same on every rank
    tokens[0, 0], tokens[1, 0] = 0, V - 1                    # the first and last rank's vocabulary ranges

    torch.testing.assert_close(tp(tokens), model(tokens), atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tp(tokens, last_only=True), model(tokens, last_only=True), atol=ATOL, rtol=RTOL)

    cache, tp_cache = KVCache(model.config, 2, 12), KVCache(tp.config, 2, 12)
    logits, tp_logits = prefill(model, tokens, cache), prefill(tp, tokens, tp_cache)
    torch.testing.assert_close(tp_logits, logits, atol=ATOL, rtol=RTOL)
    for step in range(3):
        token = logits.argmax(-1)
        logits, tp_logits = decode_one_token(model, token, cache), decode_one_token(tp, token, tp_cache)
        torch.testing.assert_close(tp_logits, logits, atol=ATOL, rtol=RTOL, msg=lambda m: f"step {step}: {m}")
        assert _same_on_every_rank(tp_logits.argmax(-1))
    assert tp_cache.seqlens.tolist() == [10, 10]
    heads = tp.kv_heads                                      # the rank's cache: only its K/V heads
    assert tp_cache.k_cache.shape[2] == len(heads)
    torch.testing.assert_close(tp_cache.k_cache, cache.k_cache[:, :, heads.start:heads.stop], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tp_cache.v_cache, cache.v_cache[:, :, heads.start:heads.stop], atol=ATOL, rtol=RTOL)

    expected = generate(model, tokens, max_new_tokens=6)
    out = generate(tp, tokens, max_new_tokens=6)
    assert torch.equal(out, expected) and _same_on_every_rank(out)
    prompts = [tokens[0, :3], tokens[1]]                     # ragged: prefilled one row at a time
    assert torch.equal(generate(tp, prompts, 5, pad_token=-1), generate(model, prompts, 5, pad_token=-1))

    if tp.config.n_kv_heads != config.n_kv_heads:           # the cache must be the rank's, not the model's
        with pytest.raises(ValueError, match="build it from the shard's config"):
            tp(tokens, KVCache(config, 2, 12))
    with pytest.raises(ValueError, match=rf"token ids must lie in \[0, {V}\)"):
        tp(torch.full((1, 2), V))


def _check_refusals(rank: int, world_size: int) -> None:
    last = rank == world_size - 1
    # indivisible sizes: ValueError before any collective, on every rank alike
    for config, message in [
        (dataclasses.replace(PRESETS["tiny-mha"], n_heads=3, n_kv_heads=3, dim=48, head_dim=16),
         "n_heads=3 query heads do not divide"),
        (dataclasses.replace(PRESETS["tiny-mha"], ffn_dim=161), "ffn_dim=161 hidden units"),
        (PRESETS["tiny-mqa"], "vocab_size=97 does not divide"),
    ]:
        with pytest.raises(ValueError, match=message):
            parallel.TensorParallelTransformer(_model(config))
    # one rank with other weights: every rank raises, naming the tensor and the rank
    model = _model(PRESETS["tiny"])
    if last:
        model.layers[1].mlp.up_proj.weight[3, 5] += 1e-3
    with pytest.raises(RuntimeError, match=rf"1 tensor\(s\) differ between rank 0 and rank\(s\) \[{world_size - 1}\] "
                                           r"\(seen from rank \d\): layers.1.mlp.up_proj.weight;"):
        parallel.TensorParallelTransformer(model)
    # another seed on one rank: every tensor differs
    with pytest.raises(RuntimeError, match="tensor parallelism needs the same weights on every rank"):
        parallel.TensorParallelTransformer(_model(PRESETS["tiny"], seed=1 if last else 0))
    # one rank with another config
    config = dataclasses.replace(PRESETS["tiny"], norm_eps=1e-6 if last else 1e-5)
    with pytest.raises(RuntimeError, match=r"config differs from rank \d's: norm_eps="):
        parallel.TensorParallelTransformer(_model(config))
    assert _same_on_every_rank(torch.tensor([1.0]))         # and the group is still in step


def _worker_matches(rank: int, world_size: int, port: int, names: list[str]) -> None:
    _join(rank, world_size, port)
    try:
        for name in names:
            _check_matches_one_process(name)
        _check_refusals(rank, world_size)
    finally:
        parallel.shutdown()


@pytest.mark.parametrize("world_size", [2, 4])
def test_tensor_parallel_matches_one_process(world_size):
    spawn_ranks(_worker_matches, world_size, free_port(), list(CONFIGS), deadline_s=DEADLINE_S)


def _worker_timeout(rank: int, world_size: int, port: int, ready_dir: str) -> None:
    _join(rank, world_size, port, timeout_s=2, ready_dir=ready_dir)
    try:
        if rank == 0:                                        # rank 1 never joins this all-reduce
            start = time.monotonic()
            with pytest.raises(RuntimeError, match="(?i)timed out"):
                dist.all_reduce(torch.ones(4))
            assert time.monotonic() - start < 10, "the timeout did not bound the collective"
        else:
            time.sleep(3)                                    # longer than the timeout, then leave
    finally:
        parallel.shutdown()


def test_a_collective_some_rank_never_joins_fails_instead_of_hanging(tmp_path):
    spawn_ranks(_worker_timeout, 2, free_port(), str(tmp_path), deadline_s=DEADLINE_S)
