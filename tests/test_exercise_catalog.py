"""The exercise catalogue (``infer_lib.exercises.catalog``) that the instructors' page shows: every
exercise of every chapter, once, with the kind of answer its check takes."""

import ast
import importlib
import inspect
import json
import sys
from pathlib import Path

import nbformat
import pytest

import infer_lib.exercises as ex
from infer_lib.exercises import catalog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

CHAPTERS = notebooks.chapters()
CATALOG = catalog.exercises(ROOT / "chapters")


def _tags(cell):
    return set(cell.metadata.get("tags", []))


def test_it_reads_the_chapters_the_notebook_tools_read():
    assert catalog.chapter_paths(ROOT / "chapters") == CHAPTERS


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_exercise_cell_appears_once_in_order(path):
    """The exercise cells as tools/notebooks.py finds them (tag ``exercise``), one catalogue entry
    each, numbered N.1, N.2, ... in the chapter's order, coding exactly where the cell is tagged so."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "exercise" in notebooks._tags(c)]
    entries = [e for e in CATALOG if e.chapter == path.name]
    assert len(entries) == len(cells)
    chapter = int(path.name[:2])
    assert [e.number for e in entries] == [f"{chapter}.{k}" for k in range(1, len(cells) + 1)]
    assert [e.coding for e in entries] == ["coding" in notebooks._tags(c) for c in cells]
    for e, cell in zip(entries, cells):
        assert f"{e.check}(" in cell.source
    if path.name not in notebooks.NOT_LESSONS:
        assert len(entries) >= notebooks.MIN_EXERCISES


def test_numbers_are_unique():
    numbers = [e.number for e in CATALOG]
    assert len(numbers) == len(set(numbers))


@pytest.mark.parametrize("e", CATALOG, ids=lambda e: e.number)
def test_kind_follows_the_tags_and_the_check(e):
    check = catalog.resolve(e.check)
    if e.coding:
        assert e.kind == "code" and e.parts == 1
        assert "check_function" in inspect.getsource(check)     # as tools/notebooks.py demands
    else:
        assert e.kind in ("number", "choice", "number + choice")
        kinds = catalog.answer_kinds(check)
        assert len(kinds) == e.parts == len([p for p in inspect.signature(check).parameters.values()
                                             if p.default is inspect.Parameter.empty])
        # a part called a choice reaches check_choice; a check that never calls it has no choice
        if "choice" in kinds:
            assert "check_choice" in inspect.getsource(inspect.getmodule(check))


@pytest.mark.parametrize("check, kinds", [
    ("ch01.highest_balance", ["choice"]),                  # a key of hardware.SPECS
    ("ch02.linear_bound", ["choice", "choice"]),           # "memory" or "compute"
    ("ch02.fusion", ["number"] * 3),
    ("ch04.causal_tiles", ["number", "number"]),           # counts, checked by check_choice on range()
    ("ch06.max_batch", ["number"]),                        # whole_sequences
    ("ch07.kv_head_of", ["number", "number"]),             # a head and a list of heads, hand-checked
    ("ch08.launch", ["number", "number"]),                 # counts, hand-checked
])
def test_answer_kinds_of_known_checks(check, kinds):
    assert catalog.answer_kinds(catalog.resolve(check)) == kinds


def test_answer_kinds_of_the_generic_checks():
    def number(a):
        ex.check_number(a, 1.0, name="E")

    def choice(a, b):
        ex.check_part(ex.check_choice, a, "x", name="E (a)", options=["x", "y"])
        ex.check_part(ex.check_number, b, 2.0, name="E (b)")

    def lenient(a):
        return a == 1

    def confusing(a):
        if a is not ...:
            raise AssertionError("wrong")

    assert catalog.answer_kinds(number) == ["number"]
    assert catalog.answer_kinds(choice) == ["choice", "number"]
    assert catalog.kind_of(choice, coding=False) == ("number + choice", 2)
    assert catalog.kind_of(number, coding=True) == ("code", 1)
    with pytest.raises(ValueError, match="accepts a string"):
        catalog.answer_kinds(lenient)
    with pytest.raises(ValueError, match="tells neither"):
        catalog.answer_kinds(confusing)


def test_every_exercise_names_its_concept_and_no_concept_is_stale():
    assert [e.number for e in CATALOG if not e.concept] == [], \
        "add the concept of each new check to infer_lib.exercises.catalog.CONCEPTS"
    for key in catalog.CONCEPTS:
        module, name = key.split(".")
        fn = getattr(importlib.import_module(f"infer_lib.exercises.{module}"), name, None)
        assert inspect.isfunction(fn), f"CONCEPTS[{key!r}] names no check"


def test_the_table_lists_each_exercise_once_and_links_each_chapter():
    table = catalog.table_markdown(CATALOG)
    rows = table.splitlines()[2:]
    assert [row.split("|")[2].strip() for row in rows] == [e.number for e in CATALOG]
    assert all(row.count("|") - row.count("\\|") == 6 for row in rows)      # five cells each
    for path in {e.chapter for e in CATALOG}:
        assert table.count(f"(../chapters/{path})") == 1
        assert (ROOT / "chapters" / path).exists()


def test_summary_takes_the_first_question_and_keeps_code_and_math_whole():
    s = "A model has $d = 4096$. What is `x | y`, in bytes? (Hint: count.) Then this?"
    assert catalog.summary(s) == "What is `x | y`, in bytes?"
    assert catalog.summary("Write `f`. It returns e.g. a tensor.") == "Write `f`."
    # a coding exercise that sets the scene first: its task, not its first sentence
    assert catalog.summary("Attention multiplies matrices. Write `g`: the time. Then check.") == \
        "Write `g`: the time."
    long = "How many " + "very " * 30 + "bytes, with `a_long_code_span` and $x$?"
    cut = catalog.summary(long, limit=60)
    assert cut.endswith(" …") and cut.count("`") % 2 == 0 and len(cut) <= 62


def _write(tmp_path, name, cells):
    nb = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def _md(text):
    return nbformat.v4.new_markdown_cell(text)


def _ex(check="ch01.machine_balance", coding=False):
    tags = ["exercise", "coding"] if coding else ["exercise"]
    return nbformat.v4.new_code_cell(f"answer = ...\n{check}(answer)", metadata={"tags": tags})


def test_parse_pairs_statements_and_cells(tmp_path):
    path = _write(tmp_path, "01_x.ipynb", [
        _md("# 1. X"), _md("**Exercise 1.1** — How much?"), _ex(),
        _md('<a id="e2"></a>\n**Exercise 1.2** (coding) — Write `f`.'), _ex("ch01.add_relu", True)])
    got = catalog.parse_chapter(path)
    assert [(e["number"], e["statement"], e["check"], e["coding"]) for e in got] == [
        ("1.1", "How much?", "ch01.machine_balance", False),
        ("1.2", "Write `f`.", "ch01.add_relu", True)]
    assert got[0]["chapter_title"] == "1. X"


@pytest.mark.parametrize("cells, message", [
    ([_md("**Exercise 1.1** — A?"), _md("**Exercise 1.2** — B?"), _ex()], "no exercise cell"),
    ([_md("text"), _ex()], "no \\*\\*Exercise N.M\\*\\* statement"),
    ([_md("**Exercise 1.1** — A?"), _ex(), _md("**Exercise 1.1** — B?"), _ex()], "numbered"),
    ([_md("**Exercise 2.1** — A?"), _ex()], "numbered"),
    ([_md("**Exercise 1.1** — A?"), _ex("print")], "calls no chapter checks"),
    ([_md("**Exercise 1.1** — A?")], "no exercise cell"),
])
def test_parse_refuses_a_broken_convention(tmp_path, cells, message):
    with pytest.raises(ValueError, match=message):
        catalog.parse_chapter(_write(tmp_path, "01_x.ipynb", cells))


def test_parse_needs_only_json(tmp_path):
    """A notebook whose cell sources are lists of lines, as Jupyter writes them."""
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps({"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["**Exercise 1.1** — ", "A?"]},
        {"cell_type": "code", "metadata": {"tags": ["exercise"]}, "source": ["ch01.machine_balance(...)"],
         "outputs": [], "execution_count": None}]}))
    assert catalog.parse_chapter(path)[0]["statement"] == "A?"


def _names(source):
    """Names a code cell defines and names it reads (IPython's %magics and !commands left out)."""
    lines = [line for line in source.split("\n") if not line.lstrip().startswith(("%", "!"))]
    defined, used = set(), set()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.Name):
            (defined if isinstance(node.ctx, ast.Store) else used).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return defined, used


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_the_student_edition_runs_without_the_solutions(path):
    """No cell after a solution reads a name that only a solution defines, so "Run all" works on
    the student edition (``make student``), which removes the solution cells."""
    nb = nbformat.read(path, as_version=4)
    only_in_solutions, elsewhere = set(), set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        defined, used = _names(cell.source)
        if "solution" in _tags(cell):
            only_in_solutions |= defined - elsewhere
        else:
            missing = (used & only_in_solutions) - elsewhere
            assert not missing, f"{cell.source[:60]!r} uses {sorted(missing)}, defined only by a solution"
            elsewhere |= defined


#: the pages generated from the course itself (the other instructors' pages are prose)
INSTRUCTOR_PAGES = [ROOT / "instructor" / "exercises.ipynb", ROOT / "instructor" / "cheat_sheet.ipynb"]


@pytest.mark.parametrize("path", INSTRUCTOR_PAGES, ids=lambda p: p.name)
def test_instructor_pages_are_committed_like_the_chapters(path):
    """Without outputs (the book executes them), code lines within the chapters' width, and the
    markdown that code cells display rendered as MyST (the catalogue's and the cheat sheet's math)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
            assert "remove-input" in _tags(cell), "an instructor page shows results, not code"
            long = [line for line in cell.source.split("\n") if len(line) > notebooks.MAX_CODE_LINE]
            assert not long, long
    assert nb.metadata.get("mystnb", {}).get("render_markdown_format") == "myst"
    # executed afresh whenever the book reads it: its content comes from the chapters and infer_lib,
    # which jupyter-cache does not see
    assert nb.metadata["mystnb"].get("execution_mode") == "force"
