"""The README and docs hold together: every relative link and anchor resolves, and no words of the project's
own process (tracker numbers, scratch paths) reach the pages users read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", flags=re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", flags=re.M)


def _prose(text: str) -> str:
    """The page without fenced code blocks (whose `# comments` are not headings and whose brackets are code)."""
    return _FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_prose(page.read_text(encoding="utf-8"))):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    prose = _INLINE_CODE.sub("", _prose(page.read_text(encoding="utf-8")))
    return [m.group(1) for m in _LINK.finditer(prose)]


def test_slug_follows_github():
    assert slug("The GPU check (`benchmarks/gpu_check.py`)") == "the-gpu-check-benchmarksgpu_checkpy"
    assert slug("Is my run healthy?") == "is-my-run-healthy"
    assert slug("Probing: `runs/probe/<manifest>-<task>/<encoder>/`") == "probing-runsprobemanifest-taskencoder"


def test_pages_exist():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/README.md", "docs/demo.md", "docs/run-folder.md", "docs/notes/README.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... are not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} is missing")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


# The words a reader outside the project cannot use; `grep -rniwE "issue [0-9]+|done-when|lent|device tool"`.
_PROCESS = re.compile(r"\b(issue [0-9]+|done-when|lent|device tool)\b", flags=re.I)
_PHRASES = ("the outside check", "goal 3: met", "no gpu was lent", "/tmp/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_process_words(page):
    text = page.read_text(encoding="utf-8")
    found = [m.group(0) for m in _PROCESS.finditer(text)]
    found += [p for p in _PHRASES if p in text.lower()]
    assert not found, f"{page.relative_to(ROOT)} mentions {found}"


def test_process_word_check_can_fail():
    assert _PROCESS.search("as the Done-when of issue 11 says") and not _PROCESS.search("an excellent, silent run")
