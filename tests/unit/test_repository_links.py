"""Every link in the repository's Markdown leads somewhere inside the repository.

A clone is all a reader has: a link to a file that is not tracked, to a heading
that is not there, or to a path outside the repository (`../` past the root, a
machine's own folders) is dead for them. Links are read with a Markdown parser,
so links shown inside code blocks are left alone, and reference links count.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from support.repository import ROOT, clone_files

# A machine's own folders, which no clone has (spelled in two parts so that this
# file does not name one itself).
MACHINE_PATHS = ("/" + "work/",)
HTML_LINK = re.compile(r"""(?:href|src)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
# A path written in a code span that climbs out of its folder: `../shared/x.md`.
CLIMBING_PATH = re.compile(r"(?:\.\./)+[\w.\-/]*")


@dataclass(frozen=True)
class Link:
    source: str  # the Markdown file, relative to the root
    target: str  # as written


MARKDOWN_FILES = clone_files("*.md")
TRACKED = set(clone_files())
TRACKED_FOLDERS = {str(folder) for name in TRACKED for folder in PurePosixPath(name).parents}


def tokens_of(name: str) -> list[Token]:
    return MarkdownIt("commonmark").parse((ROOT / name).read_text(encoding="utf-8"))


def walk(tokens: list[Token]) -> list[Token]:
    found: list[Token] = []
    for token in tokens:
        found.append(token)
        if token.children:
            found.extend(walk(token.children))
    return found


def links_in(name: str) -> list[Link]:
    links: list[Link] = []
    for token in walk(tokens_of(name)):
        if token.type == "link_open":
            links.append(Link(name, str(token.attrs["href"])))
        elif token.type == "image":
            links.append(Link(name, str(token.attrs["src"])))
        elif token.type in ("html_inline", "html_block"):
            links.extend(Link(name, target) for target in HTML_LINK.findall(token.content))
    return links


def anchors_of(name: str) -> set[str]:
    """The ids a Markdown renderer gives the file's headings (lower case, spaces
    as hyphens, punctuation dropped, repeats numbered)."""
    seen: Counter[str] = Counter()
    anchors: set[str] = set()
    tokens = tokens_of(name)
    for opening, inline in pairwise(tokens):
        if opening.type != "heading_open":
            continue
        text = "".join(child.content for child in inline.children or [])
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return anchors


def inside_root(source: str, path: str) -> PurePosixPath | None:
    """The path relative to the root, or None when it leaves the repository."""
    parts: list[str] = []
    for part in (PurePosixPath(source).parent / path).parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def problem_of(link: Link) -> str | None:
    split = urlsplit(link.target)
    if split.scheme or split.netloc:
        return None  # not a path (a mail address, a web page)
    path, fragment = unquote(split.path), unquote(split.fragment)
    if path.startswith("/"):
        return "an absolute path: no clone has it; link relative to this file"
    target = inside_root(link.source, path) if path else PurePosixPath(link.source)
    if target is None:
        return "leaves the repository"
    if str(target) not in TRACKED and str(target) not in TRACKED_FOLDERS:
        return f"{target} is not a tracked file or folder"
    if fragment and target.suffix == ".md" and fragment not in anchors_of(str(target)):
        return f"{target} has no heading #{fragment}"
    return None


def test_the_repository_has_markdown_with_links() -> None:
    """The scan below sees the documents it is meant to hold to account."""
    assert {"README.md", "docs/design.md", "docs/deployment.md"} <= set(MARKDOWN_FILES)
    assert len(links_in("README.md")) >= 5


@pytest.mark.parametrize("name", MARKDOWN_FILES)
def test_every_relative_link_leads_inside_the_repository(name: str) -> None:
    problems = [
        f"{link.target}: {problem}" for link in links_in(name) if (problem := problem_of(link))
    ]
    assert problems == [], f"dead links in {name}"


@pytest.mark.parametrize("name", MARKDOWN_FILES)
def test_no_path_written_in_the_text_leaves_the_repository(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    machine = [path for path in MACHINE_PATHS if path in text]
    code_spans = [token.content for token in walk(tokens_of(name)) if token.type == "code_inline"]
    climbing = [
        path
        for span in code_spans
        for path in CLIMBING_PATH.findall(span)
        if inside_root(name, path) is None
    ]
    assert (machine, climbing) == ([], []), f"paths outside the repository in {name}"


def test_no_tracked_file_names_a_machine_folder() -> None:
    """Code and scripts may not lean on a folder outside the clone either."""
    found = subprocess.run(
        ["git", "grep", "-l", "-F", *(arg for path in MACHINE_PATHS for arg in ("-e", path))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert found.stdout.split() == []


@pytest.mark.parametrize(
    ("source", "target", "problem"),
    [
        ("README.md", "../shared/DESIGN.md", "leaves the repository"),
        ("docs/design.md", "../../x.md", "leaves the repository"),
        ("README.md", "/home/someone/README.md", "an absolute path"),
        ("README.md", "docs/missing.md", "not a tracked file"),
        ("docs/deployment.md", "../README.md#no-such-heading", "has no heading"),
    ],
)
def test_the_check_finds_dead_links(source: str, target: str, problem: str) -> None:
    """The check itself can fail: each kind of dead link is named."""
    assert problem in (problem_of(Link(source, target)) or "")


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("docs/deployment.md", "../README.md#configuration"),
        ("README.md", "docs/design.md#3-storage"),
        ("README.md", "LICENSE"),
        ("README.md", "docs/"),
        ("README.md", "https://example.invalid/page"),
        ("README.md", "#quick-start"),
    ],
)
def test_the_check_accepts_live_links(source: str, target: str) -> None:
    assert problem_of(Link(source, target)) is None
