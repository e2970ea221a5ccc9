"""infer_lib.parallel.cost: the predicted decode step of N tensor-parallel ranks, checked against
the single-GPU byte count, the sharding rules and the ring model it is made of."""

import dataclasses

import pytest
import torch

from infer_lib import hardware, roofline
from infer_lib.experiments import decode
from infer_lib.model import ModelConfig
from infer_lib.parallel import cost

BF16 = torch.bfloat16
LLAMA_8B = ModelConfig.from_preset("llama-3-8b")       # H 32, H_kv 8, untied head


def test_one_rank_reads_what_one_gpu_reads():
    for preset in ("llama-3-8b", "llama-3.2-1b", "tiny"):
        cfg = ModelConfig.from_preset(preset)
        got = cost.rank_weight_bytes(cfg, 1, BF16) + cost.rank_kv_bytes(cfg, 4, 100, 1, BF16)
        assert got == decode.step_bytes(cfg, 4, 100, BF16), preset


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ranks_split_the_weights_and_replicate_only_the_norms(n):
    one = cost.rank_weight_bytes(LLAMA_8B, 1, BF16)
    norms = (2 * LLAMA_8B.n_layers + 1) * LLAMA_8B.dim * 2       # replicated on every rank
    assert n * cost.rank_weight_bytes(LLAMA_8B, n, BF16) - (n - 1) * norms == one
    # with H_kv = 8 ≥ N, the cache splits exactly too
    assert n * cost.rank_kv_bytes(LLAMA_8B, 16, 4096, n, BF16) == cost.rank_kv_bytes(LLAMA_8B, 16, 4096, 1, BF16)


def test_fewer_kv_heads_than_ranks_replicates_the_cache():
    mqa = dataclasses.replace(LLAMA_8B, n_kv_heads=1)
    per_rank = cost.rank_kv_bytes(mqa, 1, 4096, 8, BF16)
    assert per_rank == cost.rank_kv_bytes(mqa, 1, 4096, 1, BF16)   # every rank holds the one head


def test_the_step_is_its_memory_time_plus_its_collectives():
    bw, link, lat = 4.8e12, 450e9, 5e-6
    p = cost.predict_decode_step(LLAMA_8B, 16, 4096, 4, hbm_bandwidth=bw, link_bandwidth=link,
                                 latency=lat)
    assert p["allreduces"] == 2 * LLAMA_8B.n_layers + 1
    assert p["allreduce_payload_bytes"] == 16 * LLAMA_8B.dim * 2
    assert p["memory_s"] == pytest.approx((p["rank_weight_bytes"] + p["rank_kv_bytes"]) / bw)
    assert p["allreduce_s"] == pytest.approx(
        p["allreduces"] * roofline.ring_allreduce_time(p["allreduce_payload_bytes"], 4, link, lat))
    assert p["step_s"] == pytest.approx(p["memory_s"] + p["allreduce_s"] + p["allgather_s"])
    assert p["tokens_per_s"] == pytest.approx(16 / p["step_s"])
    one = cost.predict_decode_step(LLAMA_8B, 16, 4096, 1, hbm_bandwidth=bw)
    assert one["allreduce_s"] == one["allgather_s"] == 0
    assert p["memory_s"] < one["memory_s"] / 3.9                  # about N-fold less to read


def test_latency_is_what_stops_tensor_parallelism_paying_at_batch_1():
    h100 = hardware.SPECS["h100_sxm"]
    bw = h100.bandwidth_GBps * 1e9
    nvlink = cost.link_bandwidth(h100, "nvlink")
    free = [cost.predict_decode_step(LLAMA_8B, 1, 4096, n, hbm_bandwidth=bw, link_bandwidth=nvlink)
            ["tokens_per_s"] for n in (1, 2, 4, 8)]
    assert free == sorted(free)                       # without latency, more ranks always help
    slow = [cost.predict_decode_step(LLAMA_8B, 1, 4096, n, hbm_bandwidth=bw, link_bandwidth=nvlink,
                                     latency=20e-6)["tokens_per_s"] for n in (1, 2, 4, 8)]
    assert slow[3] < slow[2]                          # 20 µs a ring step: 8 ranks lose to 4


def test_link_bandwidth_is_one_direction_of_the_spec_tables_total():
    h100 = hardware.SPECS["h100_sxm"]
    assert cost.link_bandwidth(h100, "nvlink") == h100.nvlink_GBps * 1e9 / 2
    assert cost.link_bandwidth(h100, "pcie") == h100.pcie_GBps * 1e9 / 2
    t4 = hardware.SPECS["t4"]
    with pytest.raises(ValueError, match="no nvlink figure"):
        cost.link_bandwidth(t4, "nvlink")
    with pytest.raises(ValueError, match="link must be one of"):
        cost.link_bandwidth(h100, "infiniband")


@pytest.mark.parametrize("kwargs, match", [
    ({"world_size": 3}, "n_heads=32"),
    ({"world_size": 2, "link_bandwidth": None}, "give link_bandwidth"),
    ({"batch": 0}, "batch"),
    ({"hbm_bandwidth": 0}, "hbm_bandwidth"),
])
def test_bad_input_is_refused(kwargs, match):
    args = {"batch": 1, "context": 128, "world_size": 2, "hbm_bandwidth": 1e12,
            "link_bandwidth": 1e11, **kwargs}
    with pytest.raises(ValueError, match=match):
        cost.predict_decode_step(LLAMA_8B, args.pop("batch"), args.pop("context"),
                                 args.pop("world_size"), **args)
