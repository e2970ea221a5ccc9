"""The chapters' execution times (instructor/chapter_times.json) and the instructor guide that
quotes them: every chapter has its entries, every platform its provenance, and the guide's table and
agendas agree with the file, so the two never disagree. The file lives beside the guide rather than in
infer_lib/data/, which holds only the measurement files tests/test_measure.py validates by topic."""

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "instructor" / "chapter_times.json"
GUIDE = ROOT / "instructor" / "guide.md"
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
MEASURED = ("h200", "cpu")          # platforms whose figures are measurements
ESTIMATED = ("colab_t4",)           # platforms whose figures are estimates, never measurements
#: the guide's table: chapter, then one column per platform, in this order
TABLE_COLUMNS = ("h200", "cpu", "colab_t4")
#: how the guide writes a chapter not measured yet on a platform
NOT_MEASURED = "not measured yet"


@pytest.fixture(scope="module")
def doc():
    return json.loads(DATA.read_text())


@pytest.fixture(scope="module")
def guide():
    return GUIDE.read_text()


def test_every_chapter_has_an_entry_per_platform(doc):
    assert CHAPTERS, "no chapters found"
    for stem in CHAPTERS:
        assert stem in doc["chapters"], f"{stem} has no entry in {DATA.name}"
        entry = doc["chapters"][stem]
        for platform in MEASURED + ESTIMATED:
            assert platform in entry, f"{stem}: no {platform!r} entry (write null for one not measured yet)"
            value = entry[platform]
            assert value is None or (isinstance(value, (int, float)) and value > 0), (stem, platform, value)


def test_entries_are_chapters_or_explicitly_unmeasured(doc):
    # an entry ahead of its notebook (a chapter being written) may only hold nulls
    for stem, entry in doc["chapters"].items():
        assert re.fullmatch(r"\d\d_\w+", stem), stem
        if stem not in CHAPTERS:
            assert all(entry[p] is None for p in MEASURED + ESTIMATED), f"{stem} has times but no notebook"


def test_provenance(doc):
    for platform in MEASURED:
        prov = doc["platforms"][platform]
        assert prov["measured"] is True
        for key in ("machine", "date", "commit", "python", "torch", "triton", "command"):
            assert prov.get(key), f"{platform}: provenance lacks {key!r}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", prov["date"]), prov["date"]
        assert re.fullmatch(r"[0-9a-f]{7,40}", prov["commit"]), prov["commit"]
    assert "shared" in doc["platforms"]["cpu"]["machine"], "say that the CPU machine was shared"
    for platform in ESTIMATED:
        prov = doc["platforms"][platform]
        assert prov["measured"] is False and prov.get("method"), f"{platform}: say how it was estimated"


def test_estimates_follow_their_stated_formula(doc):
    # colab_t4 = base + factor × h200, rounded up to a multiple of round_to; null where h200 is
    rule = doc["platforms"]["colab_t4"]["rule"]
    for stem, entry in doc["chapters"].items():
        if entry["h200"] is None:
            assert entry["colab_t4"] is None, stem
            continue
        raw = rule["base_s"] + rule["factor"] * entry["h200"]
        assert entry["colab_t4"] == math.ceil(raw / rule["round_to_s"]) * rule["round_to_s"], stem


def _cell(text: str):
    text = text.strip().strip("*")
    if text == NOT_MEASURED:
        return None
    return int(text.removeprefix("≈ ").strip())


def _table(guide: str) -> dict[str, tuple]:
    """The guide's table of execution times: {chapter stem: (h200, cpu, colab_t4)}."""
    rows = {}
    for line in guide.splitlines():
        m = re.match(r"^\|\s*(?:\{doc\}`/chapters/(\d\d_\w+)`\s*|`chapters/(\d\d_\w+)\.ipynb`[^|]*)\|(.*)\|\s*$", line)
        if m:
            cells = [c.strip() for c in m.group(3).split("|")]
            assert len(cells) == len(TABLE_COLUMNS), line
            rows[m.group(1) or m.group(2)] = tuple(_cell(c) for c in cells)
    return rows


def test_guide_table_matches_the_data(doc, guide):
    rows = _table(guide)
    assert set(rows) == set(doc["chapters"]), "the guide's table and the data file list different chapters"
    for stem, cells in rows.items():
        want = tuple(doc["chapters"][stem][p] for p in TABLE_COLUMNS)
        assert cells == want, f"{stem}: the guide says {cells}, {DATA.name} {want}"
    total = re.search(r"^\|\s*\*\*all chapters\*\*\s*\|(.*)\|\s*$", guide, re.M)
    assert total, "the table's total row is missing"
    sums = [_cell(c) for c in total.group(1).split("|")]
    for platform, got in zip(TABLE_COLUMNS, sums):
        values = [e[platform] for e in doc["chapters"].values() if e[platform] is not None]
        assert got == sum(values), f"total of {platform}: the guide says {got}, the data {sum(values)}"


def run_allowance(doc, chapter_number: str) -> int:
    """Minutes a slot allows for running a chapter top to bottom: the slower of its measured
    times, rounded up to whole minutes."""
    stem = next(s for s in doc["chapters"] if s.startswith(chapter_number + "_"))
    measured = [doc["chapters"][stem][p] for p in MEASURED if doc["chapters"][stem][p] is not None]
    return math.ceil(max(measured) / 60)


SLOT = re.compile(r"^### (\d\d):(\d\d)–(\d\d):(\d\d) · (.+)$")
TIME = re.compile(r"^\*\*Time: (\d+) min\*\* = run (\d+) min \(measured; opens ([\d, ]+|none)\) "
                  r"\+ teaching (\d+) min \(estimate\) \+ exercises (\d+) min \(estimate\) "
                  r"\+ questions (\d+) min \(estimate\)")


def test_agenda_slots_are_built_from_the_measured_times(doc, guide):
    lines = guide.splitlines()
    slots, previous_end = 0, None
    for i, line in enumerate(lines):
        if line.startswith("## "):
            previous_end = None            # a new agenda (or day) starts its own clock
        m = SLOT.match(line)
        if not m:
            continue
        h0, m0, h1, m1, title = m.groups()
        start, end = int(h0) * 60 + int(m0), int(h1) * 60 + int(m1)
        assert end > start, line
        if previous_end is not None:
            assert start == previous_end, f"{line}: starts when the slot before it has not ended"
        previous_end = end
        following = next((l for l in lines[i + 1:] if l.strip()), "")
        t = TIME.match(following)
        if title in ("Break", "Lunch"):
            assert t is None, line
            continue
        assert t, f"{line}: the next line must give its time, built as run + teaching + exercises + questions"
        total, run, opens, teach, exercises, questions = t.groups()
        total, run, teach, exercises, questions = map(int, (total, run, teach, exercises, questions))
        assert total == end - start, f"{line}: {total} min, but the clock says {end - start}"
        assert total == run + teach + exercises + questions, following
        chapters = [] if opens == "none" else [c.strip() for c in opens.split(",")]
        assert run == sum(run_allowance(doc, c) for c in chapters), \
            f"{line}: run {run} min, but the measured times of {chapters} give another allowance"
        slots += 1
    assert slots >= 10, "the guide's agendas were not found"
