"""The servers under test as child processes, and what they cost: CPU seconds and RSS.

`keyturn serve` is started the way the end-to-end tests start it
(tests/support/subprocess_server.py): on port 0, its address read from the
`keyturn listening on HOST:PORT` line. The echo server (echo.py) prints the
same kind of line.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from support.subprocess_server import (
    LineCollector,
    ServerProcess,
    child_env,
    keyturn_command,
    run_cli,
    start_server,
)

ECHO_SCRIPT = Path(__file__).with_name("echo.py")
ECHO_LISTENING = re.compile(r"^echo listening on (?P<address>\S+:\d+)$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def workers_flag(workers: int | None, cwd: Path) -> list[str]:
    """`--workers N` when asked for and `keyturn serve --help` offers it, else nothing."""
    if workers is None:
        return []
    shown = subprocess.run(
        [*keyturn_command(), "serve", "--help"],
        cwd=cwd,
        env=child_env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--workers" not in shown.stdout:
        print(
            f"note: keyturn serve has no --workers flag; --workers {workers} is not passed",
            file=sys.stderr,
        )
        return []
    return ["--workers", str(workers)]


@contextlib.contextmanager
def keyturn_server(
    cwd: Path, settings: Mapping[str, str], extra_args: Sequence[str]
) -> Iterator[ServerProcess]:
    """A running `keyturn serve` (SIGTERM, then SIGKILL, on the way out)."""
    with start_server(cwd, settings, extra_args=extra_args) as server:
        yield server


def keyturn_cli(args: Sequence[str], cwd: Path, settings: Mapping[str, str]) -> str:
    """One `keyturn` command; what it printed on stdout."""
    return run_cli(args, cwd, settings).stdout


class EchoServer:
    """bench/harness/echo.py in a child process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ECHO_SCRIPT), "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._stdout = LineCollector(self.process.stdout, "echo-stdout")
        self._stderr = LineCollector(self.process.stderr, "echo-stderr")
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def await_listening(self) -> None:
        def listening(lines: Sequence[str]) -> bool:
            return any(ECHO_LISTENING.match(line) for line in lines)

        if not self._stdout.wait_for(listening, START_TIMEOUT_S):
            raise RuntimeError(f"the echo server did not start:\n{self._stderr.text()}")
        for line in self._stdout.lines:
            match = ECHO_LISTENING.match(line)
            if match:
                self.address = match["address"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stdout.join(5)
        self._stderr.join(5)


@contextlib.contextmanager
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        server.await_listening()
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far and resident memory now, of a server and its children."""

    cpu_seconds: float
    rss_bytes: tuple[int, ...]  # one per process


def usage_of(pid: int) -> Usage:
    """Summed over the process and its children (the workers of `--workers`, if any)."""
    root = psutil.Process(pid)
    cpu = 0.0
    rss: list[int] = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            cpu += times.user + times.system
            rss.append(process.memory_info().rss)
    return Usage(cpu, tuple(rss))
