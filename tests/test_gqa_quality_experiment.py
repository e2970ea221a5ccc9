"""The GQA quality experiment (infer_lib.experiments.gqa_quality): a tiny trained checkpoint
converted to every coarser K/V grouping, evaluated, uptrained and evaluated again; the file's
layout, its first record the source model's own loss, the settings taken from the source run's
log, the cache sizes; and its refusals. Tiny models and a few steps: seconds on the CPU."""

import dataclasses
import hashlib
import importlib
import json

import pytest
import torch

from infer_lib import device, measure
from infer_lib.experiments import gqa_quality as gq
from infer_lib.model import PRESETS

T = importlib.import_module("infer_lib.model.train")

DEV = device.DEVICE
STEPS = 40                      # the source run's steps: 5 % of them is 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny multi-head model trained by the training command, with its train_log.json."""
    out = tmp_path_factory.mktemp("source")
    T.main(["--out-dir", str(out), "--steps", str(STEPS), "--preset", "tiny-mha",
            "--batch-size", "3", "--seq-len", "24", "--lr", "3e-3", "--weight-decay", "0.05",
            "--grad-clip", "0.5", "--eval-tokens", "48", "--eval-batch-size", "5",
            "--log-every", str(STEPS), "--device", str(DEV)])
    return out


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_head_counts_and_names():
    assert gq.kv_head_counts(8) == [8, 4, 2, 1]
    assert gq.kv_head_counts(6) == [6, 3, 2, 1]
    assert gq.kv_head_counts(1) == [1]
    assert [gq.attention_name(8, n) for n in (8, 4, 2, 1)] == ["MHA", "GQA-4", "GQA-2", "MQA"]


def test_smoke_run_on_a_checkpoint(checkpoint):
    digest = sha256(checkpoint / "model.safetensors")
    doc = gq.run(checkpoint, smoke=True, device=DEV)
    measure.validate(doc, gq.SCHEMA)
    assert doc["provenance"]["smoke"] is True and doc["timing"] == gq.SMOKE_TIMING
    s, records = doc["settings"], doc["records"]
    assert s["uptrain_steps"] == gq.SMOKE["uptrain_steps"]
    assert s["eval_tokens"] == gq.SMOKE["eval_tokens"]
    assert doc["source"]["sha256"] == digest                       # the file it read ...
    assert sha256(checkpoint / "model.safetensors") == digest      # ... which it left alone

    # the first record is the source model itself: its loss is the plain evaluation
    source = T.load(checkpoint, device=DEV)
    plain = T.evaluate(source, seq_len=s["seq_len"], batch_size=s["eval_batch_size"],
                       max_tokens=s["eval_tokens"])
    assert records[0]["converted"] == plain
    assert records[0]["attention"] == "MHA" and records[0]["n_kv_heads"] == source.config.n_heads

    # then every coarser grouping, each with its own cache size and parameter count
    assert [r["n_kv_heads"] for r in records] == [4, 2, 1]
    assert [r["attention"] for r in records] == ["MHA", "GQA-2", "MQA"]
    mha_bytes = records[0]["kv_cache_bytes_per_token"]
    for r in records:
        config = dataclasses.replace(source.config, n_kv_heads=r["n_kv_heads"])
        assert r["kv_cache_bytes_per_token"] == config.kv_cache_bytes_per_token(torch.bfloat16)
        assert r["kv_cache_bytes_per_token"] * 4 == mha_bytes * r["n_kv_heads"]   # H_kv / 4 of it
        assert r["num_params"] == config.num_params()
        assert r["converted"]["tokens"] == r["uptrained"]["tokens"] == plain["tokens"]
        assert r["uptrained"]["loss"] != r["converted"]["loss"]              # it was trained
        assert r["uptrain_log"][-1]["step"] == s["uptrain_steps"]
    # pooling different heads changes the model: its loss right after the conversion differs
    assert records[1]["converted"]["loss"] != records[0]["converted"]["loss"]


def test_settings_come_from_the_source_runs_log(checkpoint):
    doc = gq.run(checkpoint, eval_tokens=48, device=DEV)       # not smoke: the real settings
    measure.validate(doc, gq.SCHEMA)
    s = doc["settings"]
    assert s["hyperparameters_from"] == s["lr_from"] == T.LOG_FILE
    assert (s["batch_size"], s["seq_len"], s["lr"], s["weight_decay"], s["grad_clip"],
            s["eval_batch_size"]) == (3, 24, 3e-3, 0.05, 0.5, 5)
    assert s["uptrain_steps"] == 2 and s["uptrain_fraction"] == 0.05            # 5 % of 40 steps
    assert s["warmup"] == T.default_warmup(s["uptrain_steps"])
    assert s["uptrain_tokens"] == s["uptrain_steps"] * 3 * 24
    assert doc["timing"] == gq.TIMING and doc["provenance"]["smoke"] is False
    log = json.loads((checkpoint / T.LOG_FILE).read_text())
    assert doc["source"]["steps"] == STEPS and doc["source"]["train_log"]["eval"] == log["eval"]
    # the checkpoint as saved (bf16 weights) is what was evaluated: the log's eval_saved
    assert doc["records"][0]["converted"] == log["eval_saved"]
    for r in doc["records"]:
        assert r["uptrain_tokens_per_s"] == pytest.approx(s["uptrain_tokens"] / r["uptrain_s"],
                                                          rel=1e-3)


def test_without_a_log_the_defaults_apply():
    hp = gq.hyperparameters(None, PRESETS["tiny-mha"])
    assert hp["from"] == "defaults of infer_lib.model.train.train"
    assert hp["seq_len"] == PRESETS["tiny-mha"].max_seq_len          # the command's default
    assert (hp["batch_size"], hp["lr"], hp["weight_decay"], hp["grad_clip"]) \
        == (64, 2e-3, 0.1, 1.0)                                   # train.train's defaults
    hp = gq.hyperparameters({"args": {"batch_size": 7, "seq_len": None}}, PRESETS["tiny-mha"])
    assert hp["batch_size"] == 7 and hp["seq_len"] == 256 and hp["from"] == T.LOG_FILE


def test_command_line_smoke_run_writes_its_file(tmp_path, capsys):
    doc = gq.main(["--smoke", "--out-dir", str(tmp_path), "--device", str(DEV), "--lr", "1e-4"])
    path = tmp_path / f"gqa_quality_{measure.gpu_key()}.json"
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    measure.validate(doc, gq.SCHEMA)
    assert doc["settings"]["lr"] == 1e-4 and doc["settings"]["lr_from"] == "given"
    assert doc["records"][0]["uptrain_log"][0]["lr"] == 1e-4            # the peak: no warmup
    assert doc["source"]["checkpoint"] == "random tiny-mha weights (smoke run)"
    assert doc["source"]["train_log"] is None and doc["settings"]["uptrain_fraction"] is None
    out = capsys.readouterr().out
    assert "converted: loss" in out and "MQA" in out and str(path) in out


def test_the_default_source_is_the_shipped_course_model(tmp_path, monkeypatch):
    seen = {}

    def fake_run(checkpoint, **kw):
        seen["checkpoint"] = checkpoint
        raise FileNotFoundError("stop here")          # main turns it into exit code 2

    monkeypatch.setattr(gq, "run", fake_run)
    with pytest.raises(SystemExit):
        gq.main(["--out-dir", str(tmp_path)])
    assert seen["checkpoint"] == measure.data_dir() / "course_model"
    assert (seen["checkpoint"] / "model.safetensors").is_file()


def test_bad_input_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gq.main(["--checkpoint", str(tmp_path / "absent"), "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "no config.json in" in capsys.readouterr().err
    with pytest.raises(ValueError, match="give the checkpoint directory"):
        gq.run()
    with pytest.raises(ValueError, match="uptrain_steps must be an integer ≥ 1, got 0"):
        gq.run(tmp_path, uptrain_steps=0)
    with pytest.raises(ValueError, match="eval_tokens must be an integer ≥ 1, got -5"):
        gq.run(tmp_path, eval_tokens=-5)
    with pytest.raises(ValueError, match="lr must be a finite positive number, got nan"):
        gq.run(tmp_path, lr=float("nan"))
    assert not list(tmp_path.glob("gqa_quality_*.json"))


def test_a_log_of_another_corpus_is_refused(checkpoint, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((checkpoint / name).read_bytes())
    log = json.loads((checkpoint / T.LOG_FILE).read_text())
    log["corpus"]["sha256"] = "0" * 64
    (tmp_path / T.LOG_FILE).write_text(json.dumps(log))
    with pytest.raises(ValueError, match="trained on a corpus with SHA-256 0+, not the shipped"):
        gq.run(tmp_path, smoke=True, device=DEV)
