"""Training the course model: byte tokens, the shipped corpus (checksum, split), the batch
sampler, the learning-rate schedule, a loop that learns, checkpoints that round-trip and the
command line. Tiny configs and a few steps: seconds on the CPU."""

import dataclasses
import importlib
import json
import lzma

import pytest
import torch

from infer_lib import device
from infer_lib.model import PRESETS, ModelConfig

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


def test_command_line_writes_checkpoint_and_log(tmp_path):
    out = tmp_path / "run"
    doc = T.main(["--out-dir", str(out), "--steps", "2", "--preset", "tiny-mha", "--n-kv-heads", "2",
                  "--batch-size", "2", "--seq-len", "16", "--log-every", "1", "--eval-tokens", "32",
                  "--device", str(DEV)])
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", T.LOG_FILE}
    log = json.loads((out / T.LOG_FILE).read_text())
    assert log == json.loads(json.dumps(doc))
    assert log["corpus"]["sha256"] == T.CORPUS_SHA256
    assert {"gpu", "torch", "date", "commit"} <= log["provenance"].keys()
    assert [e["step"] for e in log["log"]] == [1, 2] and log["eval"]["tokens"] == 32
    assert log["config"]["num_key_value_heads"] == 2
    assert T.load(out).config == dataclasses.replace(PRESETS["tiny-mha"], n_kv_heads=2)
