"""The end-to-end decode experiment (infer_lib.experiments.decode): its plumbing on any machine
(tiny model, wall clock), its byte count, and its refusal to time a CPU."""

import subprocess
import sys

import pytest
import torch

from infer_lib import device, measure
from infer_lib.experiments import decode
from infer_lib.model import ModelConfig


def test_smoke_run_follows_the_layout():
    doc = decode.run(smoke=True)
    measure.validate(doc, decode.SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == decode.SMOKE_TIMING
    assert {(r["backend"], r["batch"]) for r in doc["records"]} == {
        (b, n) for b in decode.BACKENDS for n in (1, 2)}
    dtype = device.default_dtype() if device.HAS_GPU else torch.float32   # what the run used
    assert doc["params"]["dtype"] == device.dtype_name(dtype)
    for r in doc["records"]:
        assert r["bytes"] == decode.step_bytes(ModelConfig.from_preset("tiny"), r["batch"], r["context"], dtype)
        assert r["fraction_of_roofline"] == pytest.approx(r["roofline_ms"] / r["ms"], rel=1e-3)


def test_step_bytes_are_the_weights_plus_the_cache_read():
    cfg = ModelConfig.from_preset("llama-3.2-1b")
    bf16 = torch.bfloat16
    weights = decode.step_bytes(cfg, 1, 0, bf16)
    # the cache adds its bytes per token for every token of every sequence
    per_token = cfg.kv_cache_bytes_per_token(bf16)
    assert decode.step_bytes(cfg, 16, 1024, bf16) - weights == per_token * 16 * 1024
    # a tied head reads the embedding matrix once per step; the lookup's B rows are left out
    assert cfg.tie_embeddings and weights == cfg.num_params() * 2
    untied = ModelConfig.from_preset("llama-2-7b")
    assert not untied.tie_embeddings
    assert decode.step_bytes(untied, 1, 0, bf16) == (untied.num_params()
                                                     - untied.vocab_size * untied.dim) * 2
    # about 2.5 GB of bf16 weights for Llama-3.2-1B (1.24 B parameters)
    assert 2.4e9 < weights < 2.6e9


@pytest.mark.skipif(device.HAS_GPU, reason="on a GPU the command measures")
def test_the_command_refuses_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "infer_lib.experiments.decode", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not device.HAS_GPU, reason="CUDA graphs and GPU timings")
def test_a_tiny_model_on_the_gpu_eager_and_graphed():
    doc = decode.run("tiny", batches=(1, 3), context=40)
    measure.validate(doc, decode.SCHEMA)
    assert {(r["backend"], r["batch"], r["graph"]) for r in doc["records"]} == {
        (b, n, g) for b in decode.BACKENDS for n in (1, 3) for g in (False, True)}
