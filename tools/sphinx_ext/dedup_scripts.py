"""Sphinx extension: every page lists each script once.

sphinx-thebe (pulled in by Jupyter Book) registers its inline configuration
script on each ``env-before-read-docs`` event, and with Sphinx 7 the page ends
up with it twice: ``const THEBE_JS_URL`` declared twice is a JavaScript
SyntaxError on every page (``tools/check_site.py`` reports it). This drops
repeated entries — same file (or none), same attributes — from a page's scripts
before it is written.
"""

from __future__ import annotations


def _key(script) -> tuple:
    # an inline script has no file: None from one extension, "" from another
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def dedup_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    # last, after every extension has added its scripts to the page
    app.connect("html-page-context", dedup_scripts, priority=10000)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
