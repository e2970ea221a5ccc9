"""Chapter-notebook housekeeping: ``python tools/notebooks.py {sync,check,student}``.

* ``sync [NB ...]`` — writes the generated cells of every chapter (or those named) from ``_config.yml``
                (the one place the repository URL lives): the Colab badge cell
                (tag ``colab-badge``) and the setup cell (tag ``setup``), and
                clears outputs (chapters are committed without them).
* ``check``   — reports chapters that drifted from that, or break the
                exercise convention; exits non-zero if any did (tests call it).
* ``student`` — writes the student edition to ``student/``: every cell tagged
                ``solution`` removed (nbconvert's TagRemovePreprocessor).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
BADGE_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
MIN_EXERCISES = 3


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


def colab_url(nb_path: Path, cfg: dict | None = None) -> str:
    slug, branch = repo_slug(cfg)
    rel = nb_path.resolve().relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{rel}"


def badge_source(nb_path: Path, cfg: dict | None = None) -> str:
    return f"[![Open in Colab]({BADGE_SVG})]({colab_url(nb_path, cfg)})"


def setup_source(cfg: dict | None = None) -> str:
    slug, branch = repo_slug(cfg)
    return f'''# Setup. In Colab, install infer_lib from the course repository; Colab's own torch
# and triton are kept (infer_lib does not pin them). Everywhere: describe the machine.
import subprocess, sys

if "google.colab" in sys.modules:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    "infer-lib @ git+https://github.com/{slug}@{branch}"], check=True)

import infer_lib
from infer_lib import device

print(device.describe())'''


def chapters() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _find(nb, tag: str):
    return next((c for c in nb.cells if tag in _tags(c)), None)


def sync(path: Path, cfg: dict | None = None) -> None:
    nb = nbformat.read(path, as_version=4)
    badge = _find(nb, "colab-badge")
    if badge is None:
        badge = nbformat.v4.new_markdown_cell(metadata={"tags": ["colab-badge"]})
        nb.cells.insert(1, badge)
    badge.source = badge_source(path, cfg)
    setup = _find(nb, "setup")
    if setup is None:
        setup = nbformat.v4.new_code_cell(metadata={"tags": ["setup"]})
        nb.cells.insert(nb.cells.index(badge) + 1, setup)
    setup.source = setup_source(cfg)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)


def problems(path: Path, cfg: dict | None = None) -> list[str]:
    """What is wrong with a chapter, as sentences; empty when it is fine."""
    nb = nbformat.read(path, as_version=4)
    name, out = path.name, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count):
            out.append(f"{name}: cell {i} has outputs; chapters are committed without them (run `make sync`)")
    badge, setup = _find(nb, "colab-badge"), _find(nb, "setup")
    if badge is None or badge.source != badge_source(path, cfg):
        out.append(f"{name}: the Colab badge cell is missing or stale (run `make sync`)")
    if setup is None or setup.source != setup_source(cfg):
        out.append(f"{name}: the setup cell is missing or stale (run `make sync`)")
    exercises = [c for c in nb.cells if "exercise" in _tags(c)]
    solutions = [c for c in nb.cells if "solution" in _tags(c)]
    if len(exercises) < MIN_EXERCISES:
        out.append(f"{name}: {len(exercises)} exercise cells; every chapter has at least {MIN_EXERCISES}")
    if len(solutions) != len(exercises):
        out.append(f"{name}: {len(exercises)} exercise cells but {len(solutions)} solution cells")
    for c in exercises:
        if not {"raises-exception", "remove-output"} <= set(_tags(c)) or c.cell_type != "code":
            out.append(f"{name}: exercise cell {c.source[:40]!r} must be code tagged raises-exception "
                       "and remove-output")
    for c in solutions:
        if "hide-input" not in _tags(c) or c.cell_type != "code":
            out.append(f"{name}: solution cell {c.source[:40]!r} must be code tagged hide-input")
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
