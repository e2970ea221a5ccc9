"""The chapters follow the course's conventions (nbval runs them; this checks their form)."""

import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

CHAPTERS = notebooks.chapters()


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
        assert sum("exercise" in t for t in tags) >= notebooks.MIN_EXERCISES
