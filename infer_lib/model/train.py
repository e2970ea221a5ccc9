"""Train the course's own small model on the course corpus: nothing is downloaded.

The MQA/GQA chapter measures what sharing key/value heads costs in quality, which needs a
trained model; the test machines cannot download one, so the course trains its own:

* **data** — the pure-Python source of CPython's standard library, shipped as package data
  (``infer_lib/data/corpus/python_stdlib.txt.xz``, PSF licence; ``tools/collect_corpus.py``
  collected it and ``SOURCE.md`` beside it says how). ``load_corpus`` decompresses it,
  checks its SHA-256 against ``CORPUS_SHA256`` and splits it: the last
  ``HELD_OUT_FRACTION`` of the bytes are held out for evaluation.
* **tokens** — bytes: the UTF-8 bytes of the text are the tokens, ``V = 256``
  (``encode``/``decode``). No tokenizer to download, any text encodes, and the loss in
  nats per token is nats per byte.
* **model** — a ``Transformer`` of any config with ``vocab_size = 256``; the preset
  ``"course-mha"`` (multi-head, d = 256, 6 layers, 8 heads of D = 32, 5.2 M parameters) is
  the one the chapter trains, and again with ``n_kv_heads`` < 8 for GQA/MQA.
* **training** — ``train``: AdamW (weight decay on matrices only), a linear warmup then a
  cosine decay of the learning rate, gradient clipping, random windows of the training
  text (``sample_batch``, a seeded generator: the same seed gives the same batches).
  On a GPU the forward and backward run under bf16 autocast (weights and optimizer state
  stay fp32); on the CPU everything is fp32. ``train(..., model=m)`` continues training an
  existing model with the same loop instead of a fresh one: the *uptraining* of a model
  converted to GQA (``gqa.to_gqa``; ``infer_lib.experiments.gqa_quality``).
* **evaluation** — ``evaluate``: mean cross-entropy over consecutive windows of the held-out
  text, in nats per token, and the perplexity ``exp(loss)``.
* **checkpoints** — ``save``/``load``: Hugging Face Llama layout in safetensors
  (``infer_lib.model.checkpoint``), so a trained model loads like any public one. The
  command line saves bf16 weights by default (``--save-dtype``: half the bytes, about
  10 MB for ``course-mha``); ``load`` gives fp32 weights back, to evaluate or train further.

Attention backend: training needs gradients, and the Triton kernels refuse inputs that
require grad (they are inference kernels, their outputs carry no graph), so the model is
trained with the ``"sdpa"`` backend (``torch.nn.functional.scaled_dot_product_attention``,
which has a backward). A loaded model can then run any backend.

From the command line (writes ``model.safetensors``, ``config.json`` and ``train_log.json``,
the log with its provenance, the held-out loss of the model as trained (``eval``) and of the
checkpoint as saved (``eval_saved``: the weights rounded to ``--save-dtype``))::

    python -m infer_lib.model.train --out-dir runs/mha --steps 2000
    python -m infer_lib.model.train --out-dir runs/gqa2 --steps 2000 --n-kv-heads 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import lzma
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import SINGLE_FILE, config_to_hf, from_pretrained, save_pretrained
from .config import ModelConfig
from .layers import Transformer

#: the shipped corpus (package data) and the SHA-256 of its decompressed text (SOURCE.md)
CORPUS_PATH = Path(__file__).resolve().parent.parent / "data" / "corpus" / "python_stdlib.txt.xz"
CORPUS_SHA256 = "48dc28e8f73a458dc25291fdad91efa8ae8667a8319a05b1c17359e000881101"
#: the last 5 % of the corpus's bytes are held out
HELD_OUT_FRACTION = 0.05
#: byte-level tokens
VOCAB_SIZE = 256
#: the attention backend training runs (the Triton kernels refuse grad)
TRAIN_BACKEND = "sdpa"
#: log file the CLI writes beside the checkpoint
LOG_FILE = "train_log.json"


# -- tokens -----------------------------------------------------------------------------------


def encode(text: str) -> torch.Tensor:
    """Text → its UTF-8 bytes as tokens, int64 ``(S,)``."""
    return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))


def decode(tokens) -> str:
    """Tokens (a tensor or a sequence of ints in 0 … 255) → text; bytes that are not valid
    UTF-8 (a model's output may split a character) become U+FFFD."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.flatten().tolist()
    return bytes(tokens).decode("utf-8", errors="replace")


# -- the corpus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """The corpus as byte tokens (uint8, 1-D): ``train`` then ``held_out``, which follows it."""

    train: torch.Tensor
    held_out: torch.Tensor
    sha256: str


def load_corpus(path=None, held_out_fraction: float = HELD_OUT_FRACTION,
                sha256: str | None = None) -> Corpus:
    """Decompress the corpus (default ``CORPUS_PATH``), check its SHA-256 (default
    ``CORPUS_SHA256``) and split it: the last ``held_out_fraction`` of the bytes are held
    out. Raises ``ValueError`` if the file is not xz or its text is not the expected one."""
    path = Path(CORPUS_PATH if path is None else path)
    expected = CORPUS_SHA256 if sha256 is None else sha256
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be between 0 and 1, got {held_out_fraction!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no corpus at {path}: it is package data (infer_lib/data/corpus); "
                                "tools/collect_corpus.py writes it")
    try:
        data = lzma.decompress(path.read_bytes())
    except lzma.LZMAError as err:
        raise ValueError(f"corpus {path} is not a valid xz file ({err}): the file is damaged; "
                         "reinstall infer_lib or restore it from the repository") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ValueError(f"corpus {path} has SHA-256 {digest}, expected {expected}: the text is "
                         "not the one the course's numbers were measured on (damaged, or re-collected "
                         "with another Python: then update CORPUS_SHA256 from its SOURCE.md)")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    split = len(tokens) - int(len(tokens) * held_out_fraction)
    return Corpus(train=tokens[:split], held_out=tokens[split:], sha256=digest)


def sample_batch(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``seq_len + 1`` tokens of ``data``: inputs ``x`` and
    targets ``y`` (``x`` shifted by one), each int64 ``(B, S)`` on ``device``. The offsets come
    from ``generator`` (a CPU ``torch.Generator``): the same seed gives the same batches."""
    if len(data) < seq_len + 1:
        raise ValueError(f"data has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)   # (B,)
    window = data[starts[:, None] + torch.arange(seq_len + 1)].long()                   # (B, S + 1)
    window = window.to(device) if device is not None else window
    return window[:, :-1], window[:, 1:]


# -- training ---------------------------------------------------------------------------------


def init_weights(model: Transformer) -> None:
    """GPT-2's initialisation: every matrix N(0, 0.02²), the projections that write into the
    residual stream (``o_proj``, ``down_proj``) scaled by ``1/sqrt(2L)``, norms 1. (The
    ``Transformer`` constructor draws the embedding from N(0, 1), which with a tied head
    starts the logits at a scale of ``sqrt(d)`` and the loss far above ``ln V``.)"""
    std = 0.02
    residual_std = std / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        model.embed_tokens.weight.normal_(0.0, std)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, residual_std)
            elif p.dim() == 2 and not name.startswith("embed_tokens"):
                p.normal_(0.0, std)


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of step ``step`` (0-based): linear warmup over ``warmup`` steps up to
    ``lr``, then a cosine decay down to ``min_lr_ratio · lr`` at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _autocast(device: torch.device):
    """bf16 autocast on a GPU that has bf16, else nothing (fp32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device) -> str:
    """What ``train`` and ``evaluate`` compute in on ``device``."""
    device = torch.device(device)
    return "bf16 autocast, fp32 weights" if device.type == "cuda" and torch.cuda.is_bf16_supported() \
        else "fp32"


def _check_vocab(config: ModelConfig) -> None:
    if config.vocab_size != VOCAB_SIZE:
        raise ValueError(f"the corpus is byte tokens (V = {VOCAB_SIZE}), but the config has "
                         f"vocab_size={config.vocab_size}; use dataclasses.replace(config, vocab_size=256)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def default_warmup(steps: int) -> int:
    """The warmup ``train`` uses unless told: a tenth of the steps, at most 200."""
    return min(200, steps // 10)


def train(config: ModelConfig | None, steps: int, batch_size: int = 64, seq_len: int = 512,
          lr: float = 2e-3, *, model: Transformer | None = None, warmup: int | None = None,
          min_lr_ratio: float = 0.1, weight_decay: float = 0.1,
          betas: tuple[float, float] = (0.9, 0.95), grad_clip: float = 1.0,
          data: torch.Tensor | None = None, fixed_batch: bool = False, log_every: int = 10,
          device=None, seed: int = 0) -> tuple[Transformer, list[dict]]:
    """Train a fresh ``Transformer(config)`` for ``steps`` steps of ``batch_size`` windows of
    ``seq_len`` tokens. Returns the model (train mode, on ``device``) and the log: one dict
    per ``log_every`` steps (and the last) with ``step`` (steps done), ``loss`` (mean training
    loss over those steps, nats/token), ``lr`` and ``tokens_per_s`` (wall clock on ``device``
    — on the CPU a CPU timing, nothing to compare with a GPU).

    ``model``: continue training this model instead (uptraining): it is not re-initialised,
    its config is used (``config`` may be ``None``, or must equal ``model.config``), and it is
    trained in place with the same optimiser, schedule and log as a fresh one (a new AdamW
    state, a new warmup). Its weights must be fp32 (``load`` gives fp32); it is moved to
    ``device``, gets gradients and the ``TRAIN_BACKEND`` backend, and is returned in train
    mode, as a fresh one is (set ``model.backend`` to run another backend afterwards).

    ``data``: the training tokens (default ``load_corpus().train``). ``fixed_batch=True`` trains
    on one batch every step: a check that the loop can learn (the loss must fall).
    ``warmup`` defaults to a tenth of the steps, at most 200 (``default_warmup``). ``seed``
    fixes the initialisation and the batches. The attention backend is ``"sdpa"``
    (``TRAIN_BACKEND``).
    """
    if model is not None:
        if not isinstance(model, Transformer):
            raise TypeError(f"train: model must be an infer_lib.model.Transformer, got "
                            f"{type(model).__name__}")
        if config is not None and config != model.config:
            raise ValueError(f"train: config {config} differs from the given model's config "
                             f"{model.config}; pass config=None to continue training the model")
        config = model.config
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
        if dtypes != ["float32"]:
            raise ValueError(f"train: the model's weights are {', '.join(dtypes)}, but training "
                             "keeps fp32 weights (and uses bf16 autocast on a GPU): load it with "
                             "dtype=torch.float32 (the default of load) or call model.float()")
    elif config is None:
        raise ValueError("train: give a config to train a fresh model, or model= to continue one")
    _check_vocab(config)
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    if seq_len > config.max_seq_len:
        raise ValueError(f"seq_len={seq_len} is longer than the model's "
                         f"max_seq_len={config.max_seq_len}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite positive number, got {lr!r}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device is None
                          else device)
    warmup = default_warmup(steps) if warmup is None else warmup
    data = load_corpus().train if data is None else data

    if model is None:
        torch.manual_seed(seed)
        model = Transformer(config, backend=TRAIN_BACKEND)
        init_weights(model)
    model.backend = TRAIN_BACKEND
    model.to(device).train().requires_grad_(True)
    decay = [p for p in model.parameters() if p.dim() >= 2]       # matrices (the tied one once)
    no_decay = [p for p in model.parameters() if p.dim() < 2]     # norm weights
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=betas, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    batch = sample_batch(data, batch_size, seq_len, generator, device) if fixed_batch else None

    log: list[dict] = []
    loss_sum = torch.zeros((), device=device)
    _sync(device)
    t0, since = time.perf_counter(), 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, min_lr_ratio)
        x, y = batch if fixed_batch else sample_batch(data, batch_size, seq_len, generator, device)
        with _autocast(device):
            logits = model(x)                                               # (B, S, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        since += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean_loss = (loss_sum / since).item()                           # syncs
            elapsed = time.perf_counter() - t0
            log.append({"step": step + 1, "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": since * batch_size * seq_len / elapsed})
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"training loss is {mean_loss} at step {step + 1}: lower the lr")
            loss_sum.zero_()
            t0, since = time.perf_counter(), 0
    return model, log


@torch.no_grad()
def evaluate(model: Transformer, held_out: torch.Tensor | None = None, seq_len: int = 512,
             batch_size: int = 32, max_tokens: int | None = None, device=None) -> dict:
    """Mean cross-entropy of ``model`` on ``held_out`` (default ``load_corpus().held_out``),
    over consecutive non-overlapping windows of ``seq_len`` tokens (the first ``max_tokens``
    predicted tokens at most). Returns ``loss`` (nats/token), ``perplexity`` = exp(loss),
    ``bits_per_byte`` (loss / ln 2: the tokens are bytes) and ``tokens``, how many were
    predicted. Runs in the precision of ``train`` on that device."""
    held_out = load_corpus().held_out if held_out is None else held_out
    seq_len = min(seq_len, model.config.max_seq_len)
    device = model.embed_tokens.weight.device if device is None else torch.device(device)
    n_windows = (len(held_out) - 1) // seq_len
    if max_tokens is not None:
        n_windows = min(n_windows, max(1, max_tokens // seq_len))
    if n_windows < 1:
        raise ValueError(f"held-out text of {len(held_out)} tokens is shorter than one window of "
                         f"{seq_len + 1}")
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    starts = torch.arange(n_windows) * seq_len
    for i in range(0, n_windows, batch_size):
        s = starts[i:i + batch_size]
        window = held_out[s[:, None] + torch.arange(seq_len + 1)].long().to(device)   # (b, S + 1)
        x, y = window[:, :-1], window[:, 1:]
        with _autocast(device):
            logits = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
    model.train(was_training)
    loss = total.item() / count
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2),
            "tokens": count}


# -- checkpoints ------------------------------------------------------------------------------


#: the dtypes the command line saves weights in (``--save-dtype``)
SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def save(model: Transformer, path, dtype: torch.dtype | None = None) -> None:
    """Write ``model`` to the directory ``path`` as a Hugging Face Llama checkpoint
    (``config.json``, ``model.safetensors``; ``checkpoint.save_pretrained``), its weights in
    ``dtype`` (default: the model's own; ``torch.bfloat16`` halves the file of an fp32 model).
    The model is not changed."""
    save_pretrained(model, path, dtype=dtype)


def load(path, device=None, dtype: torch.dtype = torch.float32,
         backend: str = "sdpa") -> Transformer:
    """Load a model ``save`` wrote (``checkpoint.from_pretrained``: eval mode, no gradients),
    its weights in ``dtype`` whatever dtype they were saved in: fp32 by default, what
    ``evaluate`` and ``train(..., model=...)`` want."""
    return from_pretrained(path, dtype=dtype, device=device, backend=backend)


# -- command line -----------------------------------------------------------------------------


def main(argv=None) -> dict:
    from .. import measure            # provenance; imported here so the module stays light

    parser = argparse.ArgumentParser(
        prog="python -m infer_lib.model.train",
        description="Train a byte-level model on the course corpus; write the checkpoint "
                    f"(config.json, model.safetensors) and {LOG_FILE} into --out-dir.")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--preset", default="course-mha", help="a ModelConfig preset with vocab_size 256")
    parser.add_argument("--n-kv-heads", type=int, default=None,
                        help="key/value heads (default: the preset's): < n_heads for GQA, 1 for MQA")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=None, help="default: the model's max_seq_len")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if there is a GPU, else cpu")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="held-out tokens to evaluate on (default: all of them)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="bfloat16",
                        help="dtype of the saved weights (default bfloat16: half the bytes; "
                             "training keeps fp32 weights either way)")
    args = parser.parse_args(argv)

    config = ModelConfig.from_preset(args.preset)
    if args.n_kv_heads is not None:
        config = dataclasses.replace(config, n_kv_heads=args.n_kv_heads)
    _check_vocab(config)
    seq_len = config.max_seq_len if args.seq_len is None else args.seq_len
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device is None
                          else args.device)
    corpus = load_corpus()

    start = time.perf_counter()
    model, log = train(config, args.steps, args.batch_size, seq_len, args.lr, warmup=args.warmup,
                       weight_decay=args.weight_decay, grad_clip=args.grad_clip, data=corpus.train,
                       log_every=args.log_every, device=device, seed=args.seed)
    _sync(device)
    train_s = time.perf_counter() - start
    result = evaluate(model, corpus.held_out, seq_len, args.eval_batch_size, args.eval_tokens)
    save(model, args.out_dir, SAVE_DTYPES[args.save_dtype])
    # the checkpoint as a loader gets it: weights rounded to the save dtype, back in fp32
    saved = evaluate(load(args.out_dir, device=device), corpus.held_out, seq_len,
                     args.eval_batch_size, args.eval_tokens)
    doc = {
        "provenance": measure.provenance(),
        "device": str(device),
        "precision": precision(device),
        "preset": args.preset,
        "config": config_to_hf(config),
        "num_params": config.num_params(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "corpus": {"file": CORPUS_PATH.name, "sha256": corpus.sha256, "train_tokens": len(corpus.train),
                   "held_out_tokens": len(corpus.held_out), "held_out_fraction": HELD_OUT_FRACTION},
        "tokens_seen": args.steps * args.batch_size * seq_len,
        "train_s": train_s,
        "log": log,
        "eval": result,
        "save_dtype": args.save_dtype,
        "checkpoint_bytes": (args.out_dir / SINGLE_FILE).stat().st_size,
        "eval_saved": saved,
    }
    (args.out_dir / LOG_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{args.steps} steps in {train_s:.1f} s on {device} ({precision(device)}); held-out loss "
          f"{result['loss']:.4f} nats/token, perplexity {result['perplexity']:.3f}; saved in "
          f"{args.save_dtype} ({doc['checkpoint_bytes'] / 1e6:.1f} MB, held-out loss "
          f"{saved['loss']:.4f}) → {args.out_dir}")
    return doc


if __name__ == "__main__":
    main()
