"""The real `keyturn` command in a child process: a server on a free port, or one CLI call.

`start_server()` runs `keyturn serve --listen 127.0.0.1:0` in a working directory
with the given `KEYTURN_*` settings, waits (bounded) for the one line
`keyturn listening on HOST:PORT` on stdout and yields a `ServerProcess`. It runs
one process (KEYTURN_WORKERS=1) unless the test asks for more workers: the
default, one per CPU, would only make every test start slower (about twice as
long for two). KEYTURN_TEST_WORKERS=N runs every such server with N workers, to
check the suite under the production default. With
KEYTURN_METRICS_LISTEN set, the `keyturn metrics on HOST:PORT` line printed
before it gives `metrics_address`. Reader
threads collect stdout and stderr line by line, so a test can wait, with a
timeout and without sleeping, until the server's log shows something. On exit
the process gets SIGTERM, then SIGKILL if it has not ended in time; nothing is
left running.

`start_dispatcher()` runs `keyturn dispatch` the same way (it prints no listening
line); `run_cli()` runs one other `keyturn` command (tokens, catalog...) to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

LISTENING_RE = re.compile(r"^keyturn listening on (?P<address>\S+:(?P<port>\d+))$")
METRICS_RE = re.compile(r"^keyturn metrics on (?P<address>\S+:\d+)$")
ADMIN_RE = re.compile(r"^keyturn admin port \(mutual TLS\) on (?P<address>\S+)$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
LOG_TAIL = 400

Lines = Sequence[str]


def keyturn_command() -> list[str]:
    """The venv's `keyturn` script beside this interpreter, else `python -m keyturn.server.cli`."""
    script = Path(sys.executable).parent / "keyturn"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "keyturn.server.cli"]


# Tests and benchmarks drive thousands of calls, some with wrong credentials, from one
# loopback peer: the abuse limits' code runs in each of them, with limits no test
# reaches, except where a test sets its own (tests/e2e/test_abuse_limits_workers.py).
UNREACHED_LIMITS = {
    "KEYTURN_RATE_LIMIT_PER_PEER": "1000000/second",
    "KEYTURN_RATE_LIMIT_PER_CREDENTIAL": "1000000/second",
    "KEYTURN_RATE_LIMIT_PER_TOKEN": "1000000/second",
    "KEYTURN_FAILED_CREDENTIALS_LIMIT": "1000000/minute",
}


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its KEYTURN_* variables, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env["PYTHONUNBUFFERED"] = "1"
    # The HTTP port is on by default, at a fixed port: tests run side by side.
    env["KEYTURN_HTTP_LISTEN"] = "127.0.0.1:0"
    env.update(UNREACHED_LIMITS)
    env.update(settings)
    return env


class LineCollector:
    """Lines read from a pipe by a thread; waiters are woken at every new line and at EOF."""

    def __init__(self, pipe: IO[str], name: str) -> None:
        self._pipe = pipe
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self._listeners: list[queue.SimpleQueue[str | None]] = []
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self._pipe:
                line = raw.rstrip("\n")
                with self._changed:
                    self._lines.append(line)
                    for listener in self._listeners:
                        listener.put(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._closed = True
                for listener in self._listeners:
                    listener.put(None)
                self._changed.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    def text(self) -> str:
        return "\n".join(self.lines)

    def listen(self) -> queue.SimpleQueue[str | None]:
        """A queue of every line so far and every line to come; None marks the end."""
        listener: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        with self._changed:
            for line in self._lines:
                listener.put(line)
            if self._closed:
                listener.put(None)
            else:
                self._listeners.append(listener)
        return listener

    def wait_for(self, predicate: Callable[[Lines], bool], timeout: float) -> bool:
        """Block until `predicate(lines)` holds (True), or the pipe closes or time runs out."""
        with self._changed:
            self._changed.wait_for(lambda: predicate(self._lines) or self._closed, timeout=timeout)
            return predicate(self._lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class ServerProcess:
    """A running `keyturn serve`: its address, its Popen and its output so far."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        self.process = process
        self.address = ""
        self.port = 0
        self.metrics_address = ""
        self.listening_at = 0.0  # time.monotonic() when the listening line was read
        self._stdout = LineCollector(process.stdout, f"keyturn-{process.pid}-stdout")
        self._stderr = LineCollector(process.stderr, f"keyturn-{process.pid}-stderr")

    def await_listening(self, timeout: float) -> None:
        """Read stdout (in the collector's thread) until the listening line, within `timeout`."""
        stdout = self._stdout.listen()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"keyturn serve printed no 'listening on' line within {timeout}s; "
                    f"stderr:\n{self.stderr_text()}"
                ) from None
            if line is None:
                code = self.process.wait(STOP_TIMEOUT_S)
                self._stderr.join(5)
                raise RuntimeError(
                    f"keyturn serve exited with code {code} before listening; "
                    f"stdout:\n{self._stdout.text()}\nstderr:\n{self.stderr_text()}"
                )
            metrics = METRICS_RE.match(line)
            if metrics:
                self.metrics_address = metrics["address"]
            match = LISTENING_RE.match(line)
            if match:
                self.address = match["address"]
                self.port = int(match["port"])
                self.listening_at = time.monotonic()
                return

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr_lines(self) -> list[str]:
        return self._stderr.lines

    @property
    def stdout_lines(self) -> list[str]:
        return self._stdout.lines

    def stderr_text(self) -> str:
        return self._stderr.text()

    def stderr_tail(self, lines: int = LOG_TAIL) -> str:
        return "\n".join(self._stderr.lines[-lines:])

    def wait_for_stderr(self, predicate: Callable[[Lines], bool], timeout: float) -> None:
        """Block until `predicate(stderr lines)` holds; AssertionError with the log otherwise."""
        if not self._stderr.wait_for(predicate, timeout):
            state = "exited" if self.process.poll() is not None else "still running"
            raise AssertionError(
                f"server log did not show what was awaited within {timeout}s "
                f"(process {state}); stderr, last lines:\n{self.stderr_tail()}"
            )

    async def await_stderr(self, predicate: Callable[[Lines], bool], within_s: float) -> None:
        """`wait_for_stderr` without blocking the event loop (calls in flight keep running)."""
        await asyncio.to_thread(self.wait_for_stderr, predicate, within_s)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit code; AssertionError (with the log) if the process runs past `timeout`."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"server did not exit within {timeout}s; stderr, last lines:\n{self.stderr_tail()}"
            ) from None
        self._stdout.join(timeout)
        self._stderr.join(timeout)
        return code

    async def await_exit(self, within_s: float) -> int:
        """`wait_exit` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_exit, within_s)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (negative when killed)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait()
        self._stdout.join(5)
        self._stderr.join(5)
        for pipe in (self.process.stdout, self.process.stderr, self.process.stdin):
            if pipe is not None:
                pipe.close()
        return self.process.returncode


def _spawn(args: Sequence[str], cwd: Path, settings: Mapping[str, str]) -> subprocess.Popen[str]:
    return spawn_piped([*keyturn_command(), *args], cwd, child_env(settings))


def spawn_piped(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], *, new_session: bool = False
) -> subprocess.Popen[str]:
    """`argv` with stdout and stderr as line-buffered text pipes (for `ServerProcess`);
    `new_session`: in a process group of its own, as a terminal's commands are."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=new_session,
    )


@contextlib.contextmanager
def start_server(
    cwd: Path,
    settings: Mapping[str, str],
    listen: str = "127.0.0.1:0",
    timeout: float = START_TIMEOUT_S,
    workers: int | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """`keyturn serve` in `cwd` with `settings` (KEYTURN_* variables), stopped at the end;
    `workers` processes (KEYTURN_WORKERS; default KEYTURN_TEST_WORKERS, else 1) unless
    `settings` name their own number; `extra_args` go after `--listen`."""
    if workers is None:
        workers = int(os.environ.get("KEYTURN_TEST_WORKERS", "1"))
    process = _spawn(
        ["serve", "--listen", listen, *extra_args],
        cwd,
        {"KEYTURN_WORKERS": str(workers), **settings},
    )
    server = ServerProcess(process)
    try:
        server.await_listening(timeout)
        yield server
    except BaseException:
        server.stop()
        # Shown by pytest under "Captured stderr" of the failed test.
        print(
            f"--- keyturn serve (pid {process.pid}) stderr, last {LOG_TAIL} lines:", file=sys.stderr
        )
        print(server.stderr_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def serving(
    cwd: Path, settings: Mapping[str, str], **options: Any
) -> AsyncIterator[ServerProcess]:
    """`start_server` for async tests: started and stopped off the event loop."""
    manager = start_server(cwd, settings, **options)
    server = await asyncio.to_thread(manager.__enter__)
    try:
        yield server
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


@contextlib.asynccontextmanager
async def replicas(
    cwd: Path, settings: Mapping[str, str], count: int, workers: int
) -> AsyncIterator[list[ServerProcess]]:
    """`count` servers of `workers` processes each on one (already migrated) database,
    started side by side; on a failure each one's stderr is printed (pytest shows it
    under "Captured stdout call")."""
    async with contextlib.AsyncExitStack() as stack:
        managers = [start_server(cwd, settings, workers=workers) for _ in range(count)]
        started = await asyncio.gather(*(asyncio.to_thread(m.__enter__) for m in managers))
        for manager in managers:
            stack.push_async_callback(asyncio.to_thread, manager.__exit__, None, None, None)
        try:
            yield list(started)
        except BaseException:
            for server in started:
                print(f"--- keyturn serve (pid {server.pid}) stderr:\n{server.stderr_tail(80)}")
            raise


@contextlib.contextmanager
def start_dispatcher(cwd: Path, settings: Mapping[str, str]) -> Iterator[ServerProcess]:
    """`keyturn dispatch` in `cwd` with `settings`; its output collected, stopped at the end."""
    dispatcher = ServerProcess(_spawn(["dispatch"], cwd, settings))
    try:
        yield dispatcher
    finally:
        dispatcher.stop()


def run_to_the_end(
    args: Sequence[str], cwd: Path, settings: Mapping[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """One `keyturn` command to completion, whatever its exit code (a `serve` that
    refuses to start, say); TimeoutExpired after `timeout`."""
    return subprocess.run(
        [*keyturn_command(), *args],
        cwd=cwd,
        env=child_env(settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(
    args: Sequence[str], cwd: Path, settings: Mapping[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """One `keyturn` command to completion; RuntimeError with its output if it fails."""
    result = run_to_the_end(args, cwd, settings, timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"keyturn {' '.join(args)} exited with {result.returncode}:\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


async def run_cli_async(
    args: Sequence[str], cwd: Path, settings: Mapping[str, str], within_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`run_cli` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(run_cli, args, cwd, settings, within_s)


def sqlite_settings(database: Path, **extra: str) -> dict[str, str]:
    """KEYTURN_* settings for a SQLite file (its secret is generated beside it)."""
    return {"KEYTURN_DATABASE_URL": f"sqlite+aiosqlite:///{database}", **extra}


async def create_token(
    cwd: Path,
    settings: Mapping[str, str],
    scopes: Sequence[str] = ("catalog", "fulfill", "read"),
    *,
    create: bool = True,
) -> str:
    """`keyturn tokens create`: the bearer secret it prints (once) on stdout. With --create
    unless told otherwise (a Keyturn older than the flag), as tests make their databases
    on purpose, often before any server starts."""
    args = ["tokens", "create", *(["--create"] if create else [])]
    for scope in scopes:
        args += ["--scope", scope]
    result = await run_cli_async(args, cwd, settings)
    secret = result.stdout.strip()
    if not secret or "\n" in secret:
        raise RuntimeError(f"keyturn tokens create printed {result.stdout!r}, not one token")
    return secret
