"""The catalogue of every exercise of the course, read from the chapter notebooks themselves.

The instructors' page ``instructor/exercises.ipynb`` shows it as a table, generated when the book
is built, so it lists whatever exercises the chapters hold at that moment and cannot go stale.
An exercise, in the convention of ``infer_lib.exercises`` (and ``CONTRIBUTING.md``, "Exercises"),
is a markdown statement ``**Exercise N.M** — ...`` followed by the reader's code cell, tagged
``exercise`` (and ``coding`` when the reader writes a function), which ends with the chapter's
check ``chNN.<check>(...)``. From these the catalogue takes, for each exercise:

* its chapter (file name and title), number and statement — and, as a one-line summary, the
  statement's first question (when it asks none, its first sentence that starts with "Write", the
  task of a coding exercise, else its first sentence);
* the check it calls (``"ch03.tile_traffic"``);
* its **kind**: ``code`` when its cell is tagged ``coding``; otherwise, for each answer the check
  takes, ``choice`` when the answer is one of a fixed set of options (``"memory"`` or
  ``"compute"``, a key of ``hardware.SPECS``) and ``number`` when it is a number (or a list of
  whole numbers). ``answer_kinds`` finds out by asking the check itself: it hands it a string
  that no option can be, one answer at a time (the others ``...``, which a check only reports as
  not attempted), and looks at how the check refuses it — by reaching ``check_choice``'s test of
  the options, or by a ``TypeError`` for an answer that is not a number, which is how every
  check of the course refuses one (``infer_lib.exercises``' module docstring);
* the concept it checks, from ``CONCEPTS`` below, the one thing written by hand: a new check
  without an entry there fails ``tests/test_exercise_catalog.py``.

``exercises(chapters_dir)`` returns the catalogue; ``table_markdown`` renders it. Reading the
notebooks needs only the standard library (they are JSON); finding the kinds imports the checks.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import check_choice, check_function, numbers_from

#: What each check asks the reader to show they understand, keyed by ``"chNN.<check>"``.
CONCEPTS: dict[str, str] = {
    "ch01.gpus_for_weights": "memory capacity: a model's bf16 weights against one GPU's HBM",
    "ch01.machine_balance": "machine balance: peak FLOP/s ÷ HBM bandwidth",
    "ch01.decode_bound": "batch-1 decoding is bandwidth-bound: weight bytes ÷ bandwidth per token",
    "ch01.link_time": "NVLink vs PCIe; the spec table's link figures are both directions together",
    "ch01.highest_balance": "machine balance across the GPUs of the spec table",
    "ch01.add_relu": "a first Triton kernel: program id, offsets, mask; fusing two elementwise ops",
    "ch02.decode_intensity": "arithmetic intensity of a decode-shaped linear layer",
    "ch02.linear_bound": "memory- or compute-bound: intensity against the ridge, which bandwidth moves",
    "ch02.fusion": "fusing memory-bound elementwise kernels: bytes saved, the speed-up it bounds",
    "ch02.rms_norm_floor": "roofline time of a reduction on the CUDA-core roof, not the tensor cores'",
    "ch02.batched_matmul_time": "roofline time max(FLOPs / peak, bytes / bandwidth) of batched matmuls",
    "ch03.critical_batch_int8": "critical batch size P·s_w / (2β) with int8 weights",
    "ch03.llama_up_proj_bound": "the critical batch: decode batches memory-bound, prefills compute-bound",
    "ch03.tile_traffic": "tiling: the HBM reads of a tiled matmul against the naive kernel's",
    "ch03.time_floor": "the roofline floor of a batch-1 matmul, at datasheet and at measured ceilings",
    "ch03.tiled_read_bytes": "HBM reads of a tiled matmul for any sizes, ragged edge tiles included",
    "ch04.naive_score_traffic": "naive attention's score-matrix traffic against FlashAttention's",
    "ch04.online_update": "the online softmax: rescaling the running maximum and sum",
    "ch04.causal_tiles": "causal attention by tiles: tile pairs skipped and masked (bottom-right mask)",
    "ch04.flash_kv_reads": "FlashAttention's K/V reads: each query tile streams all of K and V",
    "ch04.online_softmax_step": "one step of the online softmax over many rows, as the kernel does",
    "ch05.decode_floor": "a decode step's floor: weights + KV-cache bytes ÷ bandwidth; tokens/s",
    "ch05.which_bound": "prefill is compute-bound, decode memory-bound: intensity against balance",
    "ch05.roofline_fraction": "a measured decode step as a fraction of the bandwidth roofline",
    "ch05.decode_step_bytes": "the bytes one decode step reads: the weights and every sequence's cache",
    "ch06.cache_size": "KV-cache size: 2·L·H_kv·D·bytes per token, times tokens and batch",
    "ch06.max_batch": "the largest batch whose KV cache fits beside the weights",
    "ch06.offload_times": "a KV cache in host memory: PCIe against HBM",
    "ch06.combine_partials": "split-K decode attention: combining two partial softmaxes",
    "ch07.cache_per_token": "GQA and MQA shrink the KV cache per token by H / H_kv",
    "ch07.kv_head_of": "the GQA layout: which K/V head a query head reads",
    "ch07.max_batches": "MQA's smaller cache: how many more sequences fit",
    "ch07.mean_pool": "converting MHA to GQA by mean-pooling K/V heads",
    "ch08.launch": "the CUDA grid: blocks = ⌈n / threads per block⌉, the global index",
    "ch08.warp_of": "warps and lanes: a block's threads in groups of 32",
    "ch08.fusion_bytes": "fusing the residual add into RMSNorm: the HBM bytes saved",
    "ch08.row_max_kernel": "a CUDA block reduction in shared memory (numba-cuda)",
    "ch09.roofline": "the decode tokens/s bound at batch 1 and at a larger batch",
    "ch09.int8_bytes": "int8 weight-only quantisation: a step's bytes, the scales' overhead",
    "ch09.epilogue": "the int8 matmul's epilogue: per-column scales applied after the sum",
    "ch09.crossover": "the batch at which a step's KV-cache bytes equal its weight bytes",
    "ch10.min_gpus": "GPUs needed: memory for weights and cache, and what tensor parallelism can split",
    "ch10.allreduce_bytes": "tensor parallelism's 2L + 1 all-reduces a step; a ring sends 2(N−1)/N",
    "ch10.split_weight": "Megatron's column and row splits of a weight",
    "ch10.break_even": "where tensor parallelism stops paying: ring latency against bytes saved",
    "ch11.static_waste": "static batching's waste: idle decode slots and padding",
    "ch11.blocks_held": "the paged KV cache: blocks per sequence, the unused tail of the last",
    "ch11.reservation": "contiguous against paged KV memory: bytes reserved, requests that fit",
    "ch11.block_and_row": "paged addressing: a token's block through the block table, and its row",
}

#: ``**Exercise 1.6**``, optionally ``(coding)``, then a dash and the statement
_STATEMENT = re.compile(r"^[ \t]*\*\*Exercise (\d+)\.(\d+)\*\*(?:[ \t]*\(([^)]*)\))?[ \t]*[—–-][ \t]*",
                        re.M)
#: a chapter's check called in an exercise cell, ``ch03.tile_traffic(``
_CHECK_CALL = re.compile(r"\b(ch\d\d)\.(\w+)\(")
#: the string handed to a check as an answer when asking it what kind of answer it takes
_PROBE = "\x00not an answer"


@dataclass(frozen=True)
class Exercise:
    """One exercise of one chapter."""

    chapter: str           # the notebook's file name, "03_linear_layer.ipynb"
    chapter_title: str     # its first heading, "3. The linear layer"
    number: str            # "3.5"
    statement: str         # the markdown statement after "**Exercise 3.5** — "
    check: str             # "ch03.tiled_read_bytes"
    coding: bool           # its cell is tagged coding: the reader writes a function
    kind: str              # "number", "choice", "code", or "number + choice"
    parts: int             # answers the check takes (1 for code)
    concept: str           # CONCEPTS[check], "" when it has no entry

    @property
    def page(self) -> str:
        """The chapter's page, as the table of contents names it: ``chapters/03_linear_layer``."""
        return f"chapters/{self.chapter.removesuffix('.ipynb')}"

    @property
    def question(self) -> str:
        """The statement in one line: its first question, else its first "Write ..." sentence, else
        its first sentence."""
        return summary(self.statement)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _title(cells: list[dict], name: str) -> str:
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            m = re.search(r"^#[ \t]+(.+?)[ \t]*$", _source(cell), re.M)
            if m:
                return m.group(1)
    return name


def chapter_paths(chapters_dir: Path | str) -> list[Path]:
    """The chapter notebooks in ``chapters_dir``, in order: ``NN_<name>.ipynb``."""
    return sorted(Path(chapters_dir).glob("[0-9][0-9]_*.ipynb"))


def parse_chapter(path: Path | str) -> list[dict]:
    """The exercises of one chapter notebook, in order, as dicts of ``chapter``, ``chapter_title``,
    ``number``, ``statement``, ``check`` and ``coding`` (no check is imported).

    Each cell tagged ``exercise`` is paired with the last statement before it. Raises
    ``ValueError`` where the convention is broken: an exercise cell with no statement of its own
    before it, a statement with no exercise cell after it, a number that does not belong to the
    chapter or is out of sequence, or a cell that calls no chapter check or several."""
    path = Path(path)
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    title = _title(cells, path.stem)
    chapter = int(path.name[:2])
    found, pending = [], None
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "markdown":
            source = _source(cell)
            heads = list(_STATEMENT.finditer(source))
            for j, m in enumerate(heads):
                if pending is not None:
                    raise ValueError(f"{path.name}: Exercise {pending[0]} has no exercise cell after "
                                     "its statement")
                end = heads[j + 1].start() if j + 1 < len(heads) else len(source)
                pending = (f"{m.group(1)}.{m.group(2)}", source[m.end():end].strip())
        elif "exercise" in _tags(cell):
            if pending is None:
                raise ValueError(f"{path.name}: the exercise cell {i} has no **Exercise N.M** "
                                 "statement before it")
            number, statement = pending
            pending = None
            calls = sorted(set(_CHECK_CALL.findall(_source(cell))))
            if len(calls) != 1:
                raise ValueError(f"{path.name}: Exercise {number}'s cell calls "
                                 f"{len(calls) or 'no'} chapter checks, expected one: {calls}")
            found.append({"chapter": path.name, "chapter_title": title, "number": number,
                          "statement": statement, "check": ".".join(calls[0]),
                          "coding": "coding" in _tags(cell)})
    if pending is not None:
        raise ValueError(f"{path.name}: Exercise {pending[0]} has no exercise cell after its statement")
    want = [f"{chapter}.{k}" for k in range(1, len(found) + 1)]
    got = [e["number"] for e in found]
    if got != want:
        raise ValueError(f"{path.name}: exercises numbered {got}, expected {want}")
    return found


def resolve(check: str):
    """The check function named ``"chNN.<check>"``."""
    module, name = check.split(".")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def _answer_count(fn) -> int:
    return sum(1 for p in inspect.signature(fn).parameters.values()
               if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _reached(tb, fn) -> bool:
    while tb is not None:
        if tb.tb_frame.f_code is fn.__code__:
            return True
        tb = tb.tb_next
    return False


def answer_kinds(check) -> list[str]:
    """What kind of answer each of ``check``'s answers is, ``"number"`` or ``"choice"`` (or
    ``"code"`` for a function the check runs), found by asking the check (module docstring).

    Raises ``ValueError`` when the check accepts the probe, or refuses it in a way that says
    nothing about the kind of answer it wants."""
    kinds = []
    for k in range(_answer_count(check)):
        answers = [...] * _answer_count(check)
        answers[k] = _PROBE
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                check(*answers)
        except Exception as err:                        # noqa: BLE001 (the refusal is the answer)
            tb = err.__traceback__
            if _reached(tb, check_choice):
                kinds.append("choice")
            elif _reached(tb, check_function) or _reached(tb, numbers_from):
                kinds.append("code")
            elif isinstance(err, TypeError):
                kinds.append("number")
            else:
                raise ValueError(f"{check.__module__}.{check.__name__}: answer {k + 1} refuses a "
                                 f"string with {type(err).__name__}, which tells neither a number "
                                 f"nor a choice: {err}") from None
        else:
            raise ValueError(f"{check.__module__}.{check.__name__}: answer {k + 1} accepts a string "
                             "that is no option; cannot tell what kind of answer it takes")
    return kinds


def kind_of(check, coding: bool) -> tuple[str, int]:
    """``(kind, parts)`` of an exercise whose cell calls ``check`` (tagged ``coding`` or not)."""
    if coding:
        return "code", 1
    kinds = answer_kinds(check)
    return " + ".join(k for k in ("number", "choice", "code") if k in kinds), len(kinds)


def exercises(chapters_dir: Path | str) -> list[Exercise]:
    """Every exercise of every chapter notebook in ``chapters_dir``, in order."""
    out = []
    for path in chapter_paths(chapters_dir):
        for e in parse_chapter(path):
            kind, parts = kind_of(resolve(e["check"]), e["coding"])
            out.append(Exercise(**e, kind=kind, parts=parts, concept=CONCEPTS.get(e["check"], "")))
    return out


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

def summary(statement: str, limit: int = 130) -> str:
    """The first question of a markdown ``statement`` (when it asks none, its first sentence that
    starts with "Write", a coding exercise's task, else its first sentence), links reduced to their
    text and line breaks to spaces, cut to about ``limit`` characters."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", statement)   # [text](target) -> text
    text = re.sub(r"<[^>]+>", "", text)                              # <a id=...></a>
    text = " ".join(text.split())
    # a sentence ends at . ? or ! (or one of them before a closing parenthesis) followed by a space
    # and anything but a lower-case letter, outside code and math, and not in "e.g." or "i.e."
    sentences, start, inside = [], 0, None
    for i, ch in enumerate(text):
        if ch in "`$" and inside in (None, ch):
            inside = None if inside == ch else ch
        elif (inside is None and ch in ".?!)" and (ch != ")" or text[i - 1:i] in (".", "?", "!"))
              and not text[:i + 1].endswith(("e.g.", "i.e.", "cf.", "vs."))
              and (i + 1 == len(text) or (text[i + 1] == " " and not text[i + 2:i + 3].islower()))):
            sentences.append(text[start:i + 1].strip())
            start = i + 1
    if text[start:].strip():
        sentences.append(text[start:].strip())
    first = sentences[0] if sentences else ""
    task = next((s for s in sentences if s.startswith("Write ")), first)
    pick = next((s for s in sentences if s.endswith("?")), task)
    if len(pick) <= limit:
        return pick
    cut = pick[:limit].rsplit(" ", 1)[0]
    while cut.count("`") % 2 or cut.count("$") % 2:                # never cut inside code or math
        cut = cut[:max(cut.rfind("`"), cut.rfind("$"))].rstrip()
    return cut.rstrip(",;:") + " …"


def _cell(text: str) -> str:
    """``text`` fit for a cell of a markdown table: one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _kind_label(e: Exercise) -> str:
    return e.kind if e.parts == 1 else f"{e.kind} ×{e.parts}"


def table_markdown(catalog: list[Exercise], link_prefix: str = "../") -> str:
    """The catalogue as a markdown table, one row per exercise; the first row of each chapter
    names the chapter, linked to its notebook at ``link_prefix + "chapters/NN_<name>.ipynb"``
    (on the website, its page)."""
    rows = ["| chapter | exercise | asks | kind | checks the concept |", "|---|---|---|---|---|"]
    for i, e in enumerate(catalog):
        first = i == 0 or catalog[i - 1].chapter != e.chapter
        chapter = f"[{_cell(e.chapter_title)}]({link_prefix}{e.page}.ipynb)" if first else ""
        rows.append(f"| {chapter} | {e.number} | {_cell(e.question)} | {_kind_label(e)} | "
                    f"{_cell(e.concept)} |")
    return "\n".join(rows)
