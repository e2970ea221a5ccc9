"""The KV-cache experiment (infer_lib.experiments.kv_cache): its plumbing on any machine (tiny
model, small buffers, wall clock) and its refusal to time a CPU."""

import subprocess
import sys

import pytest
import torch

from infer_lib import device, measure
from infer_lib.experiments import kv_cache
from infer_lib.model import ModelConfig


def test_smoke_run_follows_the_layout():
    doc = kv_cache.run(smoke=True)
    measure.validate(doc, kv_cache.SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == kv_cache.SMOKE_TIMING
    assert [r["length"] for r in doc["per_token"]] == [4, 8]
    assert {t["pinned"] for t in doc["transfer"]} == {False, True}
    off = doc["offload"]
    cfg = ModelConfig.from_preset("tiny")
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32   # what the run used
    assert doc["params"]["dtype"] == device.dtype_name(dtype)
    assert off["cache_bytes"] == cfg.kv_cache_bytes_per_token(dtype) * off["context"] * off["batch"]
    assert off["slowdown"] == pytest.approx(off["pcie_ms"] / off["hbm_ms"], rel=1e-3)


def test_a_transfer_moves_its_bytes():
    t = kv_cache.transfer(2**16, pinned=False, smoke=True)
    assert t["bytes"] == 2**16 and t["GBps"] == pytest.approx(t["bytes"] / t["us"] / 1e3, rel=1e-3)


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the command measures")
def test_the_command_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer_lib.experiments.kv_cache", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


@pytest.mark.skipif(not device.HAS_GPU, reason="GPU timings")
def test_a_tiny_model_on_the_gpu():
    doc = kv_cache.run("tiny", lengths=(16, 64))
    measure.validate(doc, kv_cache.SCHEMA)
    # (the plumbing on the GPU path: pinned copies, CUDA-graph timing; no timing is asserted)
    assert {t["pinned"] for t in doc["transfer"]} == {False, True}
