"""Chapter-notebook housekeeping: ``python tools/notebooks.py {sync,check,student}``.

* ``sync [NB ...]`` — writes what is generated in every chapter (or those named) from
                ``_config.yml`` (the one place the repository URL lives): the Colab
                badge cell (tag ``colab-badge``), the setup cell (tag ``setup``),
                the notebook metadata asking Colab for a GPU, the Colab form line and
                metadata of every solution cell (``#@title ...``, ``cellView: form``,
                tag ``hide-cell``), and absolute links to the published site in place
                of relative links between pages (dead in a notebook opened alone in
                Colab); and clears outputs (chapters are committed without them).
* ``check``   — reports chapters that drifted from that, or break the
                exercise convention (CONTRIBUTING.md, "Exercises"), or have a code
                line longer than ``MAX_CODE_LINE`` columns; exits non-zero if any
                did (tests call it).
* ``student`` — writes the student edition to ``student/``: every cell tagged
                ``solution`` removed (nbconvert's TagRemovePreprocessor).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import posixpath
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
MIN_EXERCISES = 3
#: The longest line of a code cell, in characters: the website shows code without wrapping, and
#: Colab or a projector in a workshop room show about this many columns.
MAX_CODE_LINE = 100

#: Chapters (file names) that must have a coding exercise: a cell tagged ``exercise`` and ``coding``
#: whose stub function raises ``NotImplementedError`` and whose check uses ``check_function``.
#: Every lesson has one (the pages of NOT_LESSONS have no exercises); a new chapter is added here
#: with its first coding exercise.
CODING_EXERCISE_REQUIRED: list[str] = ["01_gpu_architecture.ipynb", "02_bottlenecks_and_roofline.ipynb",
                                        "03_linear_layer.ipynb", "04_attention.ipynb",
                                        "05_prefill_and_decode.ipynb", "06_kv_cache.ipynb",
                                        "07_mqa_gqa.ipynb", "08_cuda_and_kernel_fusion.ipynb",
                                        "09_fast_decoding.ipynb", "10_beyond_one_gpu.ipynb",
                                        "11_serving.ipynb"]

#: Pages among the chapters that are not lessons, each with the reason. They follow every other
#: convention (the badge, the setup cell, the Colab metadata, links, the line length) but have no
#: exercises — they teach nothing to practise — and so no solutions; `check` refuses an exercise or
#: solution cell on them, so the exemption cannot hide an unfinished lesson. (Learning goals, a
#: summary and references are a lesson's too: such a page opens with what it is for instead.)
NOT_LESSONS: dict[str, str] = {
    "00_setup.ipynb": "the setup check every participant runs first: it checks the machine, and "
                      "teaches nothing to practise",
}

#: The first line of every solution cell: Colab shows a form cell as this title, its code folded.
SOLUTION_TITLE = "#@title Solution (double-click to show)"
#: What every solution cell is tagged: ``hide-cell`` folds input *and* output under one toggle.
SOLUTION_TAGS = ("solution", "hide-cell")
#: Tags an exercise cell must not carry: an unattempted check prints and returns, it does not raise
#: (a raising cell stops "Run all"), and its "not attempted yet" line is shown on the website.
EXERCISE_FORBIDDEN_TAGS = ("raises-exception", "remove-output", "hide-input", "hide-output", "hide-cell")
#: Notebook metadata asking Colab for a GPU runtime (a T4 is what the free tier has).
COLAB_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def repo_slug(cfg: dict | None = None) -> tuple[str, str]:
    """(``owner/name``, branch) of the repository named in ``_config.yml``."""
    repo = (cfg or config())["repository"]
    url = repo["url"].rstrip("/").removesuffix(".git")
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise ValueError(f"_config.yml repository.url must be a GitHub URL, got {url!r}")
    return url[len(prefix):], repo.get("branch", "main")


def site_url(cfg: dict | None = None) -> str:
    """The published book's address, ending in ``/``: ``html.baseurl`` if ``_config.yml`` sets it,
    else GitHub Pages of the repository (``https://<owner>.github.io/<name>/``)."""
    cfg = cfg or config()
    base = (cfg.get("html") or {}).get("baseurl")
    if base:
        return base.rstrip("/") + "/"
    owner, name = repo_slug(cfg)[0].split("/")
    return f"https://{owner.lower()}.github.io/{name}/"


def colab_url(nb_path: Path, cfg: dict | None = None) -> str:
    slug, branch = repo_slug(cfg)
    rel = nb_path.resolve().relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{rel}"


def badge_source(nb_path: Path, cfg: dict | None = None) -> str:
    return f"[![Open in Colab]({BADGE_SVG})]({colab_url(nb_path, cfg)})"


#: Chapters whose Colab setup installs extras of the package (pyproject.toml), beyond its core.
#: Chapter 8 needs numba-cuda for its CUDA kernels; Colab ships JAX, which Pallas needs.
COLAB_EXTRAS: dict[str, str] = {"08_cuda_and_kernel_fusion.ipynb": "cuda-kernels"}


def setup_source(cfg: dict | None = None, chapter: str | None = None) -> str:
    """The setup cell of ``chapter`` (a file name; its extras from ``COLAB_EXTRAS``)."""
    slug, branch = repo_slug(cfg)
    extras = COLAB_EXTRAS.get(chapter or "")
    name = f"infer-lib[{extras}]" if extras else "infer-lib"
    return f'''# Setup. In Colab, install infer_lib from the course repository; Colab's own torch
# and triton are kept (infer_lib does not pin them); on a CPU runtime, say how to get a GPU.
# Everywhere: describe the machine.
import subprocess, sys, textwrap

if "google.colab" in sys.modules:
    package = ("{name} @ "
               "git+https://github.com/{slug}@{branch}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)

import infer_lib
from infer_lib import device

print(textwrap.fill(device.describe(), 90, break_long_words=False))
if "google.colab" in sys.modules and not device.HAS_GPU:
    print("\\nThis Colab runtime has no GPU: kernels run in Triton's slow CPU interpreter, and "
          "nothing is timed.\\nFor a GPU: Runtime → Change runtime type → Hardware accelerator: "
          "a GPU (T4 is free)\\n→ Save, then run the notebook again from the top.")'''


def chapters() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _find(nb, tag: str):
    return next((c for c in nb.cells if tag in _tags(c)), None)


# Markdown links: inline ``[text](target "title")`` and reference definitions ``[label]: target``.
_INLINE_LINK = re.compile(r"(!?\[[^\]]*\]\()(<[^>]*>|[^)\s]+)((?:\s+\"[^\"]*\")?\))")
_REF_LINK = re.compile(r"^(\s{0,3}\[[^\]]+\]:\s*)(\S+)", re.M)
_PAGE_SUFFIXES = (".md", ".ipynb")


def _is_relative(target: str) -> bool:
    return not (re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")))


def absolute_link(target: str, page: Path, cfg: dict | None = None) -> str:
    """A relative link of a chapter as an absolute one that works on the website and in Colab.

    A page of the book (``../glossary.md#kv-cache``, ``02_bottlenecks_and_roofline.ipynb``) becomes
    its page on the published site (``<site>glossary.html#kv-cache``); any other file of the
    repository its raw file on GitHub. Anchors are kept."""
    path, sep, anchor = target.partition("#")
    rel = posixpath.normpath(posixpath.join(page.resolve().parent.relative_to(ROOT).as_posix(), path))
    if rel.startswith(".."):
        raise ValueError(f"{target!r} in {page.name} points outside the repository")
    stem, suffix = posixpath.splitext(rel)
    if suffix in _PAGE_SUFFIXES or (not suffix and any((ROOT / f"{rel}{s}").exists() for s in _PAGE_SUFFIXES)):
        url = f"{site_url(cfg)}{stem if suffix in _PAGE_SUFFIXES else rel}.html"
    else:
        slug, branch = repo_slug(cfg)
        url = f"https://raw.githubusercontent.com/{slug}/{branch}/{rel}"
    return url + sep + anchor


def _links(text: str):
    for m in _INLINE_LINK.finditer(text):
        yield m.group(2).strip("<>")
    for m in _REF_LINK.finditer(text):
        yield m.group(2)


def absolute_links(text: str, page: Path, cfg: dict | None = None) -> str:
    """``text`` with every relative link made absolute (``absolute_link``)."""
    def inline(m):
        target = m.group(2).strip("<>")
        if not _is_relative(target):
            return m.group(0)
        return m.group(1) + absolute_link(target, page, cfg) + m.group(3)

    def ref(m):
        return m.group(1) + (absolute_link(m.group(2), page, cfg) if _is_relative(m.group(2)) else m.group(2))

    return _REF_LINK.sub(ref, _INLINE_LINK.sub(inline, text))


def _site_pages() -> set[str]:
    """The pages the book builds, as their paths without suffix (``glossary``, ``chapters/01_...``)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    pages.add(str(node[key]).removesuffix(".md").removesuffix(".ipynb"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return pages


def solution_source(source: str) -> str:
    """A solution cell's source with the Colab form title as its first line (once)."""
    lines = source.split("\n")
    if lines and lines[0].lstrip().startswith("#@title"):
        lines = lines[1:]
    return "\n".join([SOLUTION_TITLE, *lines])


def _colab_metadata_ok(nb) -> bool:
    colab = nb.metadata.get("colab", {})
    return (nb.metadata.get("accelerator") == COLAB_METADATA["accelerator"]
            and colab.get("gpuType") == COLAB_METADATA["colab"]["gpuType"] and "provenance" in colab)


def sync(path: Path, cfg: dict | None = None) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["accelerator"] = COLAB_METADATA["accelerator"]
    colab = nb.metadata.setdefault("colab", {})
    colab["gpuType"] = COLAB_METADATA["colab"]["gpuType"]
    colab.setdefault("provenance", [])
    badge = _find(nb, "colab-badge")
    if badge is None:
        badge = nbformat.v4.new_markdown_cell(metadata={"tags": ["colab-badge"]})
        nb.cells.insert(1, badge)
    badge.source = badge_source(path, cfg)
    setup = _find(nb, "setup")
    if setup is None:
        setup = nbformat.v4.new_code_cell(metadata={"tags": ["setup"]})
        nb.cells.insert(nb.cells.index(badge) + 1, setup)
    setup.source = setup_source(cfg, path.name)
    for cell in nb.cells:
        tags = _tags(cell)
        if cell.cell_type == "markdown" and cell is not badge:
            cell.source = absolute_links(cell.source, path, cfg)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if cell.cell_type == "code" and "solution" in tags:
            cell.source = solution_source(cell.source)
            cell.metadata["cellView"] = "form"
            cell.metadata["tags"] = [t for t in tags if t not in ("hide-input", "hide-output")] + [
                t for t in SOLUTION_TAGS if t not in tags]
    nbformat.write(nb, path)


def problems(path: Path, cfg: dict | None = None, nb=None) -> list[str]:
    """What is wrong with a chapter, as sentences; empty when it is fine.

    ``nb`` checks that notebook as if it were the chapter at ``path`` (the tests pass broken copies)."""
    nb = nb if nb is not None else nbformat.read(path, as_version=4)
    name, out = path.name, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count):
            out.append(f"{name}: cell {i} has outputs; chapters are committed without them (run `make sync`)")
    badge, setup = _find(nb, "colab-badge"), _find(nb, "setup")
    if badge is None or badge.source != badge_source(path, cfg):
        out.append(f"{name}: the Colab badge cell is missing or stale (run `make sync`)")
    if setup is None or setup.source != setup_source(cfg, name):
        out.append(f"{name}: the setup cell is missing or stale (run `make sync`)")
    if not _colab_metadata_ok(nb):
        out.append(f"{name}: the notebook metadata does not ask Colab for a GPU "
                   f"({COLAB_METADATA}; run `make sync`)")
    out += _link_problems(nb, path, cfg)
    out += _long_line_problems(nb, name)
    exercises = [c for c in nb.cells if "exercise" in _tags(c)]
    solutions = [c for c in nb.cells if "solution" in _tags(c)]
    if name in NOT_LESSONS:
        if exercises or solutions:
            out.append(f"{name}: {len(exercises)} exercise and {len(solutions)} solution cells, but it "
                       f"is not a lesson and has none (NOT_LESSONS: {NOT_LESSONS[name]})")
    elif len(exercises) < MIN_EXERCISES:
        out.append(f"{name}: {len(exercises)} exercise cells; every chapter has at least {MIN_EXERCISES}")
    if len(solutions) != len(exercises):
        out.append(f"{name}: {len(exercises)} exercise cells but {len(solutions)} solution cells")
    for c in exercises:
        what = f"{name}: exercise cell {c.source[:40]!r}"
        if c.cell_type != "code":
            out.append(f"{what} must be a code cell")
        if bad := [t for t in _tags(c) if t in EXERCISE_FORBIDDEN_TAGS]:
            out.append(f"{what} must not be tagged {', '.join(bad)}: an unattempted exercise prints "
                       "\"not attempted yet\" and returns, it never raises")
        if "solution" in _tags(c):
            out.append(f"{what} is tagged both exercise and solution")
    for c in solutions:
        what = f"{name}: solution cell {c.source[:40]!r}"
        if c.cell_type != "code":
            out.append(f"{what} must be a code cell")
            continue
        if "hide-cell" not in _tags(c) or {"hide-input", "hide-output"} & set(_tags(c)):
            out.append(f"{what} must be tagged hide-cell (input and output folded together), "
                       "not hide-input/hide-output (run `make sync`)")
        if c.source.split("\n", 1)[0] != SOLUTION_TITLE or c.metadata.get("cellView") != "form":
            out.append(f"{what} must be a collapsed Colab form: first line {SOLUTION_TITLE!r} and "
                       "metadata cellView: form (run `make sync`)")
    for i, c in enumerate(nb.cells):
        if "solution" in _tags(c) and (i == 0 or "exercise" not in _tags(nb.cells[i - 1])):
            out.append(f"{name}: solution cell {c.source[:40]!r} must come right after its exercise cell")
    out += _coding_problems(nb, name)
    return out


def _long_line_problems(nb, name: str) -> list[str]:
    """Each code-cell line longer than ``MAX_CODE_LINE`` columns (the website does not wrap code)."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for n, line in enumerate(c.source.split("\n"), 1):
            if len(line) > MAX_CODE_LINE:
                out.append(f"{name}: code cell {c.source[:40]!r}, line {n}: {len(line)} columns, "
                           f"more than {MAX_CODE_LINE} (rewrap it): {line.strip()[:60]!r}")
    return out


#: A MyST target line, ``(label)=``: the website reads it, Jupyter and Colab print it.
_MYST_TARGET = re.compile(r"^\(([A-Za-z0-9_-]+)\)=\s*$", re.M)


def _link_problems(nb, path: Path, cfg: dict | None) -> list[str]:
    """Relative links between pages (dead in Colab) and absolute links to pages the site does not have."""
    out, site, pages = [], site_url(cfg), None
    for c in nb.cells:
        if c.cell_type != "markdown":
            continue
        for label in _MYST_TARGET.findall(c.source):
            out.append(f"{path.name}: the target line ({label})= shows as text in Jupyter and Colab; "
                       f'mark the section with <a id="{label}"></a> instead')
        for target in _links(c.source):
            if _is_relative(target):
                out.append(f"{path.name}: relative link {target!r} is dead in Colab; "
                           "`make sync` makes it absolute")
            elif target.startswith(site):
                pages = pages if pages is not None else _site_pages()
                page = target[len(site):].partition("#")[0].removesuffix(".html")
                if page not in pages:
                    out.append(f"{path.name}: link {target!r} names no page of the book (_toc.yml)")
    return out


def _coding_problems(nb, name: str) -> list[str]:
    """Coding exercises: a stub raising NotImplementedError, a check built on ``check_function``;
    at least one in each chapter of ``CODING_EXERCISE_REQUIRED``."""
    out = []
    coding = [c for c in nb.cells if {"exercise", "coding"} <= set(_tags(c))]
    for c in coding:
        what = f"{name}: coding exercise cell {c.source[:40]!r}"
        if not re.search(r"^def \w+\(", c.source, re.M) or "raise NotImplementedError" not in c.source:
            out.append(f"{what} must define the reader's function with a body that raises NotImplementedError")
        calls = re.findall(r"\b(ch\d\d)\.(\w+)\(", c.source)
        if not calls:
            out.append(f"{what} must end with its chapter check, chNN.<check>(...)")
        for module, fn in calls:
            try:
                check = getattr(importlib.import_module(f"infer_lib.exercises.{module}"), fn)
                source = inspect.getsource(check)
            except (ImportError, AttributeError) as err:
                out.append(f"{what}: its check {module}.{fn} does not exist ({err})")
                continue
            if "check_function" not in source:
                out.append(f"{what}: its check {module}.{fn} must compare with a reference by check_function")
    for c in nb.cells:
        if "coding" in _tags(c) and "exercise" not in _tags(c) and "solution" not in _tags(c):
            out.append(f"{name}: cell {c.source[:40]!r} is tagged coding but is no exercise or solution")
    if name in CODING_EXERCISE_REQUIRED and name in NOT_LESSONS:
        out.append(f"{name}: in both CODING_EXERCISE_REQUIRED and NOT_LESSONS")
    elif name in CODING_EXERCISE_REQUIRED and not coding:
        out.append(f"{name}: no coding exercise (a cell tagged exercise and coding); "
                   "this chapter is in CODING_EXERCISE_REQUIRED")
    return out


def student(out_dir: Path) -> list[Path]:
    """Write the student edition: the chapters without their solution cells."""
    from nbconvert.preprocessors import TagRemovePreprocessor

    strip = TagRemovePreprocessor(remove_cell_tags={"solution"}, enabled=True)
    written = []
    for path in chapters():
        nb = nbformat.read(path, as_version=4)
        nb, _ = strip.preprocess(nb, {})
        dest = out_dir / "chapters" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["sync", "check", "student"])
    ap.add_argument("chapters", nargs="*", type=Path, help="sync or check only these notebooks")
    ap.add_argument("--out", type=Path, default=ROOT / "student")
    args = ap.parse_args(argv)
    paths = [p.resolve() for p in args.chapters] or chapters()
    if args.command == "sync":
        for p in paths:
            sync(p)
            print(f"synced {p.relative_to(ROOT)}")
        return 0
    if args.command == "check":
        found = [msg for p in paths for msg in problems(p)]
        print("\n".join(found) or "all chapters follow the conventions")
        return 1 if found else 0
    for p in student(args.out):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
