"""`keyturn serve --workers 2`: one port, two supervised processes, one listening line.

Every test runs the real command. Workers are told apart by the pid in their
`keyturn-worker` trailer and by the supervisor's log; waits are on log lines
and answers, each bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from conftest import BACKENDS, TEST_SECRET
from support.catalog import new_license
from support.metrics import KEYS, calls, scrape
from support.postgres import create_database, drop_database
from support.subprocess_server import (
    CLI_TIMEOUT_S,
    child_env,
    create_token,
    keyturn_command,
    run_cli_async,
    sqlite_settings,
    start_server,
)
from support.threads import run_in_own_loop
from support.workers import (
    WORKER_EXITED,
    answering_worker,
    answering_workers,
    channel_to,
    listening_workers,
    worker_pids,
)

WAIT_S = 60.0
GRACE = {"KEYTURN_SHUTDOWN_GRACE_SECONDS": "5"}


def alive(pid: int) -> bool:
    """True while `pid` exists (a zombie not yet reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_two_workers_share_one_port_chosen_with_0_and_both_answer(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db", **GRACE)
    with start_server(tmp_path, settings, workers=2) as server:
        pids = await listening_workers(server)
        assert sorted(pids) == [0, 1], server.stderr_tail()
        assert len(set(pids.values())) == 2
        assert server.pid not in pids.values(), "the supervisor serves no call itself"
        assert server.port != 0
        answered = await answering_workers(server.address, set(pids.values()))
        assert set(answered) == set(pids.values()), f"answers came from {answered}"
        assert sum("keyturn listening on" in line for line in server.stdout_lines) == 1
        code = server.stop()
    assert code == 0, server.stderr_tail()
    assert not any(alive(pid) for pid in pids.values())


async def test_a_killed_worker_is_restarted_and_calls_keep_being_answered(tmp_path: Path) -> None:
    settings = sqlite_settings(
        tmp_path / "keyturn.db", KEYTURN_METRICS_LISTEN="127.0.0.1:0", **GRACE
    )
    with start_server(tmp_path, settings, workers=2) as server:
        pids = await listening_workers(server)
        before = await answering_workers(server.address, set(pids.values()))
        assert set(before) == set(pids.values())

        os.kill(pids[1], signal.SIGKILL)
        await server.await_stderr(
            lambda lines: any(
                (m := WORKER_EXITED.search(line)) and int(m["pid"]) == pids[1] for line in lines
            ),
            WAIT_S,
        )
        # Its listener went with it: every new connection now reaches a live worker.
        between = [await answering_worker(server.address) for _ in range(10)]
        assert pids[1] not in between
        await server.await_stderr(lambda lines: worker_pids(lines)[1] != pids[1], WAIT_S)
        restarted = worker_pids(server.stderr_lines)
        assert restarted[0] == pids[0]
        assert alive(restarted[1])
        after = await answering_workers(server.address, set(restarted.values()))
        assert set(after) == set(restarted.values())

        metrics = await scrape(server.metrics_address)
        assert metrics.value("keyturn_worker_restarts_total") == 1
        # Calls answered by the killed worker still count: counters only grow.
        made = len(before) + len(between) + len(after)
        assert calls(metrics, KEYS, "OK") == made
        assert "restarting it in 0.5s" in server.stderr_text()
        code = server.stop()
    assert code == 0, server.stderr_tail()


@pytest.fixture(params=BACKENDS)
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    admin: str = request.getfixturevalue("pg_admin")
    name = f"keyturn_fresh_{uuid.uuid4().hex[:12]}"
    yield run_in_own_loop(create_database(admin, name))
    run_in_own_loop(drop_database(admin, name))


async def test_a_fresh_database_is_migrated_and_keyed_once_before_workers_start(
    fresh_database_url: str, tmp_path: Path
) -> None:
    settings = {
        "KEYTURN_DATABASE_URL": fresh_database_url,
        "KEYTURN_SECRET_KEY": TEST_SECRET,
        **GRACE,
    }
    with start_server(tmp_path, settings, workers=2) as server:
        pids = await listening_workers(server)
        assert set(await answering_workers(server.address, set(pids.values()))) == set(
            pids.values()
        )
        keys = await run_cli_async(["keys", "list"], tmp_path, settings)
    assert len(keys.stdout.splitlines()) == 1, keys.stdout
    assert "signing" in keys.stdout
    assert "Traceback" not in server.stderr_text()


def serve_to_the_end(
    cwd: Path, settings: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*keyturn_command(), "serve", "--listen", "127.0.0.1:0", *args],
        cwd=cwd,
        env=child_env(settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,  # a supervisor restarting a failing worker would run until this
        check=False,
    )


async def test_a_worker_that_cannot_start_stops_everything_with_its_error(tmp_path: Path) -> None:
    # The supervisor prepares the database; only a worker builds the email dispatcher,
    # which compiles the replaced templates: one does not parse.
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "license_key.subject.j2").write_text("Your key {{ license_key ")
    settings = sqlite_settings(
        tmp_path / "keyturn.db",
        KEYTURN_SMTP_HOST="127.0.0.1",
        KEYTURN_MAIL_TEMPLATES=str(templates),
    )
    result = await asyncio.to_thread(serve_to_the_end, tmp_path, settings, "--workers", "2")
    assert result.returncode == 1, result.stderr
    assert "listening" not in result.stdout
    assert "could not start: TemplateSyntaxError" in result.stderr
    assert "restarting" not in result.stderr
    started = [int(p) for p in _started_pids(result.stderr)]
    assert len(started) == 2
    assert not any(alive(pid) for pid in started)


def _started_pids(log: str) -> list[str]:
    return [
        line.rpartition("(pid ")[2].rstrip(")")
        for line in log.splitlines()
        if "keyturn.supervisor worker" in line and " started (pid " in line
    ]


async def test_a_wrong_secret_stops_the_supervisor_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    database = tmp_path / "keyturn.db"
    await run_cli_async(["migrate"], tmp_path, sqlite_settings(database))
    await run_cli_async(["keys", "list"], tmp_path, sqlite_settings(database))  # the first key
    wrong = sqlite_settings(database, KEYTURN_SECRET_KEY="another-secret-" + "x" * 32)
    result = await asyncio.to_thread(serve_to_the_end, tmp_path, wrong, "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert "stored data cannot be decrypted with this secret key" in result.stderr
    assert _started_pids(result.stderr) == []
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_port_in_use_is_refused_clearly(tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = sqlite_settings(tmp_path / "keyturn.db")
        result = await asyncio.to_thread(
            serve_to_the_end,
            tmp_path,
            settings,
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        )
    assert result.returncode == 2, result.stderr
    assert f"keyturn: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert _started_pids(result.stderr) == []


async def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db", **GRACE)
    with start_server(tmp_path, settings, workers=2) as server:
        pids = await listening_workers(server)
        assert all(alive(pid) for pid in pids.values())
        server.signal(signal.SIGKILL)
        assert await server.await_exit(WAIT_S) == -signal.SIGKILL
        await asyncio.to_thread(wait_until_ended, list(pids.values()), WAIT_S)
        assert not any(alive(pid) for pid in pids.values())
    assert any("the supervisor is gone: shutting down" in line for line in server.stderr_lines)


def wait_until_ended(pids: list[int], within_s: float) -> None:
    """Block until every process of `pids` has ended, at most `within_s` (pidfds: no polling)."""
    fds: list[int] = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    deadline = time.monotonic() + within_s
    try:
        while fds and time.monotonic() < deadline:
            ended, _, _ = select.select(fds, [], [], deadline - time.monotonic())
            for fd in ended:
                fds.remove(fd)
                os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


async def test_a_watch_on_one_worker_sees_what_another_worker_writes(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "keyturn.db", KEYTURN_WATCH_POLL_SECONDS="0.05", **GRACE)
    token = await create_token(tmp_path, settings)
    auth = (("authorization", f"Bearer {token}"),)
    with start_server(tmp_path, settings, workers=2) as server:
        pids = await listening_workers(server)
        watcher = await channel_to(server.address, pids[0])
        writer = await channel_to(server.address, pids[1])
        try:
            stream = fulfillment_pb2_grpc.FulfillmentServiceStub(watcher).WatchEntitlementEvents(
                ful.WatchEntitlementEventsRequest(after_sequence=0), metadata=auth, timeout=WAIT_S
            )
            catalog = catalog_pb2_grpc.CatalogServiceStub(writer)
            fulfillment = fulfillment_pb2_grpc.FulfillmentServiceStub(writer)
            written = [
                await new_license(catalog, fulfillment, auth, auth, seats) for seats in (1, 2, 3)
            ]
            seen: list[ful.EntitlementEvent] = []
            while {e.entitlement_id for e in seen} != {w.entitlement_id for w in written}:
                seen.append((await stream.read()).event)
            stream.cancel()
        finally:
            await watcher.close()
            await writer.close()
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
    assert len({e.entitlement_id for e in seen}) == 3
