"""Every reading cited in the project has a heading in docs/readings.md, and every heading is cited.

Citations are ``A-`` followed by two digits; a file that cites one names docs/readings.md at
least once. Headings are ``## A-xx Title``. The comments used to point at READINGS.md, a file
outside the project that its users never see.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READINGS = ROOT / "docs" / "readings.md"
# Two digits, not part of a longer token: SHA-256 or AES-128 are not readings.
CITATION = re.compile(r"(?<![A-Za-z0-9-])A-(\d{2})(?!\d)")
HEADING = re.compile(r"^## (A-\d{2}) \S", re.MULTILINE)


def _sources() -> list[Path]:
    files = [p for d in ("src", "tests", "docs") for p in (ROOT / d).rglob("*") if p.is_file()]
    files.append(ROOT / "README.md")
    return sorted(
        p for p in files if p.suffix in {".py", ".md", ".toml"} and p != READINGS and p.exists()
    )


def _citations() -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        for m in CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            cited.setdefault(f"A-{m.group(1)}", []).append(f"{path.relative_to(ROOT)}:{line}")
    return cited


def _headings() -> list[str]:
    return HEADING.findall(READINGS.read_text(encoding="utf-8"))


def test_headings_are_unique_and_in_order() -> None:
    headings = _headings()
    assert headings, "docs/readings.md has no '## A-xx' headings"
    assert len(headings) == len(set(headings))
    assert headings == sorted(headings)


def test_every_cited_reading_has_a_heading() -> None:
    missing = {k: v for k, v in _citations().items() if k not in set(_headings())}
    assert not missing, f"cited but not in docs/readings.md: {missing}"


def test_every_heading_is_cited() -> None:
    cited = _citations()
    uncited = [h for h in _headings() if h not in cited]
    assert not uncited, f"in docs/readings.md but cited nowhere: {uncited}"



def test_every_citing_file_points_at_docs_readings() -> None:
    bare = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if p != Path(__file__).resolve()
        and CITATION.search(text := p.read_text(encoding="utf-8"))
        and "docs/readings.md" not in text
    ]
    assert not bare, f"cites A-xx but never names docs/readings.md: {bare}"


def test_no_citation_points_outside_the_project() -> None:
    outside = re.compile(r"\bREADINGS\b")
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _sources()
        if p != Path(__file__).resolve()
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not hits, f"cite docs/readings.md instead: {hits}"
