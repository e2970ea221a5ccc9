"""What sharing key/value heads costs in quality, and what uptraining wins back (chapter 7).

Grouped-query attention shrinks the KV cache by ``H / H_kv`` (``gqa`` module docstring); this
measures the price. The source is the course's trained multi-head model (a checkpoint
directory as ``python -m infer_lib.model.train`` writes it: ``config.json``,
``model.safetensors``, ``train_log.json``). For the source's ``H_kv`` and every smaller K/V
head count ``n`` that divides it, largest first (the 8-head ``course-mha``: 8 = MHA, the source
itself, then 4, 2 = GQA-4, GQA-2, and 1 = MQA), one record:

1. **converted** — ``to_gqa(model, n)``: each group's key and value projections the mean of
   the heads it replaces (Ainslie et al. 2023, https://arxiv.org/abs/2305.13245), and the
   held-out loss right after (``train.evaluate``). For ``n = H_kv`` ``to_gqa`` returns an
   equal copy: the first record's ``converted`` is the source model's own loss.
2. **uptrained** — the converted model trained further (``train.train(..., model=...)``) for
   ``uptrain_steps`` steps, by default 5 % of the source run's steps (the paper's
   uptraining fraction; 100 when the checkpoint has no ``train_log.json``), with the source
   run's batch size, sequence length, peak learning rate (``--lr`` sets another), weight
   decay and gradient clipping (its log's ``args``; ``train``'s defaults without one), a
   fresh AdamW state and a short warmup (``train.default_warmup``) before the cosine decay,
   then evaluated again. Every record, the source's
   included, is uptrained the same way on the same batches (one seed): the source's record is
   the control that tells what the extra steps give any model from what they win back after
   a conversion.

Each record also holds the model's KV-cache bytes per token in bf16
(``ModelConfig.kv_cache_bytes_per_token``), its parameter count, and the wall time and
tokens/s of its uptraining. Losses are nats per byte (the tokens are bytes), with the
perplexity ``exp(loss)`` and ``bits_per_byte`` = loss / ln 2, over the same held-out windows
for every record. They depend a little on the machine's precision (``train.precision``:
bf16 autocast on a GPU, fp32 on a CPU, which the file records); times on a CPU are CPU
times, nothing to compare with a GPU's.

    python -m infer_lib.experiments.gqa_quality --checkpoint DIR --out-dir DIR \\
        [--uptrain-steps N] [--eval-tokens N] [--lr LR] [--smoke]

writes ``DIR/gqa_quality_<gpu>.json`` (``measure.gpu_key``; ``cpu`` without a GPU).
``--smoke`` (``run(smoke=True)``) runs the plumbing in seconds on any machine: a tiny random
model (or the given checkpoint), two uptraining steps of tiny batches, a few held-out
windows: a test of the code, never a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from .. import measure
from ..model import TINY_MHA, ModelConfig, Transformer, config_to_hf, to_gqa
from ..model.checkpoint import CONFIG_FILE, SINGLE_FILE
from ..model.train import (LOG_FILE, default_warmup, evaluate, init_weights, load, load_corpus,
                           precision, save, train)

#: uptraining steps as a fraction of the source run's (Ainslie et al. 2023 uptrain for 5 %)
UPTRAIN_FRACTION = 0.05
#: uptraining steps when the checkpoint has no train_log.json to take the fraction of
DEFAULT_UPTRAIN_STEPS = 100
#: the dtype the KV-cache sizes are counted in: the inference dtype
KV_CACHE_DTYPE = torch.bfloat16
#: untimed training steps before the first record, so that it does not carry the one-time
#: costs (the first backward's kernels, allocator growth) the later ones do not
WARMUP_STEPS = 2
#: the seed of the uptraining batches, not the pre-training's 0: windows in another order
SEED = 1
#: a smoke run's sizes: a tiny model, tiny batches, a few held-out windows
SMOKE = {"uptrain_steps": 2, "batch_size": 2, "seq_len": 32, "eval_tokens": 128,
         "eval_batch_size": 4}

TIMING = ("uptrain_s: wall clock of train.train on the device (synchronised), after an "
          f"untimed {WARMUP_STEPS}-step warm-up; uptrain_tokens_per_s = steps · batch · seq_len "
          "/ uptrain_s")
SMOKE_TIMING = "wall clock of a few tiny steps (smoke run): plumbing only, not a measurement"

_RESULT = ("loss", "perplexity", "bits_per_byte", "tokens")
SCHEMA = measure.Schema(
    "GQA quality file",
    keys=("timing", "device", "precision", "source", "settings", "records"),
    numbers=("source.n_heads", "source.n_kv_heads", "settings.uptrain_steps",
             "settings.batch_size", "settings.seq_len", "settings.lr"),
    records=(measure.Records(
        "records", keys=("attention",),
        numbers=("n_kv_heads", "kv_cache_bytes_per_token", "num_params", "uptrain_s",
                 "uptrain_tokens_per_s",
                 *(f"{stage}.{k}" for stage in ("converted", "uptrained") for k in _RESULT))),),
)


def kv_head_counts(n_kv_heads: int) -> list[int]:
    """The K/V head counts a model of ``n_kv_heads`` converts to: every divisor, largest first
    (the model's own count, then the groupings ``to_gqa`` can make): 8 → [8, 4, 2, 1]."""
    return [n for n in range(n_kv_heads, 0, -1) if n_kv_heads % n == 0]


def attention_name(n_heads: int, n_kv_heads: int) -> str:
    """``"MHA"`` (one K/V head per query head), ``"MQA"`` (one K/V head) or ``"GQA-n"``."""
    if n_kv_heads == n_heads:
        return "MHA"
    return "MQA" if n_kv_heads == 1 else f"GQA-{n_kv_heads}"


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_train_log(checkpoint) -> dict | None:
    """The ``train_log.json`` beside a checkpoint (``train.LOG_FILE``), or None without one."""
    path = Path(checkpoint) / LOG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): remove it to use train's defaults, "
                         "or restore the file the training run wrote") from err


def hyperparameters(train_log: dict | None, config: ModelConfig) -> dict:
    """The source run's ``batch_size``, ``seq_len``, ``lr``, ``weight_decay``, ``grad_clip`` and
    ``eval_batch_size``, from its log's ``args``; where the log (or that value) is missing,
    ``train.train``'s and ``train.evaluate``'s defaults, and the model's ``max_seq_len`` for the
    sequence length (what the training command defaults to). ``from`` says which."""
    args = (train_log or {}).get("args") or {}
    train_defaults = inspect.signature(train).parameters
    hp = {k: args[k] if args.get(k) is not None else train_defaults[k].default
          for k in ("batch_size", "lr", "weight_decay", "grad_clip")}
    hp["seq_len"] = args.get("seq_len") or config.max_seq_len
    hp["eval_batch_size"] = (args.get("eval_batch_size")
                             or inspect.signature(evaluate).parameters["batch_size"].default)
    hp["from"] = LOG_FILE if args else "defaults of infer_lib.model.train.train"
    return hp


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def quality_record(source: Transformer, n_kv_heads: int, corpus, *, hp: dict, steps: int,
                   warmup: int, eval_tokens: int | None, dev: torch.device, seed: int) -> dict:
    """One record: ``source`` converted to ``n_kv_heads`` K/V heads, evaluated, uptrained for
    ``steps`` steps with ``hp`` (``hyperparameters``) and evaluated again. ``source`` is not
    changed (``to_gqa`` copies it)."""
    def held_out_loss(model):
        return evaluate(model, corpus.held_out, hp["seq_len"], hp["eval_batch_size"], eval_tokens)

    model = to_gqa(source, n_kv_heads)
    config = model.config
    converted = held_out_loss(model)
    _sync(dev)
    start = time.perf_counter()
    model, log = train(None, steps, hp["batch_size"], hp["seq_len"], hp["lr"], model=model,
                       warmup=warmup, weight_decay=hp["weight_decay"], grad_clip=hp["grad_clip"],
                       data=corpus.train, log_every=max(1, steps // 10), device=dev, seed=seed)
    _sync(dev)
    uptrain_s = time.perf_counter() - start
    uptrained = held_out_loss(model)
    tokens = steps * hp["batch_size"] * hp["seq_len"]
    return {"attention": attention_name(config.n_heads, n_kv_heads), "n_kv_heads": n_kv_heads,
            "kv_cache_bytes_per_token": config.kv_cache_bytes_per_token(KV_CACHE_DTYPE),
            "num_params": config.num_params(),
            "converted": converted, "uptrained": uptrained,
            "uptrain_s": measure.sig(uptrain_s),
            "uptrain_tokens_per_s": measure.sig(tokens / uptrain_s),
            "uptrain_log": log}


def _positive(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")


def run(checkpoint=None, *, uptrain_steps: int | None = None, eval_tokens: int | None = None,
        lr: float | None = None, smoke: bool = False, device=None, seed: int = SEED) -> dict:
    """The payload of ``gqa_quality_<gpu>.json`` for the checkpoint directory ``checkpoint``
    (module docstring). ``uptrain_steps``: default 5 % of the source run's steps (100 without
    its ``train_log.json``); ``eval_tokens``: held-out tokens per evaluation (default all);
    ``lr``: the uptraining's peak learning rate (default the source run's); ``device``: default
    the GPU if there is one. ``smoke``: tiny sizes (``SMOKE``) and, without a checkpoint, a
    tiny random multi-head model (``TINY_MHA``) saved to a temporary one."""
    _positive("uptrain_steps", uptrain_steps)
    _positive("eval_tokens", eval_tokens)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    if checkpoint is None and not smoke:
        raise ValueError("gqa_quality.run: give the checkpoint directory of the trained model "
                         "(python -m infer_lib.model.train --out-dir DIR writes one)")
    with tempfile.TemporaryDirectory(prefix="gqa_quality_smoke_") as tmp:
        label = str(checkpoint)
        if checkpoint is None:
            torch.manual_seed(0)
            model = Transformer(TINY_MHA)
            init_weights(model)
            checkpoint, label = Path(tmp), "random tiny-mha weights (smoke run)"
            save(model, checkpoint)
        return _run(Path(checkpoint), label, uptrain_steps, eval_tokens, lr, smoke, device, seed)


def _run(checkpoint: Path, label: str, uptrain_steps, eval_tokens, lr, smoke: bool, device,
         seed: int) -> dict:
    for name in (CONFIG_FILE, SINGLE_FILE):
        if not (checkpoint / name).is_file():
            raise FileNotFoundError(f"no {name} in {checkpoint}: the checkpoint must be a "
                                    f"directory holding {CONFIG_FILE} and {SINGLE_FILE}, as "
                                    "python -m infer_lib.model.train --out-dir DIR writes it")
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device is None
                       else device)
    train_log = read_train_log(checkpoint)
    corpus = load_corpus()
    trained_on = ((train_log or {}).get("corpus") or {}).get("sha256")
    if trained_on is not None and trained_on != corpus.sha256:
        raise ValueError(f"{checkpoint / LOG_FILE}: the model was trained on a corpus with SHA-256 "
                         f"{trained_on}, not the shipped one ({corpus.sha256}): its held-out text "
                         "is not the one evaluated here")
    source = load(checkpoint, device=dev)                      # fp32, whatever was saved
    config = source.config
    hp = hyperparameters(train_log, config)
    lr_from = hp["from"] if lr is None else "given"
    hp["lr"] = hp["lr"] if lr is None else lr
    source_steps = ((train_log or {}).get("args") or {}).get("steps")
    if smoke:
        hp.update({k: SMOKE[k] for k in ("batch_size", "eval_batch_size")},
                  seq_len=min(SMOKE["seq_len"], config.max_seq_len))
        steps = SMOKE["uptrain_steps"] if uptrain_steps is None else uptrain_steps
        eval_tokens = SMOKE["eval_tokens"] if eval_tokens is None else eval_tokens
    elif uptrain_steps is not None:
        steps = uptrain_steps
    else:
        steps = (max(1, round(UPTRAIN_FRACTION * source_steps)) if source_steps
                 else DEFAULT_UPTRAIN_STEPS)
    warmup = default_warmup(steps)

    # untimed: the first record should not pay the one-time costs the others do not
    train(None, WARMUP_STEPS, hp["batch_size"], hp["seq_len"], hp["lr"],
          model=to_gqa(source, config.n_kv_heads), data=corpus.train, log_every=WARMUP_STEPS,
          device=dev, seed=seed)
    records = [quality_record(source, n, corpus, hp=hp, steps=steps, warmup=warmup,
                              eval_tokens=eval_tokens, dev=dev, seed=seed)
               for n in kv_head_counts(config.n_kv_heads)]
    summary = {k: train_log[k] for k in ("preset", "tokens_seen", "train_s", "eval", "save_dtype",
                                         "eval_saved", "provenance") if k in (train_log or {})}
    return {
        "provenance": {**measure.provenance(), "smoke": smoke},
        "timing": SMOKE_TIMING if smoke else TIMING,
        "device": str(dev),
        "precision": precision(dev),
        "source": {"checkpoint": label, "sha256": file_sha256(checkpoint / SINGLE_FILE),
                   "config": config_to_hf(config), "n_heads": config.n_heads,
                   "n_kv_heads": config.n_kv_heads, "num_params": config.num_params(),
                   "steps": source_steps, "train_log": summary or None},
        "settings": {"uptrain_steps": steps,
                     "uptrain_fraction": (UPTRAIN_FRACTION if uptrain_steps is None and not smoke
                                          and source_steps else None),
                     "warmup": warmup,
                     **{k: hp[k] for k in ("batch_size", "seq_len", "lr", "weight_decay",
                                           "grad_clip", "eval_batch_size")},
                     "hyperparameters_from": hp["from"], "lr_from": lr_from,
                     "uptrain_tokens": steps * hp["batch_size"] * hp["seq_len"],
                     "seed": seed, "eval_tokens": eval_tokens,
                     "kv_cache_dtype": str(KV_CACHE_DTYPE).removeprefix("torch.")},
        "corpus": {"sha256": corpus.sha256, "train_tokens": len(corpus.train),
                   "held_out_tokens": len(corpus.held_out)},
        "records": records,
    }


def report(doc: dict) -> None:
    """Print the table of a ``gqa_quality`` document."""
    s, src = doc["settings"], doc["source"]
    print(f"{src['checkpoint']}: H={src['n_heads']}, {src['num_params'] / 1e6:.2f} M parameters; "
          f"{s['uptrain_steps']} uptraining steps of {s['batch_size']}×{s['seq_len']} tokens "
          f"(lr {s['lr']:g}), evaluated on {doc['records'][0]['converted']['tokens']} held-out "
          f"tokens, {doc['device']} ({doc['precision']})")
    print(f"{'':>6} {'H_kv':>4} {'KV B/token':>10} | {'converted: loss':>15} {'ppl':>6} "
          f"{'bpb':>6} | {'uptrained: loss':>15} {'ppl':>6} {'bpb':>6} | {'uptrain s':>9} "
          f"{'tokens/s':>9}")
    for r in doc["records"]:
        c, u = r["converted"], r["uptrained"]
        print(f"{r['attention']:>6} {r['n_kv_heads']:>4} {r['kv_cache_bytes_per_token']:>10} | "
              f"{c['loss']:>15.4f} {c['perplexity']:>6.3f} {c['bits_per_byte']:>6.3f} | "
              f"{u['loss']:>15.4f} {u['perplexity']:>6.3f} {u['bits_per_byte']:>6.3f} | "
              f"{r['uptrain_s']:>9.2f} {r['uptrain_tokens_per_s']:>9.0f}")


def main(argv=None) -> dict:
    """``python -m infer_lib.experiments.gqa_quality --checkpoint DIR --out-dir DIR
    [--uptrain-steps N] [--eval-tokens N] [--lr LR] [--smoke]``."""
    parser = argparse.ArgumentParser(
        prog="python -m infer_lib.experiments.gqa_quality",
        description="Convert a trained multi-head checkpoint to GQA and MQA (mean-pooled K/V "
                    "heads), evaluate the held-out loss, uptrain, evaluate again; write "
                    "gqa_quality_<gpu>.json.")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="directory of the trained model (python -m infer_lib.model.train "
                             "writes it); default: the course model shipped in infer_lib/data/"
                             "course_model (with --smoke: a random tiny model)")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="folder for gqa_quality_<gpu>.json")
    parser.add_argument("--uptrain-steps", type=int, default=None,
                        help=f"default: {UPTRAIN_FRACTION:.0%} of the source run's steps "
                             f"({DEFAULT_UPTRAIN_STEPS} without its {LOG_FILE})")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="held-out tokens per evaluation (default: all of them)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of the uptraining (default: the source run's)")
    parser.add_argument("--device", default=None, help="default: cuda if there is a GPU, else cpu")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the uptraining batches")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (and a random tiny model without --checkpoint): "
                             "a test of the plumbing, not a measurement")
    args = parser.parse_args(argv)
    if args.checkpoint is None and not args.smoke:
        args.checkpoint = measure.data_dir() / "course_model"
    try:
        doc = run(args.checkpoint, uptrain_steps=args.uptrain_steps, eval_tokens=args.eval_tokens,
                  lr=args.lr, smoke=args.smoke, device=args.device, seed=args.seed)
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"python -m infer_lib.experiments.gqa_quality: {err}\n")
    measure.validate(doc, SCHEMA)
    path = measure.save(doc, args.out_dir / f"gqa_quality_{measure.gpu_key()}.json")
    report(doc)
    print(f"-> {path}")
    return doc


if __name__ == "__main__":
    main()
