"""WatchEntitlementEvents fan-out: thousands of open change streams on one server.

    .venv/bin/python bench/watch_fanout.py [--streams 2000] [--channels 8] [--events 20]
                                           [--checks 300] [--idle-seconds 5]
                                           [--poll-seconds 0.5]

Server A runs in this process and server B (`keyturn serve`) as a child process on
the same database: SQLite in a temporary directory by default, or the database of
KEYTURN_DATABASE_URL (see watch_latency.py, whose helpers this reuses). The streams
are opened by a watcher process of their own (this script with --watcher), spread
over --channels connections, so that reading them does not share server A's event
loop; each starts one event behind the end, and is open once it has read that one.

Figures printed, for --streams streams on A and then on B:

- CheckLicense latency (sequential calls from this process) with no stream open,
  then with the streams open and idle.
- Server CPU while the streams sit idle for --idle-seconds, in percent of one core
  (A: this process, which then does nothing else; B: its /proc/PID/stat).
- Delivery: --events orders fulfilled one by one on A. For each, the delay from
  its commit (taken on A's engine as in watch_latency.py) to each stream's read of
  it: p50, p99 and max over every (event, stream), and per event the delay until
  the last stream had it. On B the orders wait a random fraction of the poll period
  first, so commits fall anywhere in B's polling cycle. Also the server's CPU time
  per event, less sensitive than delays to other load on the machine (A: the write,
  this process's client of it, and the fan-out; B: its read and the fan-out).

Times are `time.perf_counter` (CLOCK_MONOTONIC), comparable between the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sqlalchemy.engine import make_url
from watch_latency import (
    PRODUCT_ID,
    WAIT_S,
    CommitProbe,
    Fulfillment,
    Metadata,
    child_server,
    last_sequence,
    new_order,
    percentile,
    product,
    skus,
)

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc
from keyturn.server.api.server import KeyturnServer
from keyturn.server.app.tokens import create_token
from keyturn.server.bootstrap import build_context
from keyturn.server.config import Settings

OPEN_WAIT_S = 600.0  # opening thousands of streams on a busy 2-core machine


# --- the watcher process --------------------------------------------------------------


async def watcher(address: str, token: str, streams: int, channels: int, after: int) -> None:
    """Open the streams, say `ready`, then print each sequence's read instants as soon as
    every stream has read it; stop when stdin closes."""
    auth = (("authorization", f"Bearer {token}"),)
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    opened = [grpc.aio.insecure_channel(address, options=options) for _ in range(channels)]
    stubs = [Fulfillment(c) for c in opened]
    request = ful.WatchEntitlementEventsRequest(after_sequence=after)
    started = time.perf_counter()
    calls = [
        stubs[n % channels].WatchEntitlementEvents(request, metadata=auth) for n in range(streams)
    ]
    received: dict[int, list[float]] = {}

    async def follow(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        while True:
            response = await call.read()
            now = time.perf_counter()
            if not isinstance(response, ful.WatchEntitlementEventsResponse):
                raise RuntimeError("a change stream ended")
            times = received.setdefault(response.event.sequence, [])
            times.append(now)
            if len(times) == streams:
                got = {"sequence": response.event.sequence, "read": times, "started": started}
                print(json.dumps(got), flush=True)

    readers = [asyncio.create_task(follow(call)) for call in calls]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    closed = asyncio.create_task(stdin.read())
    done, _ = await asyncio.wait({closed, *readers}, return_when=asyncio.FIRST_COMPLETED)
    for task in readers:
        task.cancel()
    for call in calls:
        call.cancel()
    for channel in opened:
        await channel.close()
    for task in done - {closed}:
        task.result()  # a failed stream fails the run


@dataclass
class WatcherProcess:
    process: asyncio.subprocess.Process
    reads: dict[int, list[float]] = field(default_factory=dict)

    started: float = 0.0  # when it began opening the streams

    async def next_read(self) -> tuple[int, list[float]]:
        """The next sequence that every stream has read, with the instants."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), OPEN_WAIT_S)
        if not line:
            raise RuntimeError("the watcher process ended (see its log)")
        got = json.loads(line)
        self.started = float(got["started"])
        return int(got["sequence"]), [float(t) for t in got["read"]]


@contextlib.asynccontextmanager
async def watcher_process(
    address: str, token: str, args: argparse.Namespace, after: int, log: Path
) -> AsyncIterator[tuple[WatcherProcess, float]]:
    """The watcher process with every stream open; also the seconds they took to open
    (from the first call to the last stream's first event)."""
    with log.open("w") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--watcher",
            address,
            "--token",
            token,
            "--streams",
            str(args.streams),
            "--channels",
            str(args.channels),
            "--after",
            str(after),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            limit=2**26,
        )
        watching = WatcherProcess(process)
        try:
            sequence, reads = await watching.next_read()  # every stream read the last event
            if sequence != after + 1:
                raise RuntimeError(f"the streams began at {sequence}, not {after + 1}")
            yield watching, max(reads) - watching.started
        finally:
            assert process.stdin is not None
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), WAIT_S)
            except TimeoutError:
                process.kill()
                await process.wait()


# --- the measurements -----------------------------------------------------------------


@dataclass
class Run:
    """What was measured with the streams on one server."""

    server: str
    cpu_note: str
    open_seconds: float = 0.0
    check_ms_without: list[float] = field(default_factory=list)
    check_ms_with: list[float] = field(default_factory=list)
    idle_cpu_percent: float = 0.0
    delays_ms: list[float] = field(default_factory=list)  # every (event, stream)
    last_stream_ms: list[float] = field(default_factory=list)  # per event
    cpu_ms: list[float] = field(default_factory=list)  # the server's, per event


async def check_latencies(
    stub: licensing_pb2_grpc.LicensingServiceStub, key: str, n: int
) -> list[float]:
    request = lic.CheckLicenseRequest(license_key=key, product_id=PRODUCT_ID)
    found = []
    for _ in range(n):
        started = time.perf_counter()
        await stub.CheckLicense(request)
        found.append(1000 * (time.perf_counter() - started))
    return found


def cpu_seconds_of(pid: int | None) -> float:
    """CPU time (user + system) of this process, or of `pid` from /proc."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu_percent(pid: int | None, seconds: float) -> float:
    cpu, wall = cpu_seconds_of(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100 * (cpu_seconds_of(pid) - cpu) / (time.perf_counter() - wall)


async def deliveries(
    run: Run,
    watching: WatcherProcess,
    writer: Fulfillment,
    fulfill: Metadata,
    probe: CommitProbe,
    pid: int | None,
    events: int,
    run_id: str,
    jitter_s: float,
) -> None:
    """Fulfil orders one by one, each once every stream has read the one before."""
    rng = random.Random(11)
    previous = 0
    for n in range(events):
        if jitter_s:
            await asyncio.sleep(rng.uniform(0, jitter_s))
        probe.committed_at = None
        cpu = cpu_seconds_of(pid)
        await writer.FulfillOrder(new_order(f"{run_id}-{run.server}-{n}"), metadata=fulfill)
        committed = probe.take()
        sequence, reads = await watching.next_read()
        run.cpu_ms.append(1000 * (cpu_seconds_of(pid) - cpu))
        if sequence <= previous:
            raise RuntimeError(f"sequence {sequence} came after {previous}")
        previous = sequence
        delays = [1000 * (t - committed) for t in reads]
        run.delays_ms.extend(delays)
        run.last_stream_ms.append(max(delays))


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    probe: CommitProbe
    writer: Fulfillment
    tokens: dict[str, Metadata]
    secrets_of: dict[str, str]
    license_key: str
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))

    async def measure(
        self, name: str, address: str, engine_last: int, pid: int | None, jitter_s: float
    ) -> Run:
        run = Run(name, "write + fan-out" if pid is None else "read + fan-out")
        async with grpc.aio.insecure_channel(address) as channel:
            checks = licensing_pb2_grpc.LicensingServiceStub(channel)
            await check_latencies(checks, self.license_key, 20)  # warm up
            run.check_ms_without = await check_latencies(checks, self.license_key, self.args.checks)
            async with watcher_process(
                address,
                self.secrets_of["read"],
                self.args,
                engine_last - 1,
                self.workdir / f"watcher-{name}.log",
            ) as (watching, opened):
                run.open_seconds = opened
                run.idle_cpu_percent = await idle_cpu_percent(pid, self.args.idle_seconds)
                run.check_ms_with = await check_latencies(
                    checks, self.license_key, self.args.checks
                )
                await deliveries(
                    run,
                    watching,
                    self.writer,
                    self.tokens["fulfill"],
                    self.probe,
                    pid,
                    self.args.events,
                    self.run_id,
                    jitter_s,
                )
        return run


def print_report(backend: str, args: argparse.Namespace, runs: Sequence[Run]) -> None:
    print(
        f"Keyturn change stream fan-out on {backend}: {args.streams} streams over "
        f"{args.channels} connections; server B polls every {args.poll_seconds} s"
    )
    print()
    print(f"{'':<44} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for run in runs:
        print(f"streams on server {run.server}")
        rows = [
            ("  CheckLicense, no stream open", run.check_ms_without),
            (f"  CheckLicense, {args.streams} idle streams", run.check_ms_with),
            (f"  commit -> each stream ({len(run.delays_ms)} reads)", run.delays_ms),
            (
                f"  commit -> last of {args.streams} streams ({len(run.last_stream_ms)} events)",
                run.last_stream_ms,
            ),
            (f"  server CPU per event ({run.cpu_note})", run.cpu_ms),
        ]
        for label, values in rows:
            print(
                f"{label:<44} {percentile(values, 50):>9.1f} {percentile(values, 99):>9.1f}"
                f" {max(values):>9.1f}"
            )
        print(
            f"  {args.streams} streams opened in {run.open_seconds:.1f} s; server CPU while "
            f"idle: {run.idle_cpu_percent:.1f} % of a core"
        )


async def run(args: argparse.Namespace, workdir: Path) -> None:
    url = os.environ.get("KEYTURN_DATABASE_URL") or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    secret = os.environ.get("KEYTURN_SECRET_KEY") or secrets.token_urlsafe(48)
    settings = Settings(
        database_url=url,
        secret_key=secret,
        listen="127.0.0.1:0",
        log_level="WARNING",
        watch_poll_seconds=args.poll_seconds,
        lapse_sweep_seconds=0,
    )
    ctx = await build_context(settings)
    probe = CommitProbe(ctx.store.engine)
    server = KeyturnServer(ctx, "127.0.0.1:0")
    await server.start()
    child_settings = {
        "KEYTURN_DATABASE_URL": url,
        "KEYTURN_SECRET_KEY": secret,
        "KEYTURN_AUTO_MIGRATE": "false",
        "KEYTURN_WATCH_POLL_SECONDS": str(args.poll_seconds),
        "KEYTURN_LAPSE_SWEEP_SECONDS": "0",
        "KEYTURN_LOG_LEVEL": "WARNING",
    }
    try:
        secrets_of: dict[str, str] = {}
        for scope in ("catalog", "fulfill", "read"):
            _, secrets_of[scope] = await create_token(ctx, {scope}, f"bench {scope}")
        tokens = {s: (("authorization", f"Bearer {v}"),) for s, v in secrets_of.items()}
        async with (
            grpc.aio.insecure_channel(server.address) as channel_a,
            child_server(child_settings, workdir / "server-b.log") as child,
        ):
            catalog = catalog_pb2_grpc.CatalogServiceStub(channel_a)
            await catalog.PutProduct(
                cat.PutProductRequest(product=product()), metadata=tokens["catalog"]
            )
            for sku in skus():
                await catalog.PutSku(cat.PutSkuRequest(sku=sku), metadata=tokens["catalog"])
            writer = Fulfillment(channel_a)
            made = await writer.FulfillOrder(new_order("bench-license"), metadata=tokens["fulfill"])
            bench = Bench(
                args, workdir, probe, writer, tokens, secrets_of, made.entitlements[0].license_key
            )
            engine = ctx.store.engine
            runs = [
                await bench.measure("A", server.address, await last_sequence(engine), None, 0.0),
                await bench.measure(
                    "B",
                    child.address,
                    await last_sequence(engine),
                    child.process.pid,
                    args.poll_seconds,
                ),
            ]
    finally:
        await server.stop(grace=1.0)
    where = "a temporary file" if url.startswith("sqlite") else make_url(url).render_as_string()
    print_report(f"{ctx.store.dialect} ({where})", args, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", type=int, default=2000, help="open change streams")
    parser.add_argument("--channels", type=int, default=8, help="connections they use")
    parser.add_argument("--events", type=int, default=20, help="orders fulfilled per server")
    parser.add_argument("--checks", type=int, default=300, help="CheckLicense calls per figure")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle CPU window")
    parser.add_argument("--poll-seconds", type=float, default=0.5, help="watch poll period")
    parser.add_argument("--watcher", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--after", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watcher:
        asyncio.run(watcher(args.watcher, args.token, args.streams, args.channels, args.after))
        return
    with tempfile.TemporaryDirectory(prefix="keyturn-fanout-") as workdir:
        asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
