"""Training the course model: byte tokens, the shipped corpus (checksum, split), the batch
sampler, the learning-rate schedule, a loop that learns, continuing to train a given model
(uptraining), checkpoints that round-trip (bf16 ones too) and the command line. Tiny configs
and a few steps: seconds on the CPU."""

import dataclasses
import importlib
import json
import lzma

import pytest
import torch
from safetensors.torch import load_file

from conftest import random_model
from infer_lib import device
from infer_lib.model import PRESETS, ModelConfig, Transformer, to_gqa

# the module, even where the package exports a function named `train`
T = importlib.import_module("infer_lib.model.train")

DEV = device.DEVICE


@pytest.fixture(scope="module")
def corpus():
    return T.load_corpus()


# -- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["def f(x):\n    return x + 1\n", "héllo wörld — ∑ 🐍", ""])
def test_byte_tokens_round_trip(text):
    tokens = T.encode(text)
    assert tokens.dtype == torch.int64 and tokens.dim() == 1
    assert tokens.tolist() == list(text.encode("utf-8"))          # one token per UTF-8 byte
    assert all(0 <= t < T.VOCAB_SIZE for t in tokens.tolist())
    assert T.decode(tokens) == text
    assert T.decode(tokens.tolist()) == text


def test_decode_replaces_a_split_character():
    tokens = T.encode("é")[:1]                     # half of a two-byte character
    assert T.decode(tokens) == "\ufffd"


# -- corpus -----------------------------------------------------------------------------------


def test_corpus_checksum_and_deterministic_split(corpus):
    raw = lzma.decompress(T.CORPUS_PATH.read_bytes())
    assert corpus.sha256 == T.CORPUS_SHA256
    whole = torch.cat([corpus.train, corpus.held_out])
    assert whole.dtype == torch.uint8 and bytes(whole.numpy()) == raw   # held out = the end
    assert len(corpus.held_out) == int(len(raw) * T.HELD_OUT_FRACTION)
    again = T.load_corpus()
    assert torch.equal(again.train, corpus.train) and torch.equal(again.held_out, corpus.held_out)
    assert T.decode(corpus.train[:40]).startswith("# ---- file: ")


def test_corpus_ships_its_licence_and_source():
    folder = T.CORPUS_PATH.parent
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in (folder / "LICENSE").read_text()
    assert T.CORPUS_SHA256 in (folder / "SOURCE.md").read_text()


def test_tampered_corpus_is_refused(tmp_path, monkeypatch):
    raw = lzma.decompress(T.CORPUS_PATH.read_bytes())
    tampered = tmp_path / "tampered.txt.xz"
    tampered.write_bytes(lzma.compress(raw[:-1] + b"#", preset=0))      # one byte changed
    monkeypatch.setattr(T, "CORPUS_PATH", tampered)
    with pytest.raises(ValueError, match="SHA-256 .* expected " + T.CORPUS_SHA256):
        T.load_corpus()
    tampered.write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="not a valid xz file"):
        T.load_corpus()
    monkeypatch.setattr(T, "CORPUS_PATH", tmp_path / "absent.txt.xz")
    with pytest.raises(FileNotFoundError, match="no corpus"):
        T.load_corpus()


def test_batches_are_seeded_and_shifted(corpus):
    a = T.sample_batch(corpus.train, 3, 17, torch.Generator().manual_seed(5))
    b = T.sample_batch(corpus.train, 3, 17, torch.Generator().manual_seed(5))
    c = T.sample_batch(corpus.train, 3, 17, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    x, y = a
    assert x.shape == y.shape == (3, 17) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])                            # targets: the next byte


# -- schedule, preset -------------------------------------------------------------------------


def test_lr_warms_up_then_decays_to_its_floor():
    lrs = [T.lr_at(s, 100, 1e-3, warmup=10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))             # rising
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))              # falling
    assert lrs[-1] == pytest.approx(1e-4)


def test_course_preset_is_a_byte_level_mha_model_of_a_few_million_parameters():
    c = ModelConfig.from_preset("course-mha")
    assert c.vocab_size == T.VOCAB_SIZE and c.n_kv_heads == c.n_heads and c.tie_embeddings
    assert 1e6 < c.num_params() < 2e7
    dataclasses.replace(c, n_kv_heads=1)                                # the MQA variant is valid


def test_other_vocabularies_are_refused(corpus):
    with pytest.raises(ValueError, match="vocab_size=97"):
        T.train(PRESETS["tiny-mqa"], 1, 1, 8, data=corpus.train)


# -- training, evaluation, checkpoints --------------------------------------------------------


def test_training_overfits_one_batch(corpus):
    model, log = T.train(PRESETS["tiny"], 30, batch_size=4, seq_len=32, lr=3e-3, data=corpus.train,
                         fixed_batch=True, log_every=5, device=DEV, seed=0)
    losses = [entry["loss"] for entry in log]
    assert [entry["step"] for entry in log] == [5, 10, 15, 20, 25, 30]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] < 6.0                                   # starts near ln 256 = 5.55
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(entry["tokens_per_s"] > 0 for entry in log)


def test_evaluate_and_save_load_give_identical_logits(corpus, tmp_path):
    model, _ = T.train(PRESETS["tiny-mha"], 3, batch_size=2, seq_len=16, data=corpus.train, device=DEV)
    result = T.evaluate(model, corpus.held_out, seq_len=16, batch_size=4, max_tokens=64)
    assert result["tokens"] == 64 and 0 < result["loss"] < 10
    assert result["perplexity"] == pytest.approx(torch.tensor(result["loss"]).exp().item())
    T.save(model, tmp_path)
    loaded = T.load(tmp_path, device=DEV)
    x, _ = T.sample_batch(corpus.held_out, 2, 16, torch.Generator().manual_seed(0), DEV)
    with torch.no_grad():
        expected = model.eval()(x)
    torch.testing.assert_close(loaded(x), expected, atol=0, rtol=0)
    assert T.evaluate(loaded, corpus.held_out, seq_len=16, batch_size=4, max_tokens=64) == result


# -- continuing a given model (uptraining) -----------------------------------------------------


def test_training_continues_a_given_model(corpus):
    model = random_model("tiny-mha").to(DEV)            # eval mode, no gradients, as loaded
    config, before = model.config, {k: v.clone() for k, v in model.state_dict().items()}
    trained, log = T.train(None, 3, batch_size=2, seq_len=16, model=model, data=corpus.train,
                           log_every=1, device=DEV)
    assert trained is model and model.config is config            # in place, config kept
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert [e["step"] for e in log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    after = model.state_dict()
    for k in ("layers.0.self_attn.k_proj.weight", "layers.1.mlp.down_proj.weight", "norm.weight"):
        assert not torch.equal(after[k], before[k]), k                        # trained
    # not re-initialised: a step too small to move a weight leaves every one where it was
    model = random_model("tiny-mha").to(DEV)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    T.train(model.config, 1, 2, 16, lr=1e-12, model=model, data=corpus.train, device=DEV)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0, msg=lambda m: f"{k}: {m}")


def test_a_converted_model_uptrains(corpus):
    model = to_gqa(random_model("tiny-mha").to(DEV), 1)
    model.backend = "reference"                  # training runs TRAIN_BACKEND, and leaves it set
    _, log = T.train(None, 2, 2, 16, model=model, data=corpus.train, log_every=1, device=DEV)
    assert model.config.n_kv_heads == 1 and model.layers[0].self_attn.k_proj.weight.shape[0] == 16
    assert model.backend == T.TRAIN_BACKEND and torch.isfinite(torch.tensor(log[-1]["loss"]))


def test_continuing_refuses_what_it_cannot_train(corpus):
    model = random_model("tiny-mha")
    with pytest.raises(ValueError, match="differs from the given model's config"):
        T.train(PRESETS["tiny"], 1, 1, 8, model=model, data=corpus.train)
    with pytest.raises(ValueError, match="give a config to train a fresh model, or model="):
        T.train(None, 1, 1, 8, data=corpus.train)
    with pytest.raises(ValueError, match="model's weights are bfloat16, but training keeps fp32"):
        T.train(None, 1, 1, 8, model=random_model("tiny-mha").to(torch.bfloat16), data=corpus.train)
    with pytest.raises(TypeError, match="model must be an infer_lib.model.Transformer, got dict"):
        T.train(None, 1, 1, 8, model={}, data=corpus.train)


# -- bf16 checkpoints -------------------------------------------------------------------------


def test_bf16_checkpoint_round_trips_to_fp32(tmp_path):
    model = random_model("tiny")                       # fp32, tied head
    T.save(model, tmp_path / "fp32")
    T.save(model, tmp_path / "bf16", torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())          # not changed
    stored = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    sizes = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp32", "bf16")}
    assert sizes["bf16"] < 0.52 * sizes["fp32"]
    loaded = T.load(tmp_path / "bf16")
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.embed_tokens.weight
    for k, v in loaded.state_dict().items():          # fp32 again, the weights rounded once
        assert v.dtype == torch.float32
        assert torch.equal(v, model.state_dict()[k].to(torch.bfloat16).float()), k
    assert T.load(tmp_path / "bf16", dtype=torch.bfloat16).norm.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
        T.save(model, tmp_path / "int", torch.int8)


def test_course_model_checkpoint_is_about_10_mb_in_bf16(tmp_path):
    config = ModelConfig.from_preset("course-mha")
    T.save(Transformer(config), tmp_path, torch.bfloat16)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert 2 * config.num_params() <= size < 2 * config.num_params() + 100_000, size


# -- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("save_dtype", [None, "float32"])
def test_command_line_writes_checkpoint_and_log(tmp_path, save_dtype):
    out = tmp_path / "run"
    doc = T.main(["--out-dir", str(out), "--steps", "2", "--preset", "tiny-mha", "--n-kv-heads", "2",
                  "--batch-size", "2", "--seq-len", "16", "--log-every", "1", "--eval-tokens", "32",
                  "--device", str(DEV), *(["--save-dtype", save_dtype] if save_dtype else [])])
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", T.LOG_FILE}
    log = json.loads((out / T.LOG_FILE).read_text())
    assert log == json.loads(json.dumps(doc))
    assert log["corpus"]["sha256"] == T.CORPUS_SHA256
    assert {"gpu", "torch", "date", "commit"} <= log["provenance"].keys()
    assert [e["step"] for e in log["log"]] == [1, 2] and log["eval"]["tokens"] == 32
    assert log["config"]["num_key_value_heads"] == 2
    assert T.load(out).config == dataclasses.replace(PRESETS["tiny-mha"], n_kv_heads=2)
    expected = save_dtype or "bfloat16"                              # the default
    assert log["save_dtype"] == log["args"]["save_dtype"] == expected
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} \
        == {T.SAVE_DTYPES[expected]}
    assert log["checkpoint_bytes"] == (out / "model.safetensors").stat().st_size
    assert log["eval_saved"] == T.evaluate(T.load(out, device=DEV), seq_len=16, max_tokens=32)
    if expected == "float32":                       # the weights as trained: the same loss
        assert log["eval_saved"] == log["eval"]
