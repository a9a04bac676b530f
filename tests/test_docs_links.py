"""Every relative link of README.md, docs/*.md and host/README.md resolves: to a file or
folder of the repository, and, with a `#fragment`, to a heading of that page (as GitHub
makes anchors from headings)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md")), "host/README.md"]
FENCE = re.compile(r"^ *```.*?^ *```[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[(?:[^\[\]]|`[^`]*`)*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#* *$", re.M)


def prose(text: str) -> str:
    """The page without code blocks; code spans stay only where they are a link's text."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(prose(page.read_text()))}


def links(page: str) -> list[str]:
    text = prose((REPO / page).read_text())
    # A code span that is not a link's text is no link: `[--json]` is a flag.
    text = CODE_SPAN.sub(lambda m: m[0] if m.end() < len(text) and text[m.end() : m.end() + 2] == "](" else "", text)
    return LINK.findall(text)


def test_the_pages_exist_and_link_somewhere() -> None:
    assert len(PAGES) >= 4, PAGES
    readme_links = links("README.md")
    for page in PAGES:
        if page.startswith("docs/"):
            assert f"{page}" in readme_links, f"README.md does not link {page}"


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: str) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, fragment = target.partition("#")
        resolved = Path(os.path.normpath((REPO / page).parent / path)) if path else REPO / page
        if not resolved.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no {resolved.relative_to(REPO)}")
        elif fragment and (resolved.is_dir() or fragment not in anchors(resolved)):
            broken.append(f"{target}: no heading #{fragment} in {path or page}")
    assert not broken, f"{page}: " + "; ".join(broken)
