"""Tests of infer_lib.measure: the two ceilings (their CPU smoke path, their refusal without a GPU,
their records on a GPU), provenance and its commit, the bytes formatter, the one validator — and
every shipped measurement file in infer_lib/data/ validating against its topic's schema."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infer_lib import device, measure
from infer_lib.bench import core as bench_core
from infer_lib.experiments import (allreduce, attention_sweep, block_size, bottlenecks, ceilings,
                                   decode, fast_decode, fusion, gqa_quality, gqa_speed, kv_cache,
                                   prefill_decode, serving, tensor_cores, tp_decode)

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------
# The two ceilings
# ----------------------------------------------------------------------------


@pytest.mark.skipif(device.HAS_GPU, reason="checks the refusal on machines without a GPU")
@pytest.mark.parametrize("what, call", [
    ("copy_bandwidth", lambda: measure.copy_bandwidth(2**12)),
    ("matmul_flops", lambda: measure.matmul_flops(16)),
    ("bench_us", lambda: measure.bench_us(lambda: None)),
    ("bench_us_hot", lambda: measure.bench_us_hot(lambda: None)),
])
def test_timing_refuses_without_gpu(what, call):
    with pytest.raises(RuntimeError, match=rf"{what} needs a CUDA GPU: timings of the CPU interpreter"):
        call()


def test_copy_bandwidth_smoke_runs_the_same_copy_anywhere():
    r = measure.copy_bandwidth(3 * 2**10 + 5, torch.float32, smoke=True)
    assert r["bytes"] == 3 * 2**10 + 4          # whole float32 elements only
    assert r["us"] > 0 and r["GBps"] == pytest.approx(2 * r["bytes"] / r["us"] / 1e3, rel=1e-4)
    with pytest.raises(ValueError, match="holds no"):
        measure.copy_bandwidth(2, torch.float32, smoke=True)


def test_matmul_flops_smoke_counts_2n3():
    r = measure.matmul_flops(24, torch.float32, smoke=True)
    assert (r["n"], r["dtype"]) == (24, "float32")
    assert r["TFLOPs"] == pytest.approx(2 * 24**3 / r["us"] / 1e6, rel=1e-4)
    assert measure.matmul_flops(8, "bfloat16", smoke=True)["dtype"] == "bfloat16"


def test_the_copy_is_an_elementwise_kernel_not_copy_(monkeypatch):
    # copy_ captured in a CUDA graph becomes a memcpy node, slower than a kernel: the copy is
    # torch.mul(src, 1, out=dst), one read and one write, and never Tensor.copy_.
    calls, mul = [], torch.mul

    def spy_mul(*args, **kw):
        calls.append((args[1], "out" in kw))
        return mul(*args, **kw)

    def no_copy(*args, **kw):
        raise AssertionError("copy_bandwidth must not use Tensor.copy_")

    monkeypatch.setattr(torch, "mul", spy_mul)
    monkeypatch.setattr(torch.Tensor, "copy_", no_copy)
    measure.copy_bandwidth(2**12, smoke=True)
    assert calls == [(1, True)]


@pytest.mark.skipif(not device.HAS_GPU, reason="needs a CUDA GPU")
def test_ceilings_on_gpu():
    # Tests hold correctness, not speed: the records must follow from their own times.
    copy = measure.copy_bandwidth(2**24)
    assert copy["bytes"] == 2**24 and copy["us"] > 0
    assert copy["GBps"] == pytest.approx(2 * copy["bytes"] / copy["us"] / 1e3, rel=1e-4)
    for dtype in device.kernel_dtypes():
        mm = measure.matmul_flops(256, dtype)
        assert mm["dtype"] == device.dtype_name(dtype) and math.isfinite(mm["TFLOPs"]) and mm["TFLOPs"] > 0
        assert mm["TFLOPs"] == pytest.approx(2 * 256**3 / mm["us"] / 1e6, rel=1e-4)


# ----------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------

def test_provenance_has_every_key_and_the_commit(monkeypatch):
    monkeypatch.setenv("INFER_LIB_COMMIT", "abc123")
    prov = measure.provenance()
    assert set(measure.PROVENANCE_KEYS) <= set(prov)
    assert prov["commit"] == "abc123"


def test_commit_from_git_when_not_set(monkeypatch):
    monkeypatch.delenv("INFER_LIB_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("this checkout is not a git repository")
    assert measure.commit() == head.stdout.strip()


def test_commit_is_none_outside_a_repository(tmp_path):
    # A copy of the package without .git (as the GPU machine gets it) and no INFER_LIB_COMMIT.
    import shutil

    shutil.copytree(ROOT / "infer_lib", tmp_path / "infer_lib", ignore=shutil.ignore_patterns("data", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("INFER_LIB_COMMIT", "PYTHONPATH")}
    code = "from infer_lib import measure; print(measure.__file__); print(measure.commit())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    where, commit = out.stdout.split()
    assert Path(where).is_relative_to(tmp_path) and commit == "None"


# ----------------------------------------------------------------------------
# format_bytes
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("nbytes, text", [
    (0, "0 B"), (1000, "1000 B"), (2**10, "1 KiB"), (3 * 2**19, "1.5 MiB"), (2**30, "1 GiB"), (2**32, "4 GiB"),
])
def test_format_bytes(nbytes, text):
    assert measure.format_bytes(nbytes) == text


# ----------------------------------------------------------------------------
# validate
# ----------------------------------------------------------------------------

SCHEMA = measure.Schema(
    "toy file",
    keys=("params", "params.kind"),
    numbers=("params.n", "rates.*"),
    records=(measure.Records("records", numbers=("us", "inner.value"), keys=("name",)),
             measure.Records("extra.records", numbers=("us",), optional=True)),
)


def _toy():
    return {"provenance": {k: "x" for k in measure.PROVENANCE_KEYS},
            "params": {"kind": "a", "n": 4},
            "rates": {"float16": 1.0, "float32": 2},
            "records": [{"name": "r", "us": 1.5, "inner": {"value": 3.0}}]}


def test_validate_accepts_a_good_document():
    measure.validate(_toy(), SCHEMA)
    measure.validate({**_toy(), "extra": {"records": [{"us": 1.0}]}}, SCHEMA)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("records"), "toy file: missing top-level key 'records'"),
    (lambda d: d["provenance"].pop("date"), "provenance lacks 'date'"),
    (lambda d: d["params"].pop("kind"), "params lacks 'kind'"),
    (lambda d: d["params"].update(n=True), r"params.n must be a finite number > 0, got True"),
    (lambda d: d["rates"].update(float32=float("inf")), r"rates.float32 must be a finite number > 0"),
    (lambda d: d.update(rates={}), "rates.\\* is empty"),
    (lambda d: d.update(records=[]), "records must be a non-empty list"),
    (lambda d: d["records"][0].pop("name"), r"records\[0\] lacks 'name'"),
    (lambda d: d["records"][0].update(us=0), r"records\[0\].us must be a finite number > 0, got 0"),
    (lambda d: d["records"][0]["inner"].update(value=float("nan")), r"records\[0\].inner.value must be"),
    (lambda d: d.update(extra={"records": [{"us": -1}]}), r"extra.records\[0\].us must be"),
])
def test_validate_names_what_is_wrong(breakage, message):
    doc = _toy()
    breakage(doc)
    with pytest.raises(ValueError, match=message):
        measure.validate(doc, SCHEMA)


# ----------------------------------------------------------------------------
# Every shipped measurement file validates, by topic
# ----------------------------------------------------------------------------

#: topic → the check of its files; a file of any other topic fails the test below
VALIDATORS = {
    "bench": bench_core.validate,
    "copy_bandwidth": lambda doc: measure.validate(doc, ceilings.COPY_SCHEMA),
    "matmul_flops": lambda doc: measure.validate(doc, ceilings.MATMUL_SCHEMA),
    "bottlenecks": bottlenecks.validate,
    "attention_sweep": attention_sweep.validate,
    "decode": lambda doc: measure.validate(doc, decode.SCHEMA),
    "kv_cache": lambda doc: measure.validate(doc, kv_cache.SCHEMA),
    "prefill_decode": lambda doc: measure.validate(doc, prefill_decode.SCHEMA),
    "fusion": fusion.validate,
    "gqa_quality": lambda doc: measure.validate(doc, gqa_quality.SCHEMA),
    "tensor_cores": tensor_cores.validate,
    "block_size": lambda doc: measure.validate(doc, block_size.SCHEMA),
    "gqa_speed": lambda doc: measure.validate(doc, gqa_speed.SCHEMA),
    "fast_decode": lambda doc: measure.validate(doc, fast_decode.SCHEMA),
    "serving": lambda doc: measure.validate(doc, serving.SCHEMA),
}
#: topics with a validator whose files are not shipped yet (they come with the next GPU run):
#: once <topic>_h200.json is in infer_lib/data, move the topic into VALIDATORS, which then
#: demands the file (test_pending_topics_have_no_file_yet says when)
PENDING: dict = {}
#: topics whose first measurement came after the H100 run: shipped for the later GPUs only
SINCE_H200 = {"block_size", "decode", "kv_cache", "prefill_decode", "tensor_cores", "fusion",
              "gqa_quality", "gqa_speed", "fast_decode", "serving"}
#: topics measured on several ranks at once: files <topic>_<gpu>x<N>.json (N ranks, one GPU each;
#: the provenance names the GPU and the world size)
MULTI_RANK = {"tp": lambda doc: measure.validate(doc, tp_decode.SCHEMA),
              "allreduce": lambda doc: measure.validate(doc, allreduce.SCHEMA)}
ALL_SHIPPED = sorted(measure.data_dir().glob("*.json"))
MULTI_SHIPPED = [p for p in ALL_SHIPPED if re.fullmatch(r"(tp|allreduce)_[a-z0-9_]+x\d+", p.stem)]
SHIPPED = [p for p in ALL_SHIPPED if p not in MULTI_SHIPPED]


def test_there_are_shipped_files():
    assert measure.REFERENCE_GPU in measure.SHIPPED_GPUS
    want = {f"{t}_{gpu}" for t in VALIDATORS for gpu in measure.SHIPPED_GPUS
            if not (t in SINCE_H200 and gpu == "h100_sxm")}
    assert SHIPPED and {p.stem for p in SHIPPED} >= want, sorted(want - {p.stem for p in SHIPPED})


def test_pending_topics_have_no_file_yet():
    assert not set(PENDING) & set(VALIDATORS)
    shipped = [p.name for p in SHIPPED if any(p.stem.startswith(t + "_") for t in PENDING)]
    assert not shipped, f"{shipped} shipped: move their topics from PENDING into VALIDATORS"


@pytest.mark.parametrize("path", [p for p in SHIPPED if not p.stem.endswith("_h100_sxm")], ids=lambda p: p.name)
def test_files_measured_after_the_h100_name_their_commit(path):
    # (the H100 files predate the commit field and say so in a note)
    commit = json.loads(path.read_text())["provenance"].get("commit")
    assert isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit), commit


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_file_validates(path):
    validators = {**VALIDATORS, **PENDING}
    topic = next((t for t in validators if path.stem.startswith(t + "_")), None)
    assert topic, f"{path.name}: no validator for its topic; add one to VALIDATORS"
    doc = json.loads(path.read_text())
    validators[topic](doc)
    assert doc["provenance"]["gpu_key"] == path.stem.removeprefix(topic + "_")
    assert doc["provenance"]["interpreted"] is False and not doc["provenance"].get("smoke")


@pytest.mark.parametrize("path", MULTI_SHIPPED, ids=lambda p: p.name)
def test_every_shipped_multi_rank_file_validates(path):
    topic, rest = path.stem.split("_", 1)
    gpu, n = rest.rsplit("x", 1)
    doc = json.loads(path.read_text())
    MULTI_RANK[topic](doc)
    prov = doc["provenance"]
    assert prov["gpu_key"] == gpu and prov["world_size"] == int(n) == doc["params"]["world_size"]
    assert prov["interpreted"] is False and not prov.get("smoke")
    assert re.fullmatch(r"[0-9a-f]{40}", prov["commit"]), prov["commit"]


def test_load_references_leaves_out_a_gpu_without_the_topic_and_refuses_an_unknown_topic():
    assert list(measure.load_references("decode")) == ["h200"]
    with pytest.raises(FileNotFoundError, match="no measurement file nope_"):
        measure.load_references("nope")


def test_load_references_gives_every_shipped_gpu_reference_first():
    docs = measure.load_references("bench")
    assert list(docs) == list(measure.SHIPPED_GPUS) and next(iter(docs)) == measure.REFERENCE_GPU
    assert all(doc["provenance"]["gpu_key"] == gpu for gpu, doc in docs.items())
