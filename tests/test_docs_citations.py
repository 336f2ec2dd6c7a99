"""Citations in code and docs point at pages a reader has: no private design notes, no missing sections.

The team's research notes are not part of the repository, so a docstring or doc page that names one of them
cites something the reader cannot open. Method facts are cited as sections of the method reference page
(docs/METHOD.md), and every such section must exist there as a heading.
"""

from __future__ import annotations

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("pgseg_core", "pgseg_cli", "tests", "benchmarks", "docs", "examples")
SCANNED_FILES = ("README.md",)
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", "golden"}

# Built from parts so that this file does not name the notes itself.
_NOTE_STEMS = (
    "pgseg" + "_method",
    "peers" + "_and_eval",
    "measure" + "ments",
    "style" + "_anchors",
    "offline" + "_data",
)
PRIVATE_NOTES = tuple(stem + "." + "md" for stem in _NOTE_STEMS)

METHOD_PAGE = ROOT / "docs" / "METHOD.md"
_SECTION = r"§(\d+(?:\.\d+)*)(?:-(\d+(?:\.\d+)*))?"
# "METHOD.md §4.2-4.3", "docs/METHOD.md §1.2, §3.1", "[METHOD.md §2.2](METHOD.md)"
_CITATION = re.compile(r"METHOD\.md\]?\s*" + r"(" + _SECTION + r"(?:\s*(?:,|and)\s*" + _SECTION + r")*)")
_ONE_SECTION = re.compile(_SECTION)
_HEADING = re.compile(r"^#+\s+§(\d+(?:\.\d+)*)\s")


def _text_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for top in SCANNED_DIRS:
        base = ROOT / top
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if not path.is_file() or SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
                continue
            files.append(path)
    out = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        out.append(path)
    return out


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def _expand(first: str, last: str | None) -> list[str]:
    """The section numbers a citation names: both ends of a range ("4.2-4.3" or "1.1-3"), else the one."""
    if not last:
        return [first]
    head = first.rsplit(".", 1)[0] + "." if "." in first and "." not in last else ""
    return [first, head + last]


def _cited_sections(text: str) -> list[str]:
    sections = []
    for match in _CITATION.finditer(text):
        for one in _ONE_SECTION.finditer(match.group(1)):
            sections += _expand(one.group(1), one.group(2))
    return sections


def _method_headings() -> set[str]:
    return {m.group(1) for line in _read(METHOD_PAGE).splitlines() for m in [_HEADING.match(line)] if m}


def test_the_note_names_are_built_correctly():
    assert len(set(PRIVATE_NOTES)) == 5 and all(n.endswith(".md") for n in PRIVATE_NOTES)
    assert _cited_sections("see docs/METHOD.md §1.2, §3.1 and [METHOD.md §4.2-4.3](METHOD.md)") == [
        "1.2",
        "3.1",
        "4.2",
        "4.3",
    ]
    assert _expand("1.1", "3") == ["1.1", "1.3"]


def test_no_file_cites_the_private_design_notes():
    hits = []
    for path in _text_files():
        for lineno, line in enumerate(_read(path).splitlines(), start=1):
            for name in PRIVATE_NOTES:
                if name in line:
                    hits.append(f"{path.relative_to(ROOT)}:{lineno}: {name}")
    assert not hits, "cite docs/METHOD.md sections instead of the private notes:\n" + "\n".join(hits)


def test_method_page_has_numbered_sections():
    headings = _method_headings()
    assert {"1", "2", "3", "4", "5"} <= headings
    assert "3.7" in headings  # the released-code switch


def test_every_cited_method_section_exists():
    headings = _method_headings()
    missing = []
    for path in _text_files():
        for lineno, line in enumerate(_read(path).splitlines(), start=1):
            for section in _cited_sections(line):
                if section not in headings:
                    missing.append(f"{path.relative_to(ROOT)}:{lineno}: §{section}")
    assert not missing, "docs/METHOD.md has no heading for:\n" + "\n".join(missing)


def test_method_page_cross_references_exist():
    headings = _method_headings()
    text = _read(METHOD_PAGE)
    missing = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if _HEADING.match(line):
            continue
        # "§N" inside the page refers to its own sections, except the paper sections cited with an author
        for m in _ONE_SECTION.finditer(line):
            before = line[max(0, m.start() - 30) : m.start()]
            if "et al." in before or "CVPR" in before:
                continue
            for section in _expand(m.group(1), m.group(2)):
                if section not in headings:
                    missing.append(f"docs/METHOD.md:{lineno}: §{section}")
    assert not missing, "\n".join(missing)
