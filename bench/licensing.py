"""Licensing under load: Keyturn's seat RPCs against their ceilings, in one run.

    .venv/bin/python bench/licensing.py [--scale small|full] [--duration SECONDS]
        [--admin-url URL] [--workers N] [--load-processes N] [--json FILE]

Creates a fresh PostgreSQL database (dropped at the end, also on Ctrl-C or a
failure), starts `keyturn serve` on it, seeds it (entitlements through the
Fulfillment API, the bulk by SQL), then drives ActivateSeat, RenewLease,
ReleaseSeat and CheckLicense at 16 and 64 calls in flight from separate load
processes. In the same run it measures the ceilings: a grpc.aio echo server
driven by the same load generator, and pgbench running the server's seat SQL
(bench/pgbench/activate_seat.sql). Last, the server's memory after 100,000
new activations (2,000 at small scale). A progress line goes to stderr; the tables
and the targets, met or not, to stdout. See README, "Benchmark".
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Protocol

# support.postgres and support.subprocess_server, shared with the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from keyturn.licensing.v1 import licensing_pb2 as lic

from harness import report
from harness.database import Database, admin_url, fresh_database
from harness.load import Job, LoadPool, LoadResult
from harness.pgbench import find_pgbench, run_pgbench
from harness.progress import Progress
from harness.scale import SCALES, Scale
from harness.seed import (
    PGBENCH_HOT,
    PRODUCT_ID,
    Seeded,
    live_seats,
    seed,
    set_seats,
)
from harness.servers import (
    echo_server,
    keyturn_cli,
    keyturn_server,
    usage_of,
    workers_flag,
)

HIGH, LOW = 64, 16  # calls in flight
PGBENCH_CLIENTS = 16
RELEASE_PER_ACTIVATE = 2.0  # guess of ReleaseSeat's rate over ActivateSeat's, to size leases
OVERSELL_FREE_SEATS = 64  # free seats left on the hot entitlement for the limit check
OVERSELL_DEVICES = 4 * OVERSELL_FREE_SEATS


class Child(Protocol):
    """A server in a child process (keyturn serve, the echo server)."""

    @property
    def pid(self) -> int: ...

    @property
    def process(self) -> subprocess.Popen[str]: ...


class Bench:
    """The load pool, the progress line and the timings shared by every measurement."""

    def __init__(self, pool: LoadPool, progress: Progress, duration: float, warmup: float):
        self.pool = pool
        self.progress = progress
        self.duration = duration
        self.warmup = warmup

    def measure(self, label: str, name: str, job: Job, server: Child) -> report.Measured:
        """One load measurement; server CPU sampled at its start and end instants."""
        code = server.process.poll()
        if code is not None:
            raise RuntimeError(f"the server under test (pid {server.pid}) exited with {code}")
        pid = server.pid
        self.progress.phase(label)
        samples = []
        result = self.pool.run(
            job,
            self.warmup,
            self.duration,
            tick=lambda since, calls: self.progress.measuring(
                since, float("inf") if job.max_calls else self.duration, calls
            ),
            on_start=lambda: samples.append(usage_of(pid)),
            on_end=lambda: samples.append(usage_of(pid)),
        )
        before, after = samples
        cpu = (after.cpu_seconds - before.cpu_seconds) / max(1, result.calls)
        summary = _summary(result)
        if not job.max_calls and result.window_s < self.duration * 0.99:
            summary += f" (leases ran out after {result.window_s:.1f} s)"
        self.progress.done(summary)
        return report.Measured(name, job.in_flight, result, cpu, after.rss_bytes)


def _summary(result: LoadResult) -> str:
    errors = sum(result.errors.values())
    return f"{result.calls_per_s:,.0f} calls/s, p99 {result.p99_s * 1000:.1f} ms, {errors:,} errors"


def _keyturn_settings(db: Database) -> dict[str, str]:
    return {
        "KEYTURN_DATABASE_URL": db.sqlalchemy_url,
        "KEYTURN_SECRET_KEY": secrets.token_urlsafe(32),
        "KEYTURN_AUTO_MIGRATE": "false",
        "KEYTURN_LOG_LEVEL": "WARNING",  # no log line per RPC
    }


def _seeded_counts(scale: Scale, seeded: Seeded) -> dict[str, int]:
    return {
        "entitlements": seeded.entitlement_rows,
        "activations": seeded.activation_rows,
        "bulk_entitlements": seeded.bulk,
        "driven_entitlements": len(seeded.driven),
        "history_released": scale.history_released,
        "big_live": scale.big_live,
    }


def _rpc_rows(
    bench: Bench, figures: report.Figures, seeded: Seeded, target: str, server: Child
) -> None:
    """The main table: each RPC at 16 and 64 in flight on the driven entitlements."""
    keys = tuple(d.license_key for d in seeded.driven)
    base = Job(kind="check", target=target, in_flight=LOW, product_id=PRODUCT_ID, keys=keys)
    for in_flight in (LOW, HIGH):
        job = replace(base, in_flight=in_flight, tag=f"check{in_flight}")
        figures.rpcs[("CheckLicense", in_flight)] = bench.measure(
            f"CheckLicense @{in_flight}", "CheckLicense", job, server
        )
    for_release: list[str] = []
    for in_flight in (LOW, HIGH):
        job = replace(
            base, kind="activate", in_flight=in_flight, tag=f"act{in_flight}", collect_leases=True
        )
        m = bench.measure(f"ActivateSeat @{in_flight}", "ActivateSeat", job, server)
        figures.rpcs[("ActivateSeat", in_flight)] = m
        for_release += m.load.leases
    _renew_rows(bench, figures, base, server)
    rate = figures.rpcs[("ActivateSeat", HIGH)].load.calls_per_s
    _release_rows(bench, figures, base, server, for_release, rate)


def _setup_leases(bench: Bench, base: Job, server: Child, rpc: str, count: int) -> list[str]:
    """`count` new activations (at 64 in flight, not measured): their leases."""
    job = replace(
        base, kind="activate", in_flight=HIGH, tag=f"for{rpc}", collect_leases=True, max_calls=count
    )
    result = bench.measure(f"leases for {rpc}", "", job, server).load
    if len(result.leases) < count:
        raise RuntimeError(f"activations for {rpc} failed: {result.errors}")
    return list(result.leases)


def _renew_rows(bench: Bench, figures: report.Figures, base: Job, server: Child) -> None:
    """Each slot renews one lease (taken in a setup phase) with its newest token."""
    leases = _setup_leases(bench, base, server, "RenewLease", LOW + HIGH)
    for in_flight in (LOW, HIGH):
        held, leases = tuple(leases[:in_flight]), leases[in_flight:]
        job = replace(base, kind="renew", in_flight=in_flight, leases=held, tag="renew")
        figures.rpcs[("RenewLease", in_flight)] = bench.measure(
            f"RenewLease @{in_flight}", "RenewLease", job, server
        )


def _release_rows(
    bench: Bench,
    figures: report.Figures,
    base: Job,
    server: Child,
    leases: list[str],
    activate_rate: float,
) -> None:
    """Releases of leases activated before: those of the ActivateSeat rows, topped up to
    what two rows are expected to release (a row whose leases run out ends early)."""
    needed = int(2 * RELEASE_PER_ACTIVATE * activate_rate * bench.duration) + 4 * HIGH
    if len(leases) < needed:
        leases += _setup_leases(bench, base, server, "ReleaseSeat", needed - len(leases))
    random.Random(7).shuffle(leases)
    half = len(leases) // 2
    for in_flight, share in ((LOW, leases[:half]), (HIGH, leases[half:])):
        job = replace(base, kind="release", in_flight=in_flight, leases=tuple(share), tag="rel")
        figures.rpcs[("ReleaseSeat", in_flight)] = bench.measure(
            f"ReleaseSeat @{in_flight} ({len(share):,} leases)", "ReleaseSeat", job, server
        )


def _history_rows(
    bench: Bench, figures: report.Figures, seeded: Seeded, target: str, server: Child
) -> None:
    """CheckLicense, then ActivateSeat, all calls on one entitlement: fresh, history, big."""
    on = {"fresh": seeded.fresh, "history": seeded.history, "big": seeded.big}
    for rpc, kind in (("CheckLicense", "check"), ("ActivateSeat", "activate")):
        for which, entitlement in on.items():
            job = Job(
                kind=kind,
                target=target,
                in_flight=HIGH,
                product_id=PRODUCT_ID,
                keys=(entitlement.license_key,),
                tag=f"{kind}-{which}",
            )
            label = report.history_label(figures, rpc, which)
            figures.history[(rpc, which)] = bench.measure(label, rpc, job, server)


def _oversell(bench: Bench, db: Database, seeded: Seeded, target: str) -> report.Oversell:
    """Leave 64 seats free on the hot entitlement, send 256 new devices at once, count.

    Nothing else claims its seats meanwhile: its own rows ran two measurements ago.
    """
    entitlement = seeded.fresh.entitlement_id
    before, _ = live_seats(db.dsn, entitlement)
    seats = before + OVERSELL_FREE_SEATS
    set_seats(db.dsn, entitlement, seats)
    job = Job(
        kind="activate",
        target=target,
        in_flight=HIGH,
        product_id=PRODUCT_ID,
        keys=(seeded.fresh.license_key,),
        tag="oversell",
        max_calls=OVERSELL_DEVICES,
    )
    bench.progress.phase(f"hot entitlement limit: {OVERSELL_DEVICES} devices for 64 seats")
    result = bench.pool.run(
        job,
        0.0,
        0.0,
        tick=lambda since, calls: bench.progress.measuring(since, float("inf"), calls),
    )
    after, _ = live_seats(db.dsn, entitlement)
    bench.progress.done(f"{result.codes.get('OK', 0)} granted, live seats {after:,}/{seats:,}")
    return report.Oversell(seats, before, OVERSELL_DEVICES, result.codes, after)


def _memory_run(
    bench: Bench, figures: report.Figures, seeded: Seeded, target: str, server: Child, count: int
) -> None:
    """`count` new devices on the driven entitlements, 64 in flight (last, so that their rows
    change no other measurement): the server's RSS before and after."""
    before = usage_of(server.pid).rss_bytes
    job = Job(
        kind="activate",
        target=target,
        in_flight=HIGH,
        product_id=PRODUCT_ID,
        keys=tuple(d.license_key for d in seeded.driven),
        tag="memory",
        max_calls=count,
    )
    measured = bench.measure(f"memory: {count:,} activations", "ActivateSeat", job, server)
    figures.memory = report.MemoryRun(count, before, measured)


def _pgbench_rows(
    progress: Progress, figures: report.Figures, db: Database, bulk: int, duration: float
) -> None:
    pgbench = find_pgbench()
    if pgbench is None:
        figures.pgbench_missing = "no pgbench on PATH or under /usr/lib/postgresql/*/bin"
        progress.say(f"pgbench: {figures.pgbench_missing}")
        return
    runs = {
        "spread": (f"pgbench activate_seat, random of {bulk:,}", {"first": 1, "last": bulk}),
        "hot": ("pgbench activate_seat, one row", {"first": PGBENCH_HOT, "last": PGBENCH_HOT}),
    }
    for key, (label, variables) in runs.items():
        progress.phase(label)
        result = run_pgbench(
            pgbench,
            db.libpq_env(),
            "activate_seat",
            variables,
            PGBENCH_CLIENTS,
            duration,
            tick=lambda seconds: progress.update(f"{seconds:.1f}/{duration:g} s"),
        )
        progress.done(f"{result.tps:,.0f} tx/s, {result.failed} failed")
        figures.pgbench[key] = result


def run(
    args: argparse.Namespace, stack: contextlib.ExitStack, progress: Progress
) -> report.Figures:
    scale = SCALES[args.scale]
    duration = args.duration or scale.duration
    warmup = min(scale.warmup, duration / 2)
    progress.phase("PostgreSQL: a fresh database")
    admin = stack.enter_context(admin_url(args.admin_url))
    db = stack.enter_context(fresh_database(admin))
    progress.done(f"{db.name} on {db.libpq_env()['PGHOST']}:{db.libpq_env()['PGPORT']}")

    cwd = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyturn-bench-")))
    settings = _keyturn_settings(db)
    progress.phase("keyturn migrate, tokens create, serve")
    keyturn_cli(["migrate"], cwd, settings)
    scopes = ["--scope", "catalog", "--scope", "fulfill", "--scope", "read"]
    token = keyturn_cli(["tokens", "create", *scopes], cwd, settings).strip()
    serve_args = workers_flag(args.workers, cwd)
    server = stack.enter_context(keyturn_server(cwd, settings, serve_args))
    progress.done(f"listening on {server.address}")

    progress.phase(f"seeding ({scale.name} scale)")
    began = time.monotonic()
    seeded = seed(server.address, token, db.dsn, scale)
    progress.done(
        f"{seeded.entitlement_rows:,} entitlements, {seeded.activation_rows:,} activations "
        f"in {time.monotonic() - began:.1f} s"
    )
    figures = report.Figures(
        scale=scale.name,
        duration_s=duration,
        warmup_s=warmup,
        load_processes=args.load_processes,
        serve_args=serve_args,
        seeded=_seeded_counts(scale, seeded),
    )

    echo = stack.enter_context(echo_server())
    pool = LoadPool(args.load_processes)
    stack.callback(pool.close)
    bench = Bench(pool, progress, duration, warmup)
    payload = lic.ActivateSeatRequest(
        license_key=seeded.driven[0].license_key,
        product_id=PRODUCT_ID,
        fingerprint="echo64-p0-63-123456",
        label="bench device",
    ).SerializeToString()
    for in_flight in (LOW, HIGH):
        job = Job(kind="echo", target=echo.address, in_flight=in_flight, payload=payload)
        figures.echo[in_flight] = bench.measure(f"echo @{in_flight}", "echo", job, echo)
    _rpc_rows(bench, figures, seeded, server.address, server)
    _history_rows(bench, figures, seeded, server.address, server)
    figures.oversell = _oversell(bench, db, seeded, server.address)
    _pgbench_rows(progress, figures, db, seeded.bulk, duration)
    _memory_run(bench, figures, seeded, server.address, server, scale.memory_activations)
    return figures


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/licensing.py", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument(
        "--duration", type=float, help="seconds per measurement (full: 10, small: 3)"
    )
    parser.add_argument(
        "--admin-url",
        "--database-url",
        dest="admin_url",
        help="a PostgreSQL server where this user may create databases "
        "(postgresql://user@host:port/db; the benchmark creates its own database there and "
        "drops it); default: as the tests find one (KEYTURN_TEST_PG_ADMIN_URL, "
        "127.0.0.1:5432, else a throwaway cluster)",
    )
    parser.add_argument(
        "--workers", type=int, help="pass --workers N to keyturn serve (if it has that flag)"
    )
    parser.add_argument(
        "--load-processes", type=int, default=2, help="load generator processes (default 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    return parser


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    progress = Progress()
    began = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            try:
                figures = run(args, stack, progress)
            finally:
                # Clean-up (servers, load processes, the database) runs to its end.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                progress.say("stopping the servers, dropping the database")
    except KeyboardInterrupt:
        progress.say("interrupted; everything started was stopped and the database dropped")
        return 130
    figures.elapsed_s = time.monotonic() - began
    print(report.markdown(figures), end="")
    if args.json:
        report.write_json(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
