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


# --------------------------------------------------------------------------- Colab links, search, layout

CONFIG = """\
title: t
repository:
  # the one place the address is written
  url: https://github.com/owner/course   # a comment
  path_to_book: ""
  branch: main
launch_buttons:
  colab_url: https://colab.research.google.com
html:
  use_repository_button: true
"""
COLAB = "https://colab.research.google.com/github/owner/course/blob/main/"
BADGE = '<p><a class="reference external" href="{href}"><img alt="Open in Colab" src="https://colab.research.google.com/assets/colab-badge.svg" /></a></p>'
LAUNCH = ('<ul class="dropdown-menu"><li><a href="{href}" target="_blank" class="btn btn-sm dropdown-item" '
          'title="Launch on Colab"><span class="btn__text-container">Colab</span></a></li></ul>')
REPO_BUTTON = ('<a href="{href}" class="btn btn-sm btn-source-repository-button dropdown-item" '
               'title="Source repository">Repository</a>')


def test_read_repository(tmp_path: Path) -> None:
    (tmp_path / "_config.yml").write_text(CONFIG)
    repo = check_site.read_repository(tmp_path / "_config.yml")
    assert repo == check_site.Repository("https://github.com/owner/course", "main", "",
                                         "https://colab.research.google.com")
    assert repo.colab("chapters/01_a.ipynb") == COLAB + "chapters/01_a.ipynb"
    assert check_site.Repository("https://github.com/o/r", "dev", "book/").colab("x.ipynb") == \
        "https://colab.research.google.com/github/o/r/blob/dev/book/x.ipynb"
    (tmp_path / "none.yml").write_text("title: t\nrepository:\n  branch: main\n")
    assert check_site.read_repository(tmp_path / "none.yml") is None
    # the project's own configuration is readable, and names the repository the tests check
    own = check_site.read_repository(ROOT / "_config.yml")
    assert own is not None and own.url.startswith("https://github.com/") and own.branch


@pytest.fixture()
def launch_site(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "src"
    (source / "chapters").mkdir(parents=True)
    (source / "_config.yml").write_text(CONFIG)
    for name in ("01_one", "02_two", "03_three", "04_four"):
        (source / "chapters" / f"{name}.ipynb").write_text('{"cells": [], "metadata": {}}')
    site = tmp_path / "html"
    (site / "chapters").mkdir(parents=True)
    (site / "index.html").write_text(page(
        "<p>Start with <a href='" + COLAB + "chapters/01_one.ipynb'>chapter 1 in Colab</a>, "
        "not <a href='" + COLAB + "chapters/99_gone.ipynb'>a chapter that is gone</a>.</p>"))
    good = COLAB + "chapters/01_one.ipynb"
    (site / "chapters" / "01_one.html").write_text(page(
        REPO_BUTTON.format(href="https://github.com/owner/course") + LAUNCH.format(href=good)
        + "<h1>1. One</h1>" + BADGE.format(href=good)))
    (site / "chapters" / "02_two.html").write_text(page(   # badge of another chapter, launch on a fork
        REPO_BUTTON.format(href="https://github.com/someone/fork")
        + LAUNCH.format(href="https://colab.research.google.com/github/someone/fork/blob/main/chapters/02_two.ipynb")
        + "<h1>2. Two</h1>" + BADGE.format(href=COLAB + "chapters/01_one.ipynb")))
    (site / "chapters" / "03_three.html").write_text(page(  # no launch button, badge on another branch
        "<h1>3. Three</h1>" + BADGE.format(
            href="https://colab.research.google.com/github/owner/course/blob/dev/chapters/03_three.ipynb")))
    (site / "chapters" / "04_four.html").write_text(page(LAUNCH.format(href=COLAB + "chapters/04_four.ipynb")
                                                        + "<h1>4. Four</h1>"))   # no badge
    (source / "instructor").mkdir()
    (source / "instructor" / "notes.ipynb").write_text('{"cells": [], "metadata": {}}')
    (site / "instructor").mkdir()
    (site / "instructor" / "notes.html").write_text(page(   # a notebook page outside the chapters
        LAUNCH.format(href=COLAB + "instructor/notes.ipynb") + "<h1>Notes</h1>"))
    return site, source


def test_colab_badges_and_launch_buttons(launch_site) -> None:
    site, source = launch_site
    reports, problems = check_site.check_site(site, browser=False, source=source, log=lambda *a: None)
    assert problems == []
    assert messages(reports, "chapters/01_one.html")[0] == []
    assert next(r for r in reports if r.page == "chapters/01_one.html").facts["colab"] == "badge 1, launch 1"
    fails = messages(reports, "chapters/02_two.html")[0]
    assert len(fails) == 3, fails
    assert any("repository button points at 'https://github.com/someone/fork'" in f for f in fails)
    assert any("the Colab launch button opens" in f and "someone/fork" in f
               and "chapters/02_two.ipynb'" in f for f in fails)
    assert any("the Colab badge opens" in f and "01_one.ipynb" in f for f in fails)
    fails = messages(reports, "chapters/03_three.html")[0]
    assert any("the Colab badge opens" in f and "/blob/dev/" in f for f in fails), fails
    assert any("no Colab launch button" in f for f in fails) and len(fails) == 2, fails
    fails = messages(reports, "chapters/04_four.html")[0]
    assert fails == [f"launch: no 'Open in Colab' badge linking to {COLAB}chapters/04_four.ipynb"]
    # a notebook page outside chapters/ needs its launch button, not the chapters' badge
    assert messages(reports, "instructor/notes.html")[0] == []
    fails = messages(reports, "index.html")[0]    # not a chapter: its Colab links must exist
    assert len(fails) == 1 and "chapters/99_gone.ipynb, which is not a notebook of the book" in fails[0]


def test_a_config_without_repository_is_a_site_problem(launch_site, tmp_path: Path) -> None:
    site, source = launch_site
    (tmp_path / "bare.yml").write_text("title: t\n")
    _, problems = check_site.check_site(site, browser=False, source=source, config=tmp_path / "bare.yml",
                                        log=lambda *a: None)
    assert len(problems) == 1 and "names no repository" in problems[0]


def test_search_terms_are_distinctive() -> None:
    titles = {"intro.html": "Making transformer inference fast on GPUs",
              "chapters/01.html": "1. GPU architecture",
              "chapters/06.html": "6. The KV cache",
              "chapters/09.html": "9. A fast decoder, end to end",
              "chapters/10.html": "10. Beyond one GPU",
              "x.html": "The end"}
    assert check_site.search_terms(titles) == {
        "intro.html": "transformer", "chapters/01.html": "architecture", "chapters/06.html": "cache",
        "chapters/09.html": "decoder", "chapters/10.html": "Beyond", "x.html": None}


# A search page with the DOM contract of Sphinx's searchtools.js: it reads ?q=, and after a while
# lists its results as <ul class="search"><li><a href=...> and writes the summary line last.
SEARCH_PAGE = """<div id="search-results"></div><script>
const INDEX = {alpha: ['chapters/a.html?highlight=alpha#top'], beta: ['intro.html'], slow: null};
const q = new URLSearchParams(location.search).get('q').toLowerCase();
setTimeout(() => {
  if (INDEX[q] === null) return;                 // an index that never loads
  const out = document.getElementById('search-results');
  const list = out.appendChild(document.createElement('ul')); list.className = 'search';
  for (const href of INDEX[q] || []) {
    const a = list.appendChild(document.createElement('li')).appendChild(document.createElement('a'));
    a.setAttribute('href', href); a.textContent = href;
  }
  const p = out.appendChild(document.createElement('p')); p.className = 'search-summary';
  p.innerText = 'Search finished, found ' + (INDEX[q] || []).length + ' page(s) matching the search query.';
}, 300);
</script>"""


@pytest.fixture(scope="module")
def search_site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("searchsite")
    (root / "chapters").mkdir()
    (root / "index.html").write_text(page("", '<meta http-equiv="Refresh" content="0; url=intro.html" />'))
    (root / "intro.html").write_text(page("<h1>Intro</h1><p>x</p>"))
    (root / "search.html").write_text(page(SEARCH_PAGE))
    (root / "chapters" / "a.html").write_text(page('<h1 id="top">1. Alpha<a class="headerlink" href="#top">#</a></h1>'))
    (root / "chapters" / "b.html").write_text(page("<h1>2. Beta</h1>"))       # search finds intro instead
    (root / "chapters" / "c.html").write_text(page("<h1>3. Slow</h1>"))       # the search never finishes
    return root


@needs_chromium
def test_search_finds_each_page_by_a_title_word(search_site: Path) -> None:
    reports, _ = check_site.check_site(search_site, log=lambda *a: None, timeout=5)
    assert messages(reports, "chapters/a.html")[0] == []
    assert next(r for r in reports if r.page == "chapters/a.html").facts["search"] == "'Alpha': 1 results"
    fails = messages(reports, "chapters/b.html")[0]
    assert fails == ["search: searching 'Beta' (a word of the title '2. Beta') does not find this page; "
                     "it finds ['intro.html']"], fails
    fails = messages(reports, "chapters/c.html")[0]
    assert fails == ["search: search.html?q=Slow showed no result in time (the search index did not load)"], fails
    assert "search" not in next(r for r in reports if r.page == "index.html").facts   # a redirect


@needs_chromium
def test_search_page_missing(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(page("<h1>Home</h1>"))
    _, problems = check_site.check_site(tmp_path, log=lambda *a: None, timeout=10)
    assert "search: the site has no search.html" in problems


WIDE_TABLE = ("<table><tr>" + "".join(f"<td>column{i:02d}</td>" for i in range(30)) + "</tr></table>")


@needs_chromium
def test_layout_wide_content_must_scroll_inside_the_column(tmp_path: Path) -> None:
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "wide.png").write_bytes(png(2000, 10))
    style = "<style>body{margin:0} article{max-width:700px;margin:0 auto}</style>"
    (tmp_path / "index.html").write_text(page(
        "<main><article><h1>Bad</h1><p>text</p>" + WIDE_TABLE
        + '<div style="overflow:hidden">' + WIDE_TABLE.replace("column", "clipped") + "</div></article></main>",
        style))
    (tmp_path / "good.html").write_text(page(
        '<main><article><h1>Good</h1><div style="overflow-x:auto">' + WIDE_TABLE + "</div>"
        '<img src="_images/wide.png" alt="A wide figure." style="max-width:100%"></article></main>', style))
    (tmp_path / "image.html").write_text(page(
        '<main><article><h1>Image</h1><img src="_images/wide.png" alt="A wide figure."></article></main>', style))
    reports, _ = check_site.check_site(tmp_path, log=lambda *a: None, timeout=20, search=False)
    fails = messages(reports, "index.html")[0]
    assert any(f.startswith("layout: at 1280 px a table") and "column00" in f for f in fails), fails
    assert any(f.startswith("layout: at 390 px (a phone) a table") and "clipped00" in f for f in fails), fails
    assert all(f.startswith("layout:") for f in fails), fails
    assert messages(reports, "good.html")[0] == []
    fails = messages(reports, "image.html")[0]
    assert len(fails) == 2 and all("a img" in f for f in fails), fails


@needs_chromium
def test_screenshots_at_desktop_and_phone_width(site: Path, tmp_path: Path) -> None:
    check_site.check_site(site, pages=["chapters/ch.html"], log=lambda *a: None, timeout=20,
                          screenshots=tmp_path, search=False)
    desktop, phone = tmp_path / "chapters__ch.png", tmp_path / "chapters__ch.phone.png"
    width = lambda p: struct.unpack(">I", p.read_bytes()[16:20])[0]   # noqa: E731
    assert width(desktop) == 1280
    assert width(phone) == 390 * check_site.PHONE["deviceScaleFactor"]
