"""Check the built website in a real headless browser.

Usage (after ``make book``)::

    make check-site                                  # = python tools/check_site.py _build/html
    python tools/check_site.py _build/html --screenshots /tmp/shots   # PNGs per page: 1280 px, 390 px
    python tools/check_site.py _build/html --allow-visible-solution-outputs

Every page of the site (the root page, every chapter, the glossary) is opened in
Debian's Chromium (``/usr/bin/chromium``; ``apt-get install -y chromium``, or
``--chromium PATH`` / ``$CHROMIUM``), served from a local ``http.server`` on
127.0.0.1 and driven over the DevTools protocol (``--remote-debugging-pipe``). Every
host but 127.0.0.1 is unreachable for the browser, as in a workshop room without
network. For each page it checks:

- formulas: MathJax 3 loaded from the site itself, every formula of the page typeset
  (``mjx-container``), no MathJax error, no undefined macro, no literal backslash in
  ``\\text{}``, and no raw TeX (``$$``, ``\\(``, ``\\text{``, ``\\begin``, ...) left in the
  visible text outside code;
- figures: every ``img`` loaded in the browser (``naturalWidth > 0``) and every image
  file the page references present, non-empty and a PNG, SVG, JPEG or GIF; every ``img``
  of the page's content (its ``<article>``, else its ``<main>``, else the whole page: not
  the theme's header and sidebars) has alt text — not none, not empty, and not its own file
  name, which is what docutils writes when a notebook gives none (a chapter's figure gets
  it from its cell's metadata, ``mystnb: image: alt:``);
- solutions: every cell tagged ``solution`` (as many as the chapter's notebook has)
  has its input folded in a closed toggle and no visible output;
- links: every ``href``/``src`` to a file of the site exists, and so does every
  ``#anchor`` (an element with that id) of the site's pages; no local request fails;
- no CDN: no MathJax script from outside the site named in the HTML or requested;
- Colab: on a page made from a notebook of the book's sources the Colab launch button, and on
  a chapter (``chapters/``) the "Open in Colab" badge too, are there and open that page's own
  notebook in the repository, branch and ``path_to_book`` of ``_config.yml``
  (``https://colab.research.google.com/github/OWNER/REPO/blob/BRANCH/chapters/NN_....ipynb``);
  any other Colab link opens a notebook that exists; the repository and issue buttons point at
  that repository;
- search: ``search.html?q=WORD`` finds the page, for a distinctive word of its title (the one
  the fewest other titles share), once Sphinx's search index has loaded;
- layout: at 1280 px and at a phone's 390 px no table, display formula, figure or output sticks
  out of the text column unless it scrolls sideways inside it (in a box with overflow-x auto or
  scroll that ends inside the column); ``--screenshots`` saves both widths.

Warnings (reported, never failed): other requests that leave 127.0.0.1 (they fail
without network), JavaScript errors of the page, and display formulas wider than the
text column (in a 1280 px window).

It prints one report per page and exits 1 if any check failed (2 if it could not
run). ``--allow-visible-solution-outputs`` turns the "solution output visible" check
into a warning (report-only), e.g. for a chapter in progress; CI does not use it.
Only the standard library is used.
"""
from __future__ import annotations

import argparse
import fcntl
import fnmatch
import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    # Nothing but the local server is reachable: a CDN request fails at once (and is reported).
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
# Pages Sphinx generates that are not course pages: their links are checked, not opened.
GENERATED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", ".doctrees", "_panels_static"}
# TeX that must never be visible as text (outside code): MathJax did not typeset it.
RAW_TEX = re.compile(
    r"\$\$|\\\(|\\\)|\\\[|\\\]|\\(?:text|begin|end|frac|mathrm|mathbf|operatorname|sqrt|cdot|times|sum|left|right)\b"
)
# An absolute URL that names MathJax: the site must use its own copy in _static/mathjax/.
CDN_MATHJAX = re.compile(r"""(?:https?:)?//[^\s"'<>]*mathjax[^\s"'<>]*""", re.I)
CDN_HOST = re.compile(r"^(?:https?:)?//[^/]*(?:cdn|jsdelivr|unpkg|jspm|esm\.sh)", re.I)


def is_mathjax_cdn(url: str) -> bool:
    """An absolute URL of MathJax code (a link to MathJax's documentation is not)."""
    return bool(CDN_MATHJAX.fullmatch(url)) and (CDN_HOST.match(url) is not None or ".js" in url)


# --------------------------------------------------------------------------- report

@dataclass
class PageReport:
    page: str
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    external: set[str] = field(default_factory=set)  # resources named from outside the site

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)


def short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------- static checks

class _PageParser(html.parser.HTMLParser):
    """Collects ids, references and scripts of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, url)
        self.scripts: list[str] = []
        self.refresh: str | None = None
        # Every <img>: (src, alt or None when absent, inside an <article>, inside a <main>).
        self.images: list[tuple[str, str | None, bool, bool]] = []
        self.has_article = self.has_main = False
        self._depth = {"article": 0, "main": 0}
        # The page's title (its first <h1>, without the heading's "#" link) and its links:
        # (href, class, title attribute, alt text of an <img> inside the link).
        self.h1: str | None = None
        self._h1_parts: list[str] | None = None
        self._headerlink = 0
        self.links: list[dict[str, str]] = []
        self._link: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a_ = {k: (v or "") for k, v in attrs}
        if tag == "h1" and self.h1 is None and self._h1_parts is None:
            self._h1_parts = []
        if tag == "a":
            if self._h1_parts is not None and "headerlink" in a_.get("class", "").split():
                self._headerlink += 1
            self._link = {"href": a_.get("href", ""), "class": a_.get("class", ""),
                          "title": a_.get("title", ""), "img_alt": "", "img_src": ""}
            self.links.append(self._link)
        if tag == "img" and self._link is not None:
            self._link["img_alt"], self._link["img_src"] = a_.get("alt", ""), a_.get("src", "")
        if tag in self._depth:
            self._depth[tag] += 1
            self.has_article |= tag == "article"
            self.has_main |= tag == "main"
        if tag == "img":
            alt = next((v or "" for k, v in attrs if k == "alt"), None)
            src = next((v or "" for k, v in attrs if k == "src"), "")
            self.images.append((src, alt, self._depth["article"] > 0, self._depth["main"] > 0))
        a = {k: (v or "") for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "name" in a:
            self.ids.add(a["name"])
        for attr in ("href", "src"):
            if attr in a and tag in ("a", "link", "img", "script", "source", "iframe", "area"):
                self.refs.append((tag, attr, a[attr]))
        if tag == "script" and "src" in a:
            self.scripts.append(a["src"])
        if tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            m = re.search(r"url=(.+)", a.get("content", ""), re.I)
            if m:
                self.refresh = m.group(1).strip().strip("'\"")
                self.refs.append(("meta", "refresh", self.refresh))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._depth and self._depth[tag] > 0:
            self._depth[tag] -= 1
        if tag == "a":
            self._link = None
            if self._headerlink:
                self._headerlink -= 1
        if tag == "h1" and self._h1_parts is not None:
            self.h1 = " ".join("".join(self._h1_parts).split())
            self._h1_parts = None

    def handle_data(self, data: str) -> None:
        if self._h1_parts is not None and not self._headerlink:
            self._h1_parts.append(data)

    def content_images(self) -> list[tuple[str, str | None]]:
        """(src, alt) of the images of the page's content: its <article>s, else its <main>,
        else the whole page (the theme's logo and header are outside both)."""
        if self.has_article:
            return [(src, alt) for src, alt, in_article, _ in self.images if in_article]
        if self.has_main:
            return [(src, alt) for src, alt, _, in_main in self.images if in_main]
        return [(src, alt) for src, alt, _, _ in self.images]


@functools.lru_cache(maxsize=None)
def parse_page(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return parser


def image_problem(path: Path) -> str | None:
    """Why an image file is not a usable figure, or None."""
    if not path.is_file():
        return "missing"
    data = path.read_bytes()
    if not data:
        return "empty file"
    suffix = path.suffix.lower()
    if suffix == ".png":
        if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
            return "not a PNG"
        width, height = struct.unpack(">II", data[16:24])
        if width == 0 or height == 0:
            return f"PNG of {width}x{height} pixels"
        return None
    if suffix == ".svg":
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            return f"SVG does not parse ({exc})"
        if not root.tag.endswith("svg"):
            return f"SVG root element is <{root.tag}>"
        return None
    if suffix in (".jpg", ".jpeg"):
        return None if data.startswith(b"\xff\xd8") else "not a JPEG"
    if suffix == ".gif":
        return None if data[:6] in (b"GIF87a", b"GIF89a") else "not a GIF"
    return None


def alt_problem(src: str, alt: str | None) -> str | None:
    """Why an image's alt text does not describe it, or None."""
    if alt is None:
        return "has no alt text"
    text = alt.strip()
    if not text:
        return "has empty alt text"
    path = urllib.parse.unquote(urllib.parse.urlsplit(src).path)
    if text in (src, path, path.rsplit("/", 1)[-1]):
        # docutils' default when none is given: a notebook's image output gets its file's path.
        return "has only its file name as alt text"
    return None


def local_target(site: Path, page: str, url: str) -> tuple[Path, str] | None:
    """The file and the fragment a local URL of `page` points to; None if not local."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith("//"):
        return None
    path = urllib.parse.unquote(parts.path)
    if path:
        target = (site / page).parent / path
    else:
        target = site / page
    if path.endswith("/") or (target.is_dir() and not path == ""):
        target = target / "index.html"
    return target.resolve(), urllib.parse.unquote(parts.fragment)


def check_static(site: Path, page: str, report: PageReport) -> None:
    """Links, anchors, image files and CDN references, from the HTML file itself."""
    parsed = parse_page(site / page)
    site_root = site.resolve()
    for tag, attr, url in parsed.refs:
        if url.startswith(("data:", "mailto:", "javascript:", "tel:")):
            continue
        loc = local_target(site, page, url)
        if loc is None:
            if tag in ("script", "img", "iframe", "link", "source"):
                report.external.add(f"<{tag} {attr}={url}>")
            continue
        target, fragment = loc
        if site_root not in target.parents and target != site_root:
            report.fail(f"link: <{tag} {attr}={url!r}> points outside the site")
            continue
        if not target.exists():
            report.fail(f"link: <{tag} {attr}={url!r}> → {target.relative_to(site_root)} does not exist")
            continue
        if tag == "img":
            problem = image_problem(target)
            if problem:
                report.fail(f"figure: {url} is {problem}")
        if fragment and target.suffix == ".html" and fragment not in parse_page(target).ids:
            report.fail(f"link: <a href={url!r}>: no id {fragment!r} in {target.relative_to(site_root)}")
    for src, alt in parsed.content_images():
        problem = alt_problem(src, alt)
        if problem:
            report.fail(f"figure: {short(src, 90)} {problem} (a chapter's figure: "
                        f"its cell's metadata mystnb: image: alt:)")
    text = (site / page).read_text(encoding="utf-8", errors="replace")
    for url in sorted(u for u in set(CDN_MATHJAX.findall(text)) if is_mathjax_cdn(u)):
        report.fail(f"CDN: the HTML names {url!r} (MathJax must come from _static/mathjax/)")


# --------------------------------------------------------------------------- the repository's links

@dataclass(frozen=True)
class Repository:
    """What _config.yml says about the repository: launch buttons and badges derive from it."""
    url: str                 # https://github.com/OWNER/REPO
    branch: str
    path_to_book: str = ""
    colab_url: str = "https://colab.research.google.com"

    @property
    def slug(self) -> str:
        return self.url.removeprefix("https://github.com/").removesuffix(".git").strip("/")

    def colab(self, notebook: str) -> str:
        """The Colab address of a notebook of the book (path relative to the book's root)."""
        path = "/".join(p for p in (self.path_to_book.strip("/"), notebook) if p)
        return f"{self.colab_url.rstrip('/')}/github/{self.slug}/blob/{self.branch}/{path}"


def _yaml_scalar(text: str) -> str:
    text = re.sub(r"\s+#.*$", "", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text


def read_repository(config: Path) -> Repository | None:
    """``repository:`` (url, branch, path_to_book) and ``launch_buttons: colab_url`` of a Jupyter
    Book ``_config.yml``, read with the standard library (two flat mappings); None without a url."""
    if not config.is_file():
        return None
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in config.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        top = re.match(r"^([A-Za-z_][\w-]*):\s*(.*)$", line)
        if top:
            current = top.group(1) if not _yaml_scalar(top.group(2)) else None
            continue
        inner = re.match(r"^\s+([A-Za-z_][\w-]*):\s*(.*)$", line)
        if current and inner:
            sections.setdefault(current, {})[inner.group(1)] = _yaml_scalar(inner.group(2))
    repo = sections.get("repository", {})
    if not repo.get("url"):
        return None
    colab = sections.get("launch_buttons", {}).get("colab_url") or Repository.colab_url
    return Repository(url=repo["url"].rstrip("/"), branch=repo.get("branch") or "main",
                      path_to_book=repo.get("path_to_book", ""), colab_url=colab)


def check_repository_links(site: Path, page: str, report: PageReport, repo: Repository | None,
                           source: Path) -> None:
    """Colab badges and launch buttons open this page's own notebook in the repository of
    _config.yml; every other Colab link opens a notebook that exists; the repository and issue
    buttons point at that repository."""
    if repo is None:
        return
    parsed = parse_page(site / page)
    notebook = page.removesuffix(".html") + ".ipynb"
    is_chapter = (source / notebook).is_file()
    colab_prefix = repo.colab_url.rstrip("/") + "/"
    badges = launch = 0
    for link in parsed.links:
        href = link["href"]
        classes = link["class"].split()
        if "btn-source-repository-button" in classes and href.rstrip("/") != repo.url:
            report.fail(f"launch: the repository button points at {href!r}, not {repo.url!r} (_config.yml)")
        if "btn-source-issues-button" in classes and not href.startswith(repo.url + "/issues"):
            report.fail(f"launch: the issues button points at {short(href, 90)!r}, not {repo.url}/issues")
        if not href.startswith(colab_prefix):
            continue
        is_badge = "colab-badge" in link["img_src"] or "open in colab" in link["img_alt"].lower()
        is_launch = "launch" in link["title"].lower() or "dropdown-item" in classes
        badges += is_badge
        launch += is_launch
        what = "the Colab badge" if is_badge else "the Colab launch button" if is_launch else "a Colab link"
        if is_chapter and (is_badge or is_launch):
            if href != repo.colab(notebook):
                report.fail(f"launch: {what} opens {href!r}; this page's notebook is {repo.colab(notebook)!r}")
            continue
        m = re.match(re.escape(colab_prefix) + r"github/([^/]+/[^/]+)/blob/([^/]+)/(.+?)(?:[?#].*)?$", href)
        if not m:
            report.fail(f"launch: {what} {href!r} does not open a notebook of a GitHub repository")
        elif m.group(1) != repo.slug or m.group(2) != repo.branch:
            report.fail(f"launch: {what} opens {m.group(1)}@{m.group(2)}, not {repo.slug}@{repo.branch} "
                        f"(_config.yml): {href!r}")
        else:
            path = m.group(3)
            if repo.path_to_book.strip("/"):
                path = path.removeprefix(repo.path_to_book.strip("/") + "/")
            if not (source / path).is_file():
                report.fail(f"launch: {what} opens {path}, which is not a notebook of the book: {href!r}")
    if is_chapter:
        report.facts["colab"] = f"badge {badges}, launch {launch}"
        # the chapters carry the badge (their first cell); other notebook pages (the instructor
        # pages) have the launch button only
        if not badges and page.startswith("chapters/"):
            report.fail(f"launch: no 'Open in Colab' badge linking to {repo.colab(notebook)}")
        if not launch:
            report.fail("launch: no Colab launch button (the rocket menu; _config.yml launch_buttons)")


def check_mathjax_files(site: Path) -> list[str]:
    """Problems of the MathJax copy in _static/mathjax/."""
    base = site / "_static" / "mathjax"
    problems = []
    main = base / "tex-mml-chtml.js"
    if not main.is_file() or main.stat().st_size < 100_000:
        problems.append(f"{main.relative_to(site)} is missing or truncated (make book installs it)")
    fonts = list((base / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    if not fonts:
        problems.append("_static/mathjax/output/chtml/fonts/woff-v2/ has no fonts")
    return problems


# --------------------------------------------------------------------------- the browser

class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="check-site-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # in the child: fd 3 reads the commands, fd 4 writes the replies
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # above 4 first, so 3 and 4 are free
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            preexec_fn=child_fds, close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 60) -> dict:
        with self._cond:
            self._next_id += 1
            cid = self._next_id
        msg = {"id": cid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while cid not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise RuntimeError(f"Chromium gave no reply to {method} "
                                       f"({'it exited' if self._closed else f'{timeout:.0f} s'})")
                self._cond.wait(left)
            reply = self._replies.pop(cid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(e.get("method") == method and e.get("sessionId") == session for e in self.events):
                    return True
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    return False
                self._cond.wait(left)

    def session_events(self, session: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e.get("sessionId") == session]

    def version(self) -> str:
        return self.send("Browser.getVersion").get("product", "?")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def stderr_tail(self, n: int = 2000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n:]


# Runs in the page once it has loaded: waits for MathJax and the images, then reports.
PAGE_CHECK_JS = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const out = {math: {}, images: [], solutions: [], rawTex: [], errors: []};
  const MJ = window.MathJax;
  const sources = Array.from(document.querySelectorAll('.math'));
  out.math.sourceElements = sources.length;
  out.math.scripts = Array.from(document.scripts).map((s) => s.src).filter((s) => /mathjax/i.test(s));
  if (MJ && MJ.startup && MJ.startup.promise) {
    try { await Promise.race([MJ.startup.promise, sleep(%(timeout_ms)d)]); }
    catch (e) { out.errors.push('MathJax startup failed: ' + e); }
    out.math.version = MJ.version || null;
  } else {
    out.math.version = null;
  }
  out.math.containers = document.querySelectorAll('mjx-container').length;
  out.math.untypeset = sources.filter((el) => !el.querySelector('mjx-container'))
                              .map((el) => el.textContent.trim().slice(0, 160));
  // Display formulas wider than the text column scroll sideways (at the window's width).
  out.math.wide = Array.from(document.querySelectorAll('mjx-container[display="true"]')).map((c) => {
    const box = c.closest('.math') || c.parentElement;
    const mml = c.querySelector('mjx-assistive-mml');
    return {width: c.scrollWidth, column: box.clientWidth, text: (mml || c).textContent.slice(0, 80)};
  }).filter((w) => w.width > w.column + 1);
  out.math.errorNodes = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error]'))
                              .map((el) => el.getAttribute('data-mjx-error') || el.textContent.slice(0, 120));
  // The typeset formulas themselves: errors, undefined macros (red \name), literal TeX in \text{}.
  out.math.problems = [];
  if (MJ && MJ.startup && MJ.startup.document) {
    for (const item of MJ.startup.document.math) {
      if (!item.root) { out.math.problems.push({tex: item.math, what: 'not compiled'}); continue; }
      item.root.walkTree((node) => {
        if (node.isKind('merror')) {
          out.math.problems.push({tex: item.math, what: 'MathJax error: ' +
            (node.attributes.get('data-mjx-error') || '')});
        } else if (node.isKind('mtext')) {
          const text = node.childNodes.map((c) => (c.getText ? c.getText() : '')).join('');
          const color = node.attributes.get('mathcolor');
          if (text.startsWith('\\') && color === 'red') {
            out.math.problems.push({tex: item.math, what: 'undefined macro ' + text});
          } else if (text.includes('\\')) {
            out.math.problems.push({tex: item.math, what: 'renders a literal backslash: "' + text + '"'});
          }
        }
      });
    }
  }
  // Images: make lazy ones load, wait, then look at what the browser decoded.
  const imgs = Array.from(document.images);
  imgs.forEach((img) => { img.loading = 'eager'; });
  await Promise.race([
    Promise.all(imgs.map((img) => img.complete ? null :
      new Promise((r) => { img.addEventListener('load', r); img.addEventListener('error', r); }))),
    sleep(%(timeout_ms)d)]);
  for (const img of imgs) {
    out.images.push({src: img.getAttribute('src'), complete: img.complete, width: img.naturalWidth});
  }
  // Visible text outside code and formulas: no raw TeX.
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight, .cell_input, .output.text_plain, .output.stream, .output.traceback';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const visible = (el) => el.checkVisibility ? el.checkVisibility({visibilityProperty: true}) : el.getClientRects().length > 0;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || !n.textContent.trim() || !visible(el)) continue;
    out.rawTex.push(n.textContent);
  }
  // Solution cells: input folded in a closed toggle, output not visible.
  const isShown = (el) => visible(el) && el.getBoundingClientRect().height > 0;
  document.querySelectorAll('.cell.tag_solution').forEach((cell, i) => {
    const input = cell.querySelector('.cell_input');
    const toggle = input && input.closest('details');
    const outputs = Array.from(cell.querySelectorAll('.cell_output'));
    const heading = (() => { let p = cell.previousElementSibling;
      for (let k = 0; p && k < 6; k++, p = p.previousElementSibling) {
        const m = p.textContent.match(/(Exercise|Solution)\s+[\d.]+/); if (m) return m[0]; }
      return ''; })();
    out.solutions.push({
      index: i, near: heading, id: cell.id || '',
      hasInput: !!input,
      inputInToggle: !!(toggle && cell.contains(toggle)),
      toggleOpen: !!(toggle && toggle.open),
      inputVisible: !!(input && isShown(input)),
      outputs: outputs.length,
      outputsVisible: outputs.filter(isShown).map((o) => o.innerText.trim().slice(0, 100)),
    });
  });
  out.title = document.title;
  return JSON.stringify(out);
})()
"""


# Layout at the window's width. The text column is the page's <article> (else <main>, else the
# body), cut at the window's right edge. A table, display formula, figure or output wider than
# the column must sit in a box that scrolls sideways itself (overflow-x auto or scroll) and
# ends inside the column: otherwise it either widens the whole page (which then scrolls
# sideways, dragging the text along) or is cut off by a clipping ancestor, unreadable.
LAYOUT_JS = r"""
(() => {
  const width = window.innerWidth;
  const page = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
  const root = document.querySelector('article') || document.querySelector('main') || document.body;
  const column = Math.min(width, root.getBoundingClientRect().right);
  const scroller = (el) => {
    for (let p = el.parentElement; p && p !== root.parentElement; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll') return p.getBoundingClientRect().right <= column + 1;
    }
    return false;
  };
  const out = [];
  const sel = 'table, mjx-container[display="true"], mjx-container[display="true"] > mjx-math, img, figure, '
            + 'svg, .cell_output, .output, p, li, dl, blockquote';
  for (const el of root.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || r.right <= column + 1 || scroller(el)) continue;
    if (out.some((o) => o.el.contains(el) || el.contains(o.el))) continue;
    if (el.closest('svg') && el.tagName.toLowerCase() !== 'svg') continue;
    const cls = typeof el.className === 'string' ? el.className.trim().split(/\s+/).filter(Boolean) : [];
    out.push({el, what: [el.tagName.toLowerCase(), ...cls.slice(0, 2)].join('.'), right: Math.round(r.right),
              text: (el.textContent || el.getAttribute('alt') || '').trim().slice(0, 60)});
  }
  return JSON.stringify({width, column: Math.round(column), page,
                         sticking: out.map(({el, ...o}) => o)});
})()
"""

# The search page, opened with ?q=TERM: wait for Sphinx's searchtools to load the index and
# finish (it writes a summary line last), then list the result links.
SEARCH_JS = r"""
(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const summary = () => document.querySelector('#search-results .search-summary');
  const deadline = Date.now() + %(timeout_ms)d;
  while (Date.now() < deadline && !(summary() && summary().innerText.trim())) await sleep(100);
  return JSON.stringify({
    index: typeof Search !== 'undefined' && !!Search.hasIndex && Search.hasIndex(),
    status: summary() ? summary().innerText.trim() : null,
    links: Array.from(document.querySelectorAll('#search-results ul.search li > a'))
                .map((a) => a.getAttribute('href')),
  });
})()
"""

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
STOPWORDS = set("""a an and are as at be but by for from if in into is it its near no not of on one or
such that the their then there these they this to two was will with end""".split())


def search_terms(titles: dict[str, str]) -> dict[str, str | None]:
    """A word to search for per page: the word of its title (``<h1>``) that the fewest other
    titles share, the longest among those; None for a page without a usable word."""
    words = {page: [w for w in re.findall(r"[A-Za-z][A-Za-z0-9]+", title)
                    if len(w) >= 3 and w.lower() not in STOPWORDS]
             for page, title in titles.items()}
    counts: dict[str, int] = {}
    for ws in words.values():
        for w in {w.lower() for w in ws}:
            counts[w] = counts.get(w, 0) + 1
    return {page: (min(ws, key=lambda w: (counts[w.lower()], -len(w))) if ws else None)
            for page, ws in words.items()}


def _open(browser: Browser, url: str, timeout: float) -> tuple[str, str]:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Page.navigate", {"url": url}, session=session)
    browser.wait_event("Page.loadEventFired", session, timeout)
    return target, session


def check_search(browser: Browser, base_url: str, page: str, term: str, title: str,
                 report: PageReport, timeout: float) -> None:
    """search.html?q=TERM lists ``page`` among its results."""
    target, session = _open(browser, f"{base_url}search.html?q={urllib.parse.quote(term)}", timeout)
    try:
        res = browser.send("Runtime.evaluate", {"expression": SEARCH_JS % {"timeout_ms": int(timeout * 1000)},
                                                "awaitPromise": True, "returnByValue": True},
                           session=session, timeout=timeout + 10)
    finally:
        try:
            browser.send("Target.closeTarget", {"targetId": target}, timeout=10)
        except RuntimeError:
            pass
    if "exceptionDetails" in res:
        report.fail(f"search: the search page's script failed: {res['exceptionDetails'].get('text')}")
        return
    judge_search(json.loads(res["result"]["value"]), page, term, title, report)


def judge_search(result: dict, page: str, term: str, title: str, report: PageReport) -> None:
    found = [urllib.parse.unquote(urllib.parse.urlsplit(h or "").path).lstrip("./") for h in result["links"]]
    report.facts["search"] = f"{term!r}: {len(found)} results"
    if not result.get("status"):
        report.fail(f"search: search.html?q={term} showed no result in time"
                    + ("" if result.get("index") else " (the search index did not load)"))
    elif page not in found:
        report.fail(f"search: searching {term!r} (a word of the title {short(title, 60)!r}) does not find "
                    f"this page; it finds {found[:5] or 'nothing'}")


def judge_layout(layout: dict, label: str, report: PageReport) -> None:
    """Fails a page whose tables, formulas, figures or outputs stick out of the text column
    without scrolling inside it. (Not the page's own scroll width: the theme's hidden skip link
    and off-canvas sidebars count there.)"""
    for s in layout["sticking"][:5]:
        report.fail(f"layout: at {label} a {s['what']} reaches {s['right']} px, past the text column's "
                    f"{layout['column']} px, and does not scroll inside it: {short(s['text'], 50)!r}")
    if len(layout["sticking"]) > 5:
        report.fail(f"layout: at {label} {len(layout['sticking']) - 5} more elements stick out of the column")


def check_in_browser(browser: Browser, base_url: str, page: str, report: PageReport,
                     timeout: float, screenshots: Path | None) -> dict:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        for domain in ("Page", "Network", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        url = base_url + urllib.parse.quote(page)
        nav = browser.send("Page.navigate", {"url": url}, session=session)
        if nav.get("errorText"):
            report.fail(f"browser: could not open {url}: {nav['errorText']}")
            return {}
        if not browser.wait_event("Page.loadEventFired", session, timeout):
            report.fail(f"browser: the page did not finish loading in {timeout:.0f} s")
        res = browser.send("Runtime.evaluate", {
            "expression": PAGE_CHECK_JS % {"timeout_ms": int(timeout * 1000)},
            "awaitPromise": True, "returnByValue": True}, session=session, timeout=timeout * 2 + 10)
        if "exceptionDetails" in res:
            report.fail(f"browser: the page check script failed: {res['exceptionDetails'].get('text')} "
                        f"{res['exceptionDetails'].get('exception', {}).get('description', '')}")
            return {}
        time.sleep(0.3)  # let the last font requests of MathJax settle
        name = page.replace("/", "__").removesuffix(".html")
        layout = {}
        for label, metrics, suffix in (("1280 px", None, ".png"), ("390 px (a phone)", PHONE, ".phone.png")):
            if metrics is not None:
                browser.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
                time.sleep(0.5)  # the theme's media queries and MathJax's line widths settle
            lay = browser.send("Runtime.evaluate", {"expression": LAYOUT_JS, "returnByValue": True},
                               session=session)
            if "exceptionDetails" not in lay:
                layout[label] = json.loads(lay["result"]["value"])
            if screenshots is not None:
                import base64
                shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False},
                                    session=session)
                (screenshots / (name + suffix)).write_bytes(base64.b64decode(shot["data"]))
        browser.send("Emulation.clearDeviceMetricsOverride", session=session)
        requests = check_network(browser.session_events(session), base_url, report)
        report.facts["requests"] = requests
        for e in browser.session_events(session):
            if e.get("method") == "Runtime.exceptionThrown":
                d = e["params"]["exceptionDetails"]
                desc = d.get("exception", {}).get("description") or d.get("text", "")
                report.warn(f"JavaScript error: {short(desc, 160)}")
        result = json.loads(res["result"]["value"])
        result["layout"] = layout
        return result
    finally:
        try:
            browser.send("Target.closeTarget", {"targetId": target}, timeout=10)
        except RuntimeError:
            pass


def check_network(events: list[dict], base_url: str, report: PageReport) -> int:
    """Failed local requests and any request that leaves 127.0.0.1."""
    urls: dict[str, str] = {}
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Network.requestWillBeSent":
            urls[p["requestId"]] = p["request"]["url"]
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        url = urls.get(p.get("requestId"), "")
        if url == base_url + "favicon.ico":  # the browser asks for it by itself
            continue
        if m == "Network.responseReceived" and p["response"]["status"] >= 400 and url.startswith(base_url):
            report.fail(f"request: {url.removeprefix(base_url)} answered {p['response']['status']}")
        elif m == "Network.loadingFailed" and url.startswith(base_url) and not p.get("canceled"):
            report.fail(f"request: {url.removeprefix(base_url)} failed ({p.get('errorText')})")
    for url in sorted(set(urls.values())):
        if url.startswith(base_url) or url.startswith(("data:", "blob:", "about:")):
            continue
        if "mathjax" in url.lower():
            report.fail(f"CDN: the page requested MathJax from {url}")
        else:
            report.warn(f"offline: the page requested {short(url, 120)} (fails without network)")
    return len(urls)


def judge(result: dict, page: str, report: PageReport, allow_solution_outputs: bool,
          expected_solutions: int | None, base_url: str = "http://127.0.0.1/") -> None:
    """Turns what the page script saw into failures and warnings."""
    math = result.get("math", {})
    report.facts["formulas"] = math.get("containers", 0)
    if math.get("sourceElements"):
        version = math.get("version")
        if not version:
            report.fail(f"math: MathJax did not load ({math.get('scripts')}); "
                        f"{math['sourceElements']} formulas left as TeX")
        elif not str(version).startswith("3."):
            report.fail(f"math: MathJax {version} loaded, expected 3.x")
        for src in math.get("scripts", []):
            if "/_static/mathjax/" not in src:
                report.fail(f"math: MathJax loaded from {src}, not from the site's _static/mathjax/")
    for tex in math.get("untypeset", []):
        report.fail(f"math: not typeset: {short(tex)}")
    for err in math.get("errorNodes", []):
        report.fail(f"math: MathJax error node: {short(err)}")
    seen = set()
    for p in math.get("problems", []):
        key = (p["tex"], p["what"])
        if key not in seen:
            seen.add(key)
            report.fail(f"math: {p['what']} in  {short(p['tex'], 140)}")
    for w in math.get("wide", []):
        report.warn(f"math: a display formula is {w['width']} px wide in a {w['column']} px column "
                    f"(it scrolls sideways; split it over lines): {short(w['text'], 70)}")
    for text in result.get("rawTex", []):
        for m in RAW_TEX.finditer(text):
            a, b = max(0, m.start() - 50), min(len(text), m.end() + 50)
            report.fail(f"math: raw TeX {m.group(0)!r} in visible text: …{short(text[a:b], 120)}…")
    images = [img for img in result.get("images", []) if urllib.parse.urlsplit(img["src"] or "").scheme
              in ("", "data") or img["src"].startswith(base_url)]
    report.facts["figures"] = len(images)
    for img in images:
        if not img["complete"] or not img["width"]:
            report.fail(f"figure: {img['src']} did not load in the browser (naturalWidth {img['width']})")
    for label, layout in result.get("layout", {}).items():
        judge_layout(layout, label, report)
    sols = result.get("solutions", [])
    report.facts["solutions"] = len(sols)
    if expected_solutions is not None and len(sols) != expected_solutions:
        report.fail(f"solutions: the notebook has {expected_solutions} cells tagged solution, "
                    f"the page shows {len(sols)} cells with class tag_solution")
    for s in sols:
        where = f"solution cell {s['index'] + 1}" + (f" ({s['near']})" if s["near"] else "")
        if not s["hasInput"]:
            report.fail(f"solutions: {where} has no input on the page (it should be folded, not removed)")
        elif not s["inputInToggle"] or s["toggleOpen"] or s["inputVisible"]:
            report.fail(f"solutions: {where}: the code is visible, not folded in a closed toggle "
                        f"(tag hide-input or hide-cell)")
        if s["outputsVisible"]:
            msg = (f"solutions: {where}: its output is visible: {short(s['outputsVisible'][0], 80)!r} "
                   f"(tag hide-cell, or hide-output, so the answer is folded too)")
            (report.warn if allow_solution_outputs else report.fail)(msg)


def source_root(site: Path) -> Path:
    """The book's sources: the folder above ``_build/html`` when it holds a ``_config.yml``
    (``make book``), else the repository this tool belongs to (a build with ``--path-output``)."""
    above = site.resolve().parent.parent
    return above if (above / "_config.yml").is_file() else Path(__file__).resolve().parent.parent


def expected_solution_count(site: Path, page: str, source: Path | None = None) -> int | None:
    """Cells tagged solution in the page's source notebook, when there is one."""
    for root in (source or source_root(site), ):
        nb = root / (page.removesuffix(".html") + ".ipynb")
        if nb.is_file():
            cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
            return sum("solution" in c.get("metadata", {}).get("tags", []) for c in cells)
    return None


# --------------------------------------------------------------------------- driver

def find_pages(site: Path) -> list[str]:
    pages = []
    for path in sorted(site.rglob("*.html")):
        rel = path.relative_to(site)
        if rel.parts[0] in SKIP_DIRS:
            continue
        pages.append(rel.as_posix())
    return pages


def find_chromium(explicit: str | None) -> str | None:
    for cand in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "/usr/bin/chromium"):
        if cand and (shutil.which(cand) or (os.path.isfile(cand) and os.access(cand, os.X_OK))):
            return shutil.which(cand) or cand
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class SetupError(Exception):
    """The check could not run (no site, no browser)."""


def check_site(site: Path, *, pages: list[str] | None = None, chromium: str | None = None,
               browser: bool = True, allow_visible_solution_outputs: bool = False,
               screenshots: Path | None = None, timeout: float = 60, source: Path | None = None,
               config: Path | None = None, search: bool = True,
               log=print) -> tuple[list[PageReport], list[str]]:
    """Checks the pages of `site` (all, or those matching the globs `pages`).

    ``source`` is the book's source folder (its notebooks; default ``source_root(site)``) and
    ``config`` its ``_config.yml`` (default: the one in ``source``). Returns a report per page
    and the problems of the site as a whole."""
    if not (site / "index.html").is_file():
        raise SetupError(f"{site}/index.html does not exist: run `make book` first")
    source = source or source_root(site)
    repo = read_repository(config or source / "_config.yml")
    names = find_pages(site)
    if pages:
        names = [p for p in names if any(fnmatch.fnmatch(p, g) for g in pages)]
    site_problems = check_mathjax_files(site) if browser else []
    if repo is None:
        site_problems.append(f"{config or source / '_config.yml'} names no repository (repository: url:), "
                             "so the Colab badges and launch buttons cannot be checked")
    chrome = server = None
    base_url = ""
    if browser:
        exe = find_chromium(chromium)
        if exe is None:
            raise SetupError("no Chromium found (Debian: apt-get install -y chromium; or --chromium PATH)")
        chrome = Browser(exe)
        try:
            product = chrome.version()
        except RuntimeError as exc:
            chrome.close()
            raise SetupError(f"{exe} did not start: {exc}\n{chrome.stderr_tail()}") from exc
        server, base_url = serve(site)
        log(f"check_site: {site} in {product} (headless), served at {base_url}")
    else:
        log(f"check_site: {site}, HTML checks only (no browser)")
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        for page in names:
            report = PageReport(page)
            reports.append(report)
            check_static(site, page, report)
            check_repository_links(site, page, report, repo, source)
            redirect = parse_page(site / page).refresh
            if chrome is None or page in GENERATED_PAGES or redirect:
                for ref in sorted(report.external):  # the browser reports what it requested
                    report.warn(f"offline: loads {short(ref, 120)} from outside the site")
                if page in GENERATED_PAGES or redirect:
                    report.facts["browser"] = "redirect" if redirect else "not opened (generated)"
                continue
            t0 = time.monotonic()
            try:
                result = check_in_browser(chrome, base_url, page, report, timeout, screenshots)
            except RuntimeError as exc:
                report.fail(f"browser: {exc}")
                result = {}
            report.facts["seconds"] = round(time.monotonic() - t0, 1)
            if result:
                judge(result, page, report, allow_visible_solution_outputs,
                      expected_solution_count(site, page, source), base_url)
        if chrome is not None and search:
            opened = [r for r in reports if "browser" not in r.facts and parse_page(site / r.page).h1]
            if opened and not (site / "search.html").is_file():
                site_problems.append("search: the site has no search.html")
            elif opened:
                titles = {r.page: parse_page(site / r.page).h1 for r in opened}
                # distinct words among all the site's titles, not only those of the pages asked for
                all_titles = {p: parse_page(site / p).h1 for p in find_pages(site)
                              if p not in GENERATED_PAGES and parse_page(site / p).h1}
                terms = search_terms({**all_titles, **titles})
                for r in opened:
                    if terms[r.page] is None:
                        r.warn(f"search: no word of the title {titles[r.page]!r} to search for")
                        continue
                    try:
                        check_search(chrome, base_url, r.page, terms[r.page], titles[r.page], r, timeout)
                    except RuntimeError as exc:
                        r.fail(f"search: {exc}")
    finally:
        if chrome is not None:
            chrome.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    return reports, site_problems


def print_report(reports: list[PageReport], site_problems: list[str], seconds: float) -> int:
    """Prints the report of every page; returns the number of failures."""
    for r in reports:
        status = "FAIL" if r.failures else ("ok (warnings)" if r.warnings else "ok")
        facts = ", ".join(f"{k} {v}" for k, v in r.facts.items())
        print(f"\n{r.page}: {status}" + (f"  [{facts}]" if facts else ""))
        for f in r.failures:
            print(f"  FAIL  {f}")
        for w in r.warnings:
            print(f"  warn  {w}")
    for p in site_problems:
        print(f"\nsite: FAIL  {p}")
    n_fail = sum(len(r.failures) for r in reports) + len(site_problems)
    n_warn = sum(len(r.warnings) for r in reports)
    failed = sum(bool(r.failures) for r in reports)
    print(f"\ncheck_site: {len(reports)} pages, {failed} failed, {n_fail} failures, {n_warn} warnings "
          f"({seconds:.0f} s)")
    return n_fail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("site", nargs="?", default="_build/html", help="the built site (default _build/html)")
    ap.add_argument("--chromium", help="the browser (default: $CHROMIUM, else chromium on PATH)")
    ap.add_argument("--allow-visible-solution-outputs", action="store_true",
                    help="report visible solution outputs as warnings, not failures (temporary)")
    ap.add_argument("--pages", nargs="+", metavar="GLOB", help="only pages matching these globs")
    ap.add_argument("--screenshots", type=Path, metavar="DIR",
                    help="write two PNGs of each page here: PAGE.png (1280 px) and PAGE.phone.png (390 px)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per page (default 60)")
    ap.add_argument("--no-browser", action="store_true", help="only the checks of the HTML files")
    args = ap.parse_args(argv)
    started = time.monotonic()
    try:
        reports, site_problems = check_site(
            Path(args.site), pages=args.pages, chromium=args.chromium, browser=not args.no_browser,
            allow_visible_solution_outputs=args.allow_visible_solution_outputs,
            screenshots=args.screenshots, timeout=args.timeout)
    except SetupError as exc:
        print(f"check_site: {exc}", file=sys.stderr)
        return 2
    n_fail = print_report(reports, site_problems, time.monotonic() - started)
    if args.allow_visible_solution_outputs:
        print("check_site: --allow-visible-solution-outputs: visible solution outputs are warnings")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
