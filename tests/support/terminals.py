"""A documented shell block run as a reader's terminal runs it: `bash -euo pipefail`,
in its own process group, so that Ctrl-C reaches every command the block started
(a server that bash did not `exec` among them)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from support.subprocess_server import spawn_piped


def in_a_terminal(text: str, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """`text` running as a long-running terminal, stdout and stderr as line-buffered pipes."""
    return spawn_piped(["bash", "-euo", "pipefail", "-c", text], cwd, env, new_session=True)


def hang_up(process: subprocess.Popen[str]) -> None:
    """Ctrl-C for the terminal's whole process group, then its end."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
