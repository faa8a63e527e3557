"""The documentation: README.md stays a front door, and every relative link and anchor in it and in docs/ resolves.

Links are read with a real Markdown parser (markdown-it-py, CommonMark) so that a `](x)` inside a code block is
not taken for a link, and a `#` comment in a shell example is not taken for a heading. Anchors follow GitHub's
rule for heading ids: lower case, punctuation dropped, spaces become hyphens, repeats get `-1`, `-2`, ...
"""

import os
import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", REPO / "README.fr.md", *sorted((REPO / "docs").glob("*.md"))]
FRONT_DOOR_LIMIT = 12 * 1024

markdown = MarkdownIt("commonmark").enable("table")


def tokens(path: Path) -> list[Token]:
    return markdown.parse(path.read_text(encoding="utf-8"))


def plain_text(inline: Token) -> str:
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def anchors(path: Path) -> set[str]:
    """The ids GitHub gives the headings of `path`."""
    seen: Counter[str] = Counter()
    ids = set()
    parsed = tokens(path)
    for opening, inline in zip(parsed, parsed[1:], strict=False):
        if opening.type != "heading_open":
            continue
        slug = re.sub(r"[^\w\- ]", "", plain_text(inline).strip().lower()).replace(" ", "-")
        ids.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return ids


def links(path: Path) -> list[str]:
    found = []
    for token in tokens(path):
        for child in token.children or []:
            if child.type == "link_open":
                found.append(str(child.attrs["href"]))
            elif child.type == "image":
                found.append(str(child.attrs["src"]))
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for href in links(path):
        target = urlsplit(href)
        if target.scheme or target.netloc:
            continue  # the web is not checked: the tests run offline
        destination = (path.parent / unquote(target.path)).resolve() if target.path else path
        if not destination.exists():
            broken.append(f"{href} (no such file)")
        elif target.fragment and destination.suffix == ".md" and target.fragment not in anchors(destination):
            broken.append(f"{href} (no such heading in {os.path.relpath(destination, path.parent)})")
    return broken


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path: Path):
    assert path.exists(), f"{path.relative_to(REPO)} is missing"
    assert not broken_links(path), f"{path.relative_to(REPO)} has broken links: {broken_links(path)}"


def test_the_readme_is_a_front_door_under_12_kb():
    assert (REPO / "README.md").stat().st_size < FRONT_DOOR_LIMIT


def test_every_reference_page_is_reachable_from_the_readme():
    reachable, pending = set(), [REPO / "README.md"]
    while pending:
        page = pending.pop()
        if page in reachable:
            continue
        reachable.add(page)
        for href in links(page):
            target = urlsplit(href)
            if not (target.scheme or target.netloc) and target.path.endswith(".md"):
                pending.append((page.parent / unquote(target.path)).resolve())
    assert set(DOCUMENTS) <= reachable, f"not linked from anywhere: {sorted(set(DOCUMENTS) - reachable)}"


def test_the_french_front_door_and_the_english_one_link_to_each_other():
    assert "README.fr.md" in links(REPO / "README.md")
    assert "README.md" in links(REPO / "README.fr.md")


def test_the_link_checker_sees_a_broken_anchor_and_ignores_code(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## Run `streamd start`: the pipeline\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#run-streamd-start-the-pipeline) [gone](other.md#nope) [missing](nowhere.md)\n\n"
        "```sh\n# not a heading [not](a-link.md)\n```\n"
    )
    assert broken_links(page) == [
        "other.md#nope (no such heading in other.md)",
        "nowhere.md (no such file)",
    ]
