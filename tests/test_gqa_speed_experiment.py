"""The GQA speed experiment (infer_lib.experiments.gqa_speed): its plumbing on any machine (tiny
sizes, the kernel in the interpreter, wall clock), the bytes it counts, and its refusal to time a CPU."""

import subprocess
import sys

import pytest

from infer_lib import device, measure
from infer_lib.experiments import gqa_speed
from infer_lib.model import ModelConfig


@pytest.fixture(scope="module")
def smoke_doc():
    return gqa_speed.run(smoke=True)


def test_smoke_run_follows_the_layout(smoke_doc):
    doc = smoke_doc
    measure.validate(doc, gqa_speed.SCHEMA)
    s = gqa_speed.SMOKE
    assert doc["provenance"]["smoke"] is True and doc["timing"] == gqa_speed.SMOKE_TIMING
    assert [(r["n_kv_heads"], r["batch"]) for r in doc["attention"]] == [
        (n, b) for n in s["kv_heads"] for b in s["batches"]]
    assert [(r["n_kv_heads"], r["batch"]) for r in doc["model"]] == [
        (n, b) for n in s["model_kv_heads"] for b in s["model_batches"]]
    for r in doc["attention"]:
        assert r["GBps"] == pytest.approx(r["bytes"] / r["us"] / 1e3, rel=1e-3)
        assert r["predicted_us"] == pytest.approx(r["bytes"] / (doc["copy_GBps"] * 1e3), rel=1e-3)


def test_bytes_shrink_with_the_kv_heads(smoke_doc):
    # every cached key and value once, plus q and the output: by hand for one case
    n = gqa_speed.attention_bytes(batch=2, n_kv_heads=8, context=100, heads=32, head_dim=128,
                                  element_size=2)
    assert n == (2 * 2 * 100 * 8 * 128 + 2 * 2 * 32 * 128) * 2
    base = ModelConfig.from_preset(gqa_speed.SMOKE["preset"])
    for r in smoke_doc["model"]:
        per_token = 2 * base.n_layers * r["n_kv_heads"] * base.head_dim * 4      # fp32 on the CPU
        if not device.HAS_GPU:
            assert r["kv_cache_bytes"] == per_token * r["batch"] * r["context"]
    by_heads = {r["n_kv_heads"]: r["bytes"] for r in smoke_doc["attention"] if r["batch"] == 1}
    assert sorted(by_heads, reverse=True) == list(by_heads) and \
        list(by_heads.values()) == sorted(by_heads.values(), reverse=True)


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_refuses_to_time_a_cpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "infer_lib.experiments.gqa_speed", "--out-dir",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "needs a CUDA GPU" in out.stderr
    assert not list(tmp_path.iterdir())
