"""The documents point at things that exist: every relative link and in-page anchor of
the README, CONTRIBUTING.md, SECURITY.md and docs/. The repository paths they name (and
the code's comments and docstrings name) are checked by tests/test_referenced_files.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "SECURITY.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    """Every heading's anchor (outside code blocks), with GitHub's -1, -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+ (.+)$", _prose(text), flags=re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def _prose(text: str) -> str:
    """The text without fenced code blocks (their `#` lines are not headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _relative(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_relative)
def test_every_link_resolves(doc: Path) -> None:
    text = doc.read_text()
    anchors = _anchors(text)
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if (path and not (doc.parent / path).exists()) or (not path and anchor not in anchors):
            broken.append(target)
    assert broken == []


def test_the_checks_can_fail(tmp_path: Path) -> None:
    text = "# A title\n```\n# not a heading\n```\nsee [x](#a-title) [y](#not-a-heading)\n"
    assert _anchors(text) == {"a-title"}
