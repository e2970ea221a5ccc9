"""The serving experiment (infer_lib.experiments.serving): its plumbing on any machine (the tiny
model, a few requests, the kernels in the interpreter, a wall clock), the pieces it counts with
(the shuffled pool, the roofline of a step), the peer's weights and the recording of its failure,
and its refusal to time a CPU."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import random_model
from infer_lib import device, measure
from infer_lib.experiments import serving as exp
from infer_lib.model import ModelConfig
from infer_lib.serving import Stats, StepWork


@pytest.fixture(scope="module")
def smoke_doc():
    return exp.run(smoke=True)


def test_smoke_run_follows_the_layout(smoke_doc):
    doc = smoke_doc
    measure.validate(doc, exp.SCHEMA)
    s = exp.SMOKE
    assert doc["provenance"]["smoke"] is True and doc["timing"] == exp.SMOKE_TIMING
    assert len(doc["kernel"]) == len(s["kernel_shapes"]) * len(s["kernel_blocks"])
    for r in doc["kernel"]:
        assert r["ratio"] == pytest.approx(r["contiguous_us"] / r["paged_us"], rel=1e-3)
        assert r["paged_GBps"] == pytest.approx(r["bytes"] / r["paged_us"] / 1e3, rel=1e-3)
    for run in (doc["offline"], doc["online"]):
        assert run["requests"] == s["n_requests"] and run["refused"] == 0
        assert run["output_tokens"] == s["n_requests"] * s["new_tokens"]
        assert run["prompt_tokens"] == sum(doc["trace"]["prompt_lens"])
    assert [r["id"] for r in doc["online"]["per_request"]] == list(range(s["n_requests"]))
    assert doc["online"]["rate"] == s["online_rate"]
    mem = doc["offline"]["memory"]
    assert mem["peak_blocks"] == doc["offline"]["peak_blocks"]
    assert mem["written_MB"] <= mem["paged_MB"]
    dtype = getattr(torch, doc["params"]["dtype"])     # fp32 on a CPU, the GPU's 16-bit type there
    per_token = ModelConfig.from_preset("tiny").kv_cache_bytes_per_token(dtype)
    server = doc["params"]["server"]
    assert mem["contiguous_MB"] == pytest.approx(s["max_batch"] * server["max_seq_len"] * per_token / 1e6)
    assert mem["paged_MB"] == pytest.approx(mem["peak_blocks"] * server["block_size"] * per_token / 1e6)
    assert doc["peer"] == {"skipped": "smoke run"}
    assert doc["params"]["server"]["attention"] == "paged"
    json.dumps(doc)                                      # what save writes


def test_main_validates_and_writes_the_file(tmp_path, monkeypatch, smoke_doc, capsys):
    monkeypatch.setattr(exp, "run", lambda *a, **k: smoke_doc)
    exp.main(["--out-dir", str(tmp_path), "--smoke"])
    path = tmp_path / f"serving_{measure.gpu_key()}.json"
    assert json.loads(path.read_text())["offline"] == smoke_doc["offline"]
    out = capsys.readouterr().out
    assert "offline:" in out and "online at" in out and str(path) in out


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_refuses_to_time_a_cpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "infer_lib.experiments.serving", "--out-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "needs a CUDA GPU" in out.stderr
    assert not list(tmp_path.iterdir())


def test_the_shuffled_pool_holds_the_same_keys():
    k = torch.randn(3, 2, 37, 16)
    v = torch.randn(3, 2, 37, 16)
    kb, vb, table = exp.paged_copy(k, v, block_size=16)
    assert kb.shape == (9, 2, 16, 16) and table.dtype == torch.int32 and table.shape == (3, 3)
    assert sorted(table.flatten().tolist()) == list(range(9))
    assert table[:, 0].tolist() != [0, 3, 6]                       # shuffled, not in order
    for b in range(3):
        keys = torch.cat([kb[i] for i in table[b].tolist()], dim=1)[:, :37]
        torch.testing.assert_close(keys, k[b])
        torch.testing.assert_close(torch.cat([vb[i] for i in table[b].tolist()], dim=1)[:, :37], v[b])


def test_the_roofline_of_one_decode_step_by_hand():
    config = ModelConfig.from_preset("tiny")
    stats = Stats(log=[StepWork(decode_rows=2, decode_keys=30, prefill_tokens=0, prefill_chunks=0,
                                prefill_keys=0, prefill_pairs=0)])
    r = exp.roofline(stats, config, 2, wall_s=1.0, copy_GBps=1.0, matmul_TFLOPs=1e-3)
    L, d, V, F, H, H_kv, D = 2, 64, 256, 160, 4, 2, 16
    body = L * (d * H * D + 2 * d * H_kv * D + H * D * d + 3 * d * F + 2 * d) + d
    weights = (body + V * d) * 2                                   # the tied head reads the embedding
    kv = 2 * L * H_kv * D * 2                                      # bytes per token
    assert r["bytes"] == weights + kv * (30 + 2)                   # keys read, new keys written
    assert r["flops"] == 2 * body * 2 + 2 * V * d * 2 + 4 * L * H * D * 30
    assert r["roofline_s"] == pytest.approx(max(r["flops"] / 1e9, r["bytes"] / 1e9), rel=1e-4)
    assert r["fraction_of_roofline"] == pytest.approx(r["roofline_s"], rel=1e-3)


def test_a_failing_peer_is_recorded_not_raised(monkeypatch):
    def broken(*args):
        raise RuntimeError("generate_batch is not there")
    monkeypatch.setattr(exp, "transformers_peer", broken)
    doc = exp.peer_record(None, [], torch.float32, [], 1.0)
    assert doc == {"error": "RuntimeError: generate_batch is not there"}


def test_the_peer_agreement_counts_matching_requests():
    assert exp._agreement([[1, 2], [3, 4], [5]], [[1, 2], [3, 9], [6]]) == \
        {"same_tokens": 1, "same_first_token": 2, "compared": 3}


def test_the_peer_model_holds_our_weights():
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    transformers.logging.set_verbosity_error()
    ours = random_model("tiny").to(device.DEVICE)
    hf, impl = exp.hf_model(ours, torch.float32)
    assert impl in exp.PEER_ATTENTION
    theirs = dict(hf.named_parameters())
    assert len(theirs) == len(dict(ours.named_parameters()))
    # a plain forward through the same weights: "paged|sdpa" attends only inside generate_batch's
    # paged cache (on a GPU transformers refuses a plain forward with it), so plain SDPA here
    hf, impl = exp.hf_model(ours, torch.float32, attention=("sdpa",))
    assert impl == "sdpa"
    tokens = torch.randint(0, 256, (2, 9), device=device.DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), atol=1e-5, rtol=1e-5)
