"""The code's pointers into docs/ name things that exist, and the status tables agree.

Comments and docstrings say `docs/architecture.md, "Section"` or `docs/architecture.md,
pool rule N` (or `pool rules N-M`); a pointer to a file, heading or rule that is not there
sends a reader nowhere, so each is checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.errors import ScoutError
from server.rpc import _STATUS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("server", "client", "testkit", "tests", "bench")
POINTER = re.compile(r"docs/[\w./-]+\.md")
# A pointer, then (across one line break at most) a quoted section or a rule number.
SECTION = re.compile(r'(docs/[\w./-]+\.md),?\s*(?:#\s*)?"([^"\n]+)"')
RULE = re.compile(r"docs/architecture\.md,?\s+pool\s+rules?\s+(\d+)(?:\s*-\s*(\d+))?")


def _sources() -> list[Path]:
    return [p for top in SOURCES for p in sorted((ROOT / top).rglob("*.py"))]


def _text(path: Path) -> str:
    """The file with comment markers and indentation folded, so pointers may wrap lines."""
    lines = (line.strip().removeprefix("#").strip() for line in path.read_text().splitlines())
    return " ".join(lines)


def _headings(doc: Path) -> set[str]:
    return {
        line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")
    }


def _pool_rules() -> set[int]:
    text = (ROOT / "docs/architecture.md").read_text()
    section = text.split("## Pool rules", 1)[1].split("\n## ", 1)[0]
    return {int(n) for n in re.findall(r"^(\d+)\. ", section, re.MULTILINE)}


def test_architecture_doc_has_the_pool_rules_the_code_cites() -> None:
    assert _pool_rules() == set(range(1, 9))


def test_no_code_cites_a_design_file_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    offenders = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if p != this and re.search(r"\bDESIGN(\.md)?\b", p.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_docs_pointer_exists(path: Path) -> None:
    text = _text(path)
    if path == Path(__file__).resolve():
        text = ""  # this file's docstring describes the pointer syntax with examples
    for doc in POINTER.findall(text):
        assert (ROOT / doc).is_file(), f"{path.name} points to {doc}, which does not exist"
    for doc, section in SECTION.findall(text):
        assert section in _headings(ROOT / doc), f"{path.name}: no section {section!r} in {doc}"
    rules = _pool_rules()
    for first, last in RULE.findall(text):
        cited = set(range(int(first), int(last or first) + 1))
        assert cited <= rules, f"{path.name} cites pool rules {sorted(cited - rules)}"


def test_architecture_pointers_are_found_at_all() -> None:
    """The checks above see the pointers the code has (a broken regex would pass silently)."""
    texts = " ".join(_text(p) for p in _sources())
    assert len(RULE.findall(texts)) >= 2
    assert len(SECTION.findall(texts)) >= 4


def test_readme_status_table_names_every_status_scout_decides() -> None:
    """`rpc.status_of` is the mapping; the README's table must name each code it can give."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Status codes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    named = {cell.strip() for row in rows for cell in row.split("|")}
    codes = {code.name for code in _STATUS.values()} | {"INTERNAL"}
    assert codes <= named, f"missing from the README's table: {sorted(codes - named)}"
    assert all(issubclass(cls, ScoutError) for cls in _STATUS)
