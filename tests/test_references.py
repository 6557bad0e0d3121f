"""Every reference in the code, tests, benchmarks and documents can be followed.

- ``docs/<file>.md §N`` (also ``§N, §M``) must name an existing file whose headings include
  ``## §N``; a quoted topic after it (``§12 "SMTP smuggling"``, or a list of them) must
  be covered by a ``###`` heading inside that section: every word of the topic appears in
  one heading of the section (case-insensitive).
- A repository path (``mailstack/...``, ``tests/...``, ``bench/...``, ``docs/...``,
  ``config/...``, ``contrib/...``, ``scripts/...``) must exist.
- Nothing cites the developers' briefs that are not part of the repository.

This file itself is not scanned: its self-tests hold broken references on purpose.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
SCANNED = ("mailstack", "tests", "bench", "docs")
SUFFIXES = {".py", ".md", ".toml", ".service", ".txt", ".cfg", ".ini"}
SKIP_DIRS = {"__pycache__", "results"}

# Joins a reference broken over two comment/docstring lines: "...\n    # rest" -> "... rest".
_WRAP = re.compile(r"[ \t]*\n[ \t]*(?:#[ \t]*)?")
_DOC_REF = re.compile(
    r"docs/(?P<file>[\w./-]+?\.md)(?P<secs>(?:\s*(?:,|and|/)?\s*§\s*\d+)+)"
    r"(?P<topics>(?:\s*(?:,|and)?\s*\"[^\"]{1,80}\")*)")
_SEC = re.compile(r"§\s*(\d+)")
_TOPIC = re.compile(r"\"([^\"]{1,80})\"")
_PATH = re.compile(
    r"(?<![\w./~-])((?:mailstack|tests|bench|docs|config|contrib|scripts)/[\w./-]*[\w/])")
# placeholders in documentation, e.g. bench/results/latest-NAME.json, tests/<dir>
_PLACEHOLDER = re.compile(r"(?:^|[-/_])(?:NAME|N|X|DIR|FILE)(?=[./-]|$)|[<>*{}]")
# Built from pieces so this file does not match itself.
_FORBIDDEN = re.compile("|".join([
    r"\b" + "SPEC" + r"\.md", r"\b" + "HOSTILE" + r"\.md", r"\b" + "DESIGN" + r"\.md",
    r"\b" + "STYLE" + r"\.md", r"\.\./" + "shared", r"\b" + "SPEC" + r"\s*§",
    r"\b" + "HOSTILE" + r"\s*§"]))


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and p != SELF and not (
                    SKIP_DIRS & set(p.relative_to(ROOT).parts)):
                files.append(p)
    return files


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@cache
def doc_sections(name: str) -> dict[int, list[str]] | None:
    """``{N: [subsection headings]}`` of docs/<name>, or None when it does not exist."""
    path = ROOT / "docs" / name
    if not path.is_file():
        return None
    sections: dict[int, list[str]] = {}
    current: int | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"##\s+§(\d+)\b", line)
        if m:
            current = int(m.group(1))
            sections[current] = []
        elif line.startswith("## "):
            current = None
        elif line.startswith("### ") and current is not None:
            sections[current].append(line[4:])
    return sections


def problems_in(path: Path, text: str) -> list[str]:
    rel = path.relative_to(ROOT)
    out: list[str] = []
    for m in _FORBIDDEN.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        out.append(f"{rel}:{line}: cites {m.group(0)!r}, which is not in the repository")
    joined = _WRAP.sub(" ", text)
    for m in _DOC_REF.finditer(joined):
        sections = doc_sections(m.group("file"))
        where = f"{rel}: {m.group(0)!r}"
        if sections is None:
            out.append(f"{where}: docs/{m.group('file')} does not exist")
            continue
        numbers = [int(n) for n in _SEC.findall(m.group("secs"))]
        for n in numbers:
            if n not in sections:
                out.append(f"{where}: docs/{m.group('file')} has no section §{n}")
        for topic in _TOPIC.findall(m.group("topics")):
            want = _words(topic)
            headings = [h for n in numbers for h in sections.get(n, [])]
            if not any(want <= _words(h) for h in headings):
                out.append(f"{where}: no subsection about {topic!r} in "
                           f"§{', §'.join(map(str, numbers))}")
    for m in _PATH.finditer(text):
        ref = m.group(1).rstrip("./")
        if _PLACEHOLDER.search(ref) or not ref:
            continue
        if not (ROOT / ref).exists():
            line = text.count("\n", 0, m.start()) + 1
            out.append(f"{rel}:{line}: {ref} does not exist")
    return out


def test_every_reference_resolves() -> None:
    problems: list[str] = []
    for path in scanned_files():
        problems += problems_in(path, path.read_text(encoding="utf-8", errors="replace"))
    assert not problems, "broken references:\n" + "\n".join(problems)


def test_behaviour_has_the_twelve_areas_in_order() -> None:
    sections = doc_sections("behaviour.md")
    assert sections is not None
    assert list(sections) == list(range(1, 13))


@pytest.mark.parametrize("text,fragment", [
    ('x (docs/behaviour.md §13)', "no section §13"),
    ('x (docs/nothing.md §1)', "does not exist"),
    ('x docs/behaviour.md §12 "quantum relays"', "no subsection about 'quantum relays'"),
    ('x docs/behaviour.md §4 "SMTP smuggling"', "no subsection"),
    ('# docs/behaviour.md §12 "STARTTLS\n    # command injection" and "ghosts"', "'ghosts'"),
    ("see tests/smtp/test_nothing_here.py", "does not exist"),
    ("as " + "SPEC" + " §3 says", "not in the repository"),
    ("see ../" + "shared/x", "not in the repository"),
])
def test_broken_references_are_caught(text: str, fragment: str) -> None:
    """The checker itself: each broken spelling is reported (so the test above can fail)."""
    problems = problems_in(ROOT / "tests" / "fake.py", text)
    assert any(fragment in p for p in problems), problems


def test_good_references_pass() -> None:
    text = ('docs/behaviour.md §4, §5 and docs/behaviour.md §12 "Faults", "Slow clients";\n'
            '# docs/behaviour.md §12 "STARTTLS\n#   injection"; mailstack/cli/main.py')
    assert problems_in(ROOT / "tests" / "fake.py", text) == []
