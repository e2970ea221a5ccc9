"""tools/check_site.py finds what it is meant to find, on a small site made here.

The HTML checks run everywhere; the browser checks need Chromium (Debian's chromium,
which .ci/run installs), and the formula checks also need the MathJax that `make book`
stages in tools/mathjax/static/mathjax/.
"""
from __future__ import annotations

import importlib.util
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_site", ROOT / "tools" / "check_site.py")
check_site = importlib.util.module_from_spec(_spec)
sys.modules["check_site"] = check_site  # dataclasses look their module up
_spec.loader.exec_module(check_site)

MATHJAX = ROOT / "tools" / "mathjax" / "static" / "mathjax"
needs_chromium = pytest.mark.skipif(check_site.find_chromium(None) is None,
                                    reason="no Chromium (apt-get install -y chromium)")
needs_mathjax = pytest.mark.skipif(not (MATHJAX / "tex-mml-chtml.js").is_file(),
                                   reason="MathJax not staged yet (make book stages it)")


def png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title>{head}</head><body>{body}</body></html>"


SOLUTION = """
<p><strong>Exercise 1.{n}</strong> — do it.</p>
<div class="cell tag_solution tag_hide-input docutils container" id="sol{n}">
{input}
{output}
</div>"""
FOLDED_INPUT = ('<details class="hide above-input"><summary>Show code cell source</summary>'
                '<div class="cell_input docutils container"><pre>answer = 42</pre></div></details>')
OPEN_INPUT = '<div class="cell_input docutils container"><pre>answer = 42</pre></div>'
FOLDED_OUTPUT = ('<details class="hide below-input"><summary>Show code cell output</summary>'
                 '<div class="cell_output docutils container"><pre>correct: 42</pre></div></details>')
OPEN_OUTPUT = '<div class="cell_output docutils container"><pre>correct: 42</pre></div>'


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "_images").mkdir()
    (root / "_images" / "good.png").write_bytes(png())
    (root / "_images" / "empty.png").write_bytes(b"")
    (root / "_images" / "fake.png").write_bytes(b"<html>not found</html>")
    (root / "_images" / "ok.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    (root / "chapters").mkdir()
    (root / "index.html").write_text(page("", '<meta http-equiv="Refresh" content="0; url=intro.html" />'))
    (root / "intro.html").write_text(page(
        '<h1 id="top">Intro</h1>'
        '<p><a href="chapters/ch.html#sec">ok</a> <a href="#top">ok</a> <a href="chapters/">dir</a>'
        ' <a href="https://example.org/x">external</a> <a href="mailto:a@b.c">mail</a></p>'
        '<p><a href="chapters/ch.html#nope">bad anchor</a> <a href="missing.html">bad page</a></p>'
        '<img src="_images/good.png" alt="A red square."><img src="_images/ok.svg" alt="Nothing.">'
        '<img src="_images/empty.png" alt="e"><img src="_images/fake.png" alt="f"><img src="_images/gone.png" alt="g">'
        '<p>Plain text with leftover TeX: $$x^2$$ and \\(y\\) and \\text{BLOCK}.</p>'
        '<pre>code may say $$ and \\begin{x}</pre>',
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'))
    (root / "chapters" / "index.html").write_text(page("<p>dir index</p>"))
    (root / "chapters" / "ch.html").write_text(page(
        '<h2 id="sec">Section</h2><p><a href="../intro.html#top">back</a></p>'
        + SOLUTION.format(n=1, input=FOLDED_INPUT, output=FOLDED_OUTPUT)
        + SOLUTION.format(n=2, input=FOLDED_INPUT, output="")
        + SOLUTION.format(n=3, input=OPEN_INPUT, output="")
        + SOLUTION.format(n=4, input=FOLDED_INPUT, output=OPEN_OUTPUT)
        + '<p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>'))
    return root


def messages(reports, name: str) -> tuple[list[str], list[str]]:
    report = next(r for r in reports if r.page == name)
    return report.failures, report.warnings


def test_image_problem(site: Path) -> None:
    images = site / "_images"
    assert check_site.image_problem(images / "good.png") is None
    assert check_site.image_problem(images / "ok.svg") is None
    assert check_site.image_problem(images / "empty.png") == "empty file"
    assert check_site.image_problem(images / "fake.png") == "not a PNG"
    assert check_site.image_problem(images / "gone.png") == "missing"


def test_html_checks(site: Path) -> None:
    reports, _ = check_site.check_site(site, browser=False, log=lambda *a: None)
    assert {r.page for r in reports} == {"index.html", "intro.html", "chapters/index.html", "chapters/ch.html"}
    fails, warns = messages(reports, "intro.html")
    text = "\n".join(fails)
    assert "no id 'nope' in chapters/ch.html" in text
    assert "'missing.html'" in text and "does not exist" in text
    assert "_images/empty.png is empty file" in text
    assert "_images/fake.png is not a PNG" in text
    assert "_images/gone.png" in text
    assert "mathjax@3" in text and "CDN" in text
    assert not any("good.png" in f or "ok.svg" in f or "'#top'" in f or "example.org" in f for f in fails)
    assert len(fails) == 6, fails
    assert messages(reports, "index.html") == ([], [])
    assert messages(reports, "chapters/ch.html") == ([], [])


def test_content_figures_need_alt_text(tmp_path: Path) -> None:
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "fig.png").write_bytes(png())
    header = '<header><img src="_images/fig.png"></header>'  # the theme's logo: not the content
    (tmp_path / "index.html").write_text(page(
        header + '<main><article>'
        '<img src="_images/fig.png">'                                  # none
        '<img src="_images/fig.png" alt=" ">'                          # empty
        '<img src="_images/fig.png" alt="_images/fig.png">'            # docutils' default
        '<p><img src="_images/fig.png" alt="fig.png"></p>'             # its file name
        '</article></main>'))
    (tmp_path / "good.html").write_text(page(
        header + '<main><article>'
        '<img src="_images/fig.png" alt="Time against problem size: the kernel follows the copy bandwidth.">'
        '</article></main>'))
    reports, _ = check_site.check_site(tmp_path, browser=False, log=lambda *a: None)
    fails, _ = messages(reports, "index.html")
    assert [f.split(" (")[0] for f in fails] == [
        "figure: _images/fig.png has no alt text",
        "figure: _images/fig.png has empty alt text",
        "figure: _images/fig.png has only its file name as alt text",
        "figure: _images/fig.png has only its file name as alt text",
    ], fails
    assert all("mystnb: image: alt:" in f for f in fails)
    assert messages(reports, "good.html") == ([], [])


def test_alt_text_scope_falls_back_to_main_then_page(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(page(
        '<nav><img src="data:," alt=""></nav><main><img src="data:,"></main>'))
    (tmp_path / "bare.html").write_text(page('<img src="data:,">'))
    reports, _ = check_site.check_site(tmp_path, browser=False, log=lambda *a: None)
    assert ["has no alt text" in f for f in messages(reports, "index.html")[0]] == [True]
    assert ["has no alt text" in f for f in messages(reports, "bare.html")[0]] == [True]


@pytest.fixture(scope="module")
def browser_reports(site: Path):
    return check_site.check_site(site, log=lambda *a: None, timeout=20)[0]


@needs_chromium
def test_browser_finds_raw_tex_and_broken_figures(browser_reports) -> None:
    fails, warns = messages(browser_reports, "intro.html")
    text = "\n".join(fails)
    for tex in ("'$$'", "'\\\\('", "'\\\\text'"):
        assert f"raw TeX {tex}" in text, (tex, text)
    assert "begin" not in text  # code is not prose
    for name in ("empty.png", "fake.png", "gone.png"):
        assert f"figure: _images/{name} did not load in the browser" in text
    assert "request: _images/gone.png answered 404" in text
    assert "CDN: the page requested MathJax from https://cdn.jsdelivr.net/npm/mathjax@3" in text


@needs_chromium
def test_browser_checks_solutions_and_math(browser_reports) -> None:
    fails, warns = messages(browser_reports, "chapters/ch.html")
    text = "\n".join(fails)
    assert "solution cell 3 (Exercise 1.3): the code is visible" in text
    assert "solution cell 4 (Exercise 1.4): its output is visible: 'correct: 42'" in text
    assert "MathJax did not load" in text and "not typeset: \\(x^2\\)" in text
    assert not any("cell 1 " in f or "cell 2 " in f for f in fails)
    assert sum("solution" in f for f in fails) == 2, fails


@needs_chromium
def test_visible_solution_outputs_can_be_report_only(site: Path) -> None:
    reports, _ = check_site.check_site(site, pages=["chapters/ch.html"], log=lambda *a: None,
                                       allow_visible_solution_outputs=True, timeout=20)
    fails, warns = messages(reports, "chapters/ch.html")
    assert any("cell 3 (Exercise 1.3): the code is visible" in f for f in fails)
    assert not any("output is visible" in f for f in fails)
    assert any("cell 4 (Exercise 1.4): its output is visible" in w for w in warns)


@needs_chromium
@needs_mathjax
def test_browser_checks_formulas(tmp_path: Path) -> None:
    shutil.copytree(MATHJAX, tmp_path / "_static" / "mathjax")
    head = ('<script>window.MathJax = {options: {processHtmlClass: "math"}};</script>'
            '<script defer src="_static/mathjax/tex-mml-chtml.js"></script>')
    math = '<p><span class="math notranslate nohighlight">\\({}\\)</span></p>'
    (tmp_path / "index.html").write_text(page(
        "<p>fine</p>" + math.format("\\frac{M}{\\text{BLOCK}}")
        + math.format("\\text{BLOCK\\_M}") + math.format("\\nosuchmacro{x}") + math.format("\\frac{x}"),
        head))
    reports, _ = check_site.check_site(tmp_path, log=lambda *a: None, timeout=30)
    fails, _ = messages(reports, "index.html")
    text = "\n".join(fails)
    assert reports[0].facts["formulas"] == 4
    assert 'renders a literal backslash: "BLOCK\\_M" in  \\text{BLOCK\\_M}' in text
    assert "undefined macro \\nosuchmacro" in text
    assert "MathJax error" in text and "\\frac{x}" in text
    assert "\\frac{M}{\\text{BLOCK}}" not in text


def test_mathjax_cdn_urls() -> None:
    assert check_site.is_mathjax_cdn("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js")
    assert check_site.is_mathjax_cdn("//cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js?config=x")
    assert not check_site.is_mathjax_cdn("https://docs.mathjax.org/en/latest/")  # a link, not code
