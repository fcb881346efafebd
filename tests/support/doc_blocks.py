"""The fenced code blocks of the repository's documents, found by the section they
stand in, so that tests run exactly what a reader pastes.

A test names a block by its document, its section's heading and its place among the
section's blocks; `tests/unit/test_documented_blocks.py` keeps a table of which test
runs each shell and Python block, so a new block that no test runs fails CI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from markdown_it import MarkdownIt

from support.repository import ROOT

# The languages whose blocks are commands or code a reader runs.
RUNNABLE = frozenset({"bash", "sh", "shell", "console", "python", "py"})


@dataclass(frozen=True)
class Block:
    document: str  # path from the repository root
    heading: str  # the nearest heading above the block
    index: int  # its place among the blocks of that section, from 0
    language: str
    line: int  # 1-based line of the opening fence
    text: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line} (section {self.heading!r}, block {self.index})"


@cache
def blocks_of(document: str) -> tuple[Block, ...]:
    """Every fenced block of `document` (a path from the root), in order."""
    tokens = MarkdownIt("commonmark").parse((ROOT / document).read_text())
    found: list[Block] = []
    heading = ""
    per_heading: dict[str, int] = {}
    for at, token in enumerate(tokens):
        if token.type == "heading_open":
            heading = tokens[at + 1].content
        elif token.type == "fence" and token.map is not None:
            index = per_heading.get(heading, 0)
            per_heading[heading] = index + 1
            language = token.info.split()[0] if token.info.strip() else ""
            found.append(Block(document, heading, index, language, token.map[0] + 1, token.content))
    return tuple(found)


def block(document: str, heading: str, index: int = 0) -> Block:
    """The `index`th block of the section `heading` of `document`."""
    matching = [b for b in blocks_of(document) if b.heading == heading and b.index == index]
    assert matching, f"{document} has no block {index} under the heading {heading!r}"
    return matching[0]


def substituted(text: str, replacements: dict[str, str]) -> str:
    """`text` with each documented value replaced by this run's, every one of them
    present: a document that stops naming a value fails instead of running unchanged."""
    for documented, actual in replacements.items():
        assert documented in text, f"the documented {documented!r} is gone from the block"
        text = text.replace(documented, actual)
    return text


def executed(
    found: Block, names: dict[str, Any], replacements: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a Python block with `names` defined (those it leaves to the reader), its
    documented values replaced (see `substituted`); the names it defined afterwards."""
    text = substituted(found.text, replacements) if replacements else found.text
    exec(compile(text, found.where, "exec"), names)
    return names


def commands_of(text: str) -> list[str]:
    """The command lines of a shell block: comments and blank lines dropped, trailing
    comments cut, continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def runnable_blocks(document: str) -> list[Block]:
    return [b for b in blocks_of(document) if b.language in RUNNABLE]
