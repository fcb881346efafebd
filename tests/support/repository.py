"""The repository as a clone has it: its files, listed by git, and copies of them.

Tests of what a new user does (the quick start, installing the client, following a
link) work on the files a clone holds, not on whatever this checkout has lying
around (venvs, build folders, databases).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clone_files(pattern: str = "*", *, new_too: bool = False) -> list[str]:
    """Paths (relative to the root) of the tracked files matching `pattern`; with
    `new_too`, also files not yet added but not ignored (they would be committed)."""
    extra = ["--others", "--exclude-standard"] if new_too else []
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", *extra, "--", pattern],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def copy_clone(destination: Path, under: str = "") -> Path:
    """Copy the clone's files (tracked and new; only those below `under`, if given)
    into `destination`, keeping their paths; returns the copy of `under`."""
    prefix = f"{under.rstrip('/')}/" if under else ""
    for name in clone_files(f"{prefix}*", new_too=True):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return destination / under
