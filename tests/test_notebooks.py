"""The chapters follow the course's conventions (nbval runs them; this checks their form)."""

import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

CHAPTERS = notebooks.chapters()
#: the chapters that are lessons, with exercises; the others (the setup check) are listed, with
#: their reason, in notebooks.NOT_LESSONS
LESSONS = [p for p in CHAPTERS if p.name not in notebooks.NOT_LESSONS]


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks found in chapters/"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_conventions(path):
    assert notebooks.problems(path) == []


def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for v in node.values():
            out += _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            out += _toc_files(v)
    return out


def test_toc_lists_exactly_the_existing_chapters_in_order():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [f for f in _toc_files(toc) if f.startswith("chapters/")]
    assert listed == [f"chapters/{p.stem}" for p in CHAPTERS]
    for f in _toc_files(toc) + [toc["root"]]:
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"{f} in _toc.yml does not exist"


def test_colab_links_derive_from_the_config():
    cfg = notebooks.config()
    url = notebooks.colab_url(CHAPTERS[0], cfg)
    slug = cfg["repository"]["url"].removeprefix("https://github.com/")
    assert url == f"https://colab.research.google.com/github/{slug}/blob/main/chapters/{CHAPTERS[0].name}"
    assert f"git+https://github.com/{slug}@main" in notebooks.setup_source(cfg)


def test_student_edition_drops_solutions_only(tmp_path):
    pytest.importorskip("nbconvert", reason="the student edition is built with nbconvert (installed by make)")
    for out in notebooks.student(tmp_path):
        original = nbformat.read(ROOT / "chapters" / out.name, as_version=4)
        stripped = nbformat.read(out, as_version=4)
        tags = [set(c.metadata.get("tags", [])) for c in stripped.cells]
        assert not any("solution" in t for t in tags)
        n_solutions = sum("solution" in c.metadata.get("tags", []) for c in original.cells)
        assert len(stripped.cells) == len(original.cells) - n_solutions
        if out.name not in notebooks.NOT_LESSONS:
            assert sum("exercise" in t for t in tags) >= notebooks.MIN_EXERCISES


# --- each convention, and that `check` refuses a chapter that breaks it ----------------------

def _tags(cell):
    return set(cell.metadata.get("tags", []))


def _broken(path, breaking):
    """The problems `check` finds in a copy of the chapter at ``path`` changed by ``breaking(nb)``."""
    nb = nbformat.read(path, as_version=4)
    assert notebooks.problems(path, nb=nb) == []
    breaking(nb)
    return "\n".join(notebooks.problems(path, nb=nb))


def _first(nb, tag):
    return next(c for c in nb.cells if tag in _tags(c))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_exercise_cells_do_not_expect_an_exception(path):
    """An unattempted exercise prints "not attempted yet" and returns: "Run all" goes on past it."""
    nb = nbformat.read(path, as_version=4)
    exercises = [c for c in nb.cells if "exercise" in _tags(c)]
    assert len(exercises) >= notebooks.MIN_EXERCISES
    for c in exercises:
        assert c.cell_type == "code" and not _tags(c) & {"raises-exception", "remove-output"}, c.source[:60]
    for tag in ("raises-exception", "remove-output"):
        assert "must not be tagged " + tag in _broken(
            path, lambda nb: _first(nb, "exercise").metadata["tags"].append(tag))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_solutions_fold_input_and_output_and_are_colab_forms(path):
    nb = nbformat.read(path, as_version=4)
    solutions = [c for c in nb.cells if "solution" in _tags(c)]
    assert solutions
    for c in solutions:
        assert "hide-cell" in _tags(c) and not _tags(c) & {"hide-input", "hide-output"}
        assert c.source.splitlines()[0] == notebooks.SOLUTION_TITLE
        assert c.source.splitlines()[0].startswith("#")   # a comment: harmless on the website and in CI
        assert c.metadata["cellView"] == "form"

    def hide_input(nb):
        _first(nb, "solution").metadata["tags"] = ["solution", "hide-input"]

    def no_form(nb):
        del _first(nb, "solution").metadata["cellView"]

    def no_title(nb):
        c = _first(nb, "solution")
        c.source = c.source.split("\n", 1)[1]

    assert "must be tagged hide-cell" in _broken(path, hide_input)
    assert "must be a collapsed Colab form" in _broken(path, no_form)
    assert "must be a collapsed Colab form" in _broken(path, no_title)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_code_lines_fit_the_page(path):
    """The website shows code without wrapping; Colab and a projector show about 100 columns."""
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            for line in c.source.split("\n"):
                assert len(line) <= notebooks.MAX_CODE_LINE, line
    long_line = "total = " + " + ".join(f"x{i}" for i in range(40))
    assert len(long_line) > notebooks.MAX_CODE_LINE
    where = {}

    def too_long(nb):
        c = next(c for c in nb.cells if c.cell_type == "code" and "setup" not in _tags(c))
        c.source += "\n" + long_line
        where.update(start=c.source[:40], line=c.source.count("\n") + 1)

    found = _broken(path, too_long)
    assert (f"{path.name}: code cell {where['start']!r}, line {where['line']}: {len(long_line)} columns, "
            f"more than {notebooks.MAX_CODE_LINE}") in found


def test_generated_cells_fit_the_page():
    """What `sync` writes obeys the line limit too: the setup cell and a solution cell's form title."""
    for line in notebooks.setup_source().split("\n") + [notebooks.SOLUTION_TITLE]:
        assert len(line) <= notebooks.MAX_CODE_LINE, line


def test_sync_writes_solution_forms_once():
    src = "x = 1\nch01.check(x)"
    once = notebooks.solution_source(src)
    assert once == f"{notebooks.SOLUTION_TITLE}\n{src}"
    assert notebooks.solution_source(once) == once
    assert notebooks.solution_source("#@title Answer\nx = 1") == f"{notebooks.SOLUTION_TITLE}\nx = 1"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_colab_asks_for_a_gpu(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["accelerator"] == "GPU"
    assert nb.metadata["colab"]["gpuType"] == "T4" and nb.metadata["colab"]["provenance"] == []
    assert "ask Colab for a GPU" in _broken(path, lambda nb: nb.metadata.pop("accelerator"))


def test_setup_cell_says_how_to_get_a_gpu_in_colab():
    src = notebooks.setup_source()
    assert "print(textwrap.fill(device.describe(), 90" in src        # wrapped to the page
    # every line of the Colab advice fits the page column
    advice = src.split("not device.HAS_GPU:")[1].strip().removeprefix("print(").removesuffix(")")
    for line in eval("(" + advice + ")").split("\n"):
        assert len(line) <= 100, line
    assert 'if "google.colab" in sys.modules and not device.HAS_GPU:' in src
    assert "Runtime → Change runtime type" in src
    compile(src, "setup", "exec")


def test_a_chapter_that_needs_an_extra_installs_it_in_colab():
    for chapter, extra in notebooks.COLAB_EXTRAS.items():
        assert (notebooks.CHAPTERS / chapter).exists(), chapter
        assert f'("infer-lib[{extra}] @ "' in notebooks.setup_source(chapter=chapter)
    assert '("infer-lib @ "' in notebooks.setup_source(chapter="01_gpu_architecture.ipynb")


def test_site_url_derives_from_the_config():
    cfg = notebooks.config()
    owner, name = notebooks.repo_slug(cfg)[0].split("/")
    expected = cfg.get("html", {}).get("baseurl") or f"https://{owner.lower()}.github.io/{name}/"
    assert notebooks.site_url(cfg) == expected.rstrip("/") + "/"
    assert notebooks.site_url({**cfg, "html": {"baseurl": "https://example.org/book"}}) == "https://example.org/book/"


def test_relative_links_become_absolute_with_their_anchors():
    page, site = CHAPTERS[0], notebooks.site_url()
    slug, branch = notebooks.repo_slug()
    text = ("See the [glossary](../glossary.md), [KV cache](../glossary.md#kv-cache), "
            f"[next]({CHAPTERS[-1].name}#summary), [here](#learning-goals), [web](https://example.org/a.md), "
            "![fig](../images/x.png)\n\n[ref]: ../intro.md")
    out = notebooks.absolute_links(text, page)
    assert f"[glossary]({site}glossary.html)" in out
    assert f"[KV cache]({site}glossary.html#kv-cache)" in out
    assert f"[next]({site}chapters/{CHAPTERS[-1].stem}.html#summary)" in out
    assert "[here](#learning-goals)" in out and "[web](https://example.org/a.md)" in out
    assert f"![fig](https://raw.githubusercontent.com/{slug}/{branch}/images/x.png)" in out
    assert f"[ref]: {site}intro.html" in out
    assert notebooks.absolute_links(out, page) == out


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_links_work_in_colab(path):
    """No relative link between pages (dead in a notebook opened alone in Colab)."""
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown":
            assert not [t for t in notebooks._links(c.source) if notebooks._is_relative(t)], c.source[:80]

    def relative(nb):
        nb.cells.append(nbformat.v4.new_markdown_cell("See the [glossary](../glossary.md#kv-cache)."))

    def no_such_page(nb):
        nb.cells.append(nbformat.v4.new_markdown_cell(f"[x]({notebooks.site_url()}chapters/99_nope.html)"))

    def myst_target(nb):
        nb.cells.append(nbformat.v4.new_markdown_cell("(my-section)=\n## A section"))

    assert "relative link '../glossary.md#kv-cache' is dead in Colab" in _broken(path, relative)
    assert "names no page of the book" in _broken(path, no_such_page)
    assert "the target line (my-section)= shows as text in Jupyter and Colab" in _broken(path, myst_target)


CODING_STUB = '''def my_softmax(x):
    raise NotImplementedError  # your code here


ch01.{check}(my_softmax)'''


def test_coding_exercise_check_can_be_switched_on_per_chapter(monkeypatch):
    """Every chapter listed in CODING_EXERCISE_REQUIRED needs a cell tagged exercise and coding."""
    path = LESSONS[0]
    monkeypatch.setattr(notebooks, "CODING_EXERCISE_REQUIRED", [path.name])
    assert "no coding exercise" not in "\n".join(notebooks.problems(path))

    def without_coding(nb):
        nb.cells = [c for c in nb.cells if "coding" not in c.get("metadata", {}).get("tags", [])]

    assert "no coding exercise" in _broken_with_required(path, without_coding)

    def coding(check):
        def add(nb):
            without_coding(nb)
            nb.cells.append(nbformat.v4.new_code_cell(CODING_STUB.format(check=check),
                                                      metadata={"tags": ["exercise", "coding"]}))
        return add

    # a check that does not compare with a reference by check_function is refused
    found = _broken_with_required(path, coding("gpus_for_weights"))
    assert "must compare with a reference by check_function" in found and "no coding exercise" not in found
    assert "does not exist" in _broken_with_required(path, coding("no_such_check"))


def _broken_with_required(path, breaking):
    nb = nbformat.read(path, as_version=4)
    breaking(nb)
    return "\n".join(notebooks.problems(path, nb=nb))


def test_coding_exercise_required_is_a_list_of_existing_chapters():
    names = {p.name for p in CHAPTERS}
    assert set(notebooks.CODING_EXERCISE_REQUIRED) <= names


def test_pages_that_are_not_lessons_say_why_and_have_no_exercises():
    """The setup check is a chapter without exercises: named with its reason in NOT_LESSONS, it
    keeps every other convention, and `check` refuses an exercise added to it."""
    names = {p.name for p in CHAPTERS}
    assert set(notebooks.NOT_LESSONS) <= names
    assert not set(notebooks.NOT_LESSONS) & set(notebooks.CODING_EXERCISE_REQUIRED)
    for name, reason in notebooks.NOT_LESSONS.items():
        assert reason.strip(), name
        path = notebooks.CHAPTERS / name
        nb = nbformat.read(path, as_version=4)
        assert not [c for c in nb.cells if _tags(c) & {"exercise", "solution", "coding"}]

        def with_exercise(nb):
            nb.cells.append(nbformat.v4.new_code_cell("x = ...\nch01.check(x)",
                                                      metadata={"tags": ["exercise"]}))

        assert "is not a lesson and has none" in _broken(path, with_exercise)


def test_a_lesson_without_exercises_is_refused():
    """The exemption is per page: a lesson that loses its exercises is still refused."""
    def no_exercises(nb):
        nb.cells = [c for c in nb.cells if not _tags(c) & {"exercise", "solution"}]

    found = _broken(LESSONS[0], no_exercises)
    assert f"0 exercise cells; every chapter has at least {notebooks.MIN_EXERCISES}" in found
