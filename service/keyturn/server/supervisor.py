"""`keyturn serve --workers N` (N > 1): one supervisor, N worker processes, one port.

As in grpc's multiprocessing example, the supervisor reserves the port (and the
HTTP port, KEYTURN_HTTP_LISTEN, the same way) with SO_REUSEPORT and starts N copies of itself (`keyturn serve --worker-index I`,
a fresh interpreter each: grpc does not survive fork), each serving on that
port with `grpc.so_reuseport`; the kernel spreads connections over them.

Before any worker starts, the supervisor migrates the database and creates the
first signing key, so that N processes starting at once on a fresh database
never race to do it; workers start with auto-migrate off. It prints the
listening line once, after every worker has reported that it listens.

A worker that dies is started again, after a delay that doubles while it keeps
dying soon after starting. A worker that cannot start in the first place (bad
settings, database, secret) stops everything: the supervisor exits non-zero
with the worker's error, rather than restarting it forever. SIGTERM or SIGINT
is passed on to every worker as SIGTERM; each drains its calls in flight for
KEYTURN_SHUTDOWN_GRACE_SECONDS, and whatever still runs a margin later is
killed. Workers run in their own process group (a Ctrl-C reaches the
supervisor only) and stop by themselves should the supervisor die.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import mark_process_dead

from .app.context import AppContext
from .bootstrap import build_context
from .config import Settings
from .metrics_exporter import MetricsExporter, add_multiprocess_collector
from .port_reservation import ADMIN_LISTEN, HTTP_LISTEN, ReservedPort, check_port_free, reserve_port
from .serving import certificates_of
from .signals import stop_on_signal
from .worker_link import SupervisorEnd

log = logging.getLogger("keyturn.supervisor")

WORKER_START_TIMEOUT_SECONDS = 60.0
STOP_MARGIN_SECONDS = 10.0  # past the shutdown grace, before SIGKILL
RESTART_INITIAL_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 30.0  # a worker that ran this long before it died restarts at the initial delay


class WorkerStartError(Exception):
    def __init__(self, index: int, message: str, exit_code: int) -> None:
        super().__init__(f"worker {index} could not start: {message}")
        self.index = index
        self.message = message
        self.exit_code = exit_code


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    link: SupervisorEnd
    ready_at: float = 0.0  # time.monotonic() of its ready report; 0: not ready

    @property
    def pid(self) -> int:
        return self.process.pid


def worker_command() -> list[str]:
    """This interpreter running the CLI module: the same code, wherever it is installed."""
    return [sys.executable, "-m", "keyturn.server.cli"]


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def restart_delay(quick_deaths: int) -> float:
    """0.5 s, 1 s, 2 s... up to 30 s, for the 1st, 2nd, 3rd... death soon after a start."""
    return float(min(RESTART_MAX_SECONDS, RESTART_INITIAL_SECONDS * 2 ** max(0, quick_deaths - 1)))


def pool_share(pool_size: int, workers: int) -> int:
    """Each worker's part of the server's connection pool: the server as a whole keeps about
    as many connections as one process would (PostgreSQL's max_connections is shared by all
    replicas), yet every worker has two at least."""
    return max(2, -(-pool_size // workers))


class Supervisor:
    def __init__(self, settings: Settings, command: Sequence[str] | None = None) -> None:
        self._settings = settings
        self._command = list(command or worker_command())
        self._workers: dict[int, Worker] = {}
        self._metrics_dir: Path | None = None
        self._http: ReservedPort | None = None  # the HTTP port, when it is on
        self._registry = CollectorRegistry()
        self._restarts = Counter(
            "keyturn_worker_restarts",
            "Workers started again after they died",
            registry=self._registry,
        )
        self._stopping = asyncio.Event()  # no new worker from now on
        self._spawning = asyncio.Lock()  # a worker is started, or all are told to stop
        self._admin: ReservedPort | None = None  # the mutual-TLS port, when there is one

    async def run(self) -> int:
        """Serve with N workers until SIGTERM/SIGINT; the exit code."""
        stop = stop_on_signal()
        certificates_of(self._settings)  # files that cannot be served: one line, no worker
        check_port_free(self._settings.listen)  # before the database is touched
        admin_listen = self._settings.admin_listen
        if admin_listen:
            check_port_free(admin_listen, ADMIN_LISTEN)
        http_listen = self._settings.http_listen
        if http_listen:
            check_port_free(http_listen, HTTP_LISTEN)
        # Migrations and the first signing key: here, once, before any worker starts.
        ctx = await build_context(self._settings)
        try:
            with contextlib.ExitStack() as held:
                reserved = held.enter_context(reserve_port(self._settings.listen))
                if admin_listen:
                    self._admin = held.enter_context(reserve_port(admin_listen, ADMIN_LISTEN))
                if http_listen:
                    self._http = held.enter_context(reserve_port(http_listen, HTTP_LISTEN))
                held.enter_context(self._metrics(ctx))
                return await self._serve(reserved, stop)
        finally:
            await ctx.store.close()

    @contextlib.contextmanager
    def _metrics(self, ctx: AppContext) -> Iterator[None]:
        """The endpoint over every worker's metrics, and their shared folder, while serving."""
        if not self._settings.metrics_listen:
            yield
            return
        folder = Path(tempfile.mkdtemp(prefix="keyturn-metrics-"))
        try:
            add_multiprocess_collector(self._registry, folder)
            exporter = MetricsExporter(self._settings.metrics_listen, self._registry, ctx)
            self._metrics_dir = folder
            try:
                print(f"keyturn metrics on {exporter.address}", flush=True)
                yield
            finally:
                exporter.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _serve(self, reserved: ReservedPort, stop: asyncio.Event) -> int:
        count = self._settings.workers
        if stop.is_set():  # signalled while the database was being prepared
            return 0
        log.info("starting %d workers on %s", count, reserved.address)
        try:
            for index in range(count):
                self._workers[index] = await self._spawn(index, reserved)
            started = await self._all_ready(reserved, stop)
        except OSError as failure:  # the system would not start a process
            await self._stop_all([])
            print(f"keyturn: cannot start a worker: {failure}", file=sys.stderr, flush=True)
            return 1
        except WorkerStartError as failure:
            await self._stop_all([])
            print(f"keyturn: {failure}", file=sys.stderr, flush=True)
            return failure.exit_code
        if not started:
            return await self._stop_all([])
        if self._admin is not None:
            print(f"keyturn admin port (mutual TLS) on {self._admin.address}", flush=True)
        if self._http is not None:
            print(f"keyturn http on {self._http.address}", flush=True)
        print(f"keyturn listening on {reserved.address}", flush=True)
        keepers = [asyncio.create_task(self._keep(index, reserved)) for index in range(count)]
        await stop.wait()
        return await self._stop_all(keepers)

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KEYTURN_AUTO_MIGRATE"] = "false"  # done above, once
        env["KEYTURN_METRICS_LISTEN"] = ""  # the supervisor answers scrapes
        env["KEYTURN_WORKERS"] = "1"
        if self._admin is not None:  # the port chosen for :0, the same for every worker
            env["KEYTURN_ADMIN_LISTEN"] = self._admin.address
        env["KEYTURN_DATABASE_POOL_SIZE"] = str(
            pool_share(self._settings.database_pool_size, self._settings.workers)
        )
        if self._metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        return env

    async def _spawn(self, index: int, reserved: ReservedPort) -> Worker:
        link = SupervisorEnd()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command,
                "serve",
                "--listen",
                reserved.address,
                "--http-listen",
                self._http.address if self._http is not None else "",
                "--worker-index",
                str(index),
                "--worker-link",
                str(link.child_fd),
                env=self._worker_env(),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(link.child_fd,),
                process_group=0,
            )
        except BaseException:
            link.close()
            raise
        link.child_started()
        log.info("worker %d started (pid %d)", index, process.pid)
        return Worker(index, process, link)

    async def _all_ready(self, reserved: ReservedPort, stop: asyncio.Event) -> bool:
        """True once every worker listens; False if stopped first; WorkerStartError."""
        pending: set[asyncio.Task[object]] = {
            asyncio.create_task(self._ready(w, reserved)) for w in self._workers.values()
        }
        stopped: asyncio.Task[object] = asyncio.create_task(stop.wait())
        try:
            while pending:
                done, _ = await asyncio.wait(
                    pending | {stopped}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    return False
                for task in done:
                    pending.discard(task)
                    task.result()
            return True
        finally:
            for waiting in (*pending, stopped):
                waiting.cancel()
            await asyncio.gather(*pending, stopped, return_exceptions=True)

    async def _ready(self, worker: Worker, reserved: ReservedPort) -> None:
        """Until `worker` reports that it listens; WorkerStartError when it cannot."""
        try:
            async with asyncio.timeout(WORKER_START_TIMEOUT_SECONDS):
                report = await worker.link.report()
        except TimeoutError:
            await self._kill(worker)
            raise WorkerStartError(
                worker.index, f"not listening after {WORKER_START_TIMEOUT_SECONDS:.0f}s", 1
            ) from None
        if report is None or not report.ready:
            code = await self._ended(worker, STOP_MARGIN_SECONDS)
            message = report.error if report else f"exited with {describe_exit(code)}"
            raise WorkerStartError(worker.index, message, code if code > 0 else 1)
        if report.port != reserved.port:
            await self._kill(worker)
            raise WorkerStartError(
                worker.index, f"listens on port {report.port}, not {reserved.port}", 1
            )
        worker.ready_at = time.monotonic()
        log.info("worker %d (pid %d) listening on %s", worker.index, worker.pid, reserved.address)

    async def _keep(self, index: int, reserved: ReservedPort) -> None:
        """Start worker `index` again whenever it dies, until the supervisor stops."""
        quick_deaths = 0
        while True:
            worker = self._workers[index]
            code = await worker.process.wait()
            self._forget(worker)
            if self._stopping.is_set():
                return
            ran = time.monotonic() - worker.ready_at if worker.ready_at else 0.0
            quick_deaths = 1 if ran >= STABLE_SECONDS else quick_deaths + 1
            delay = restart_delay(quick_deaths)
            log.warning(
                "worker %d (pid %d) exited with %s after %.1fs; restarting it in %.1fs",
                index,
                worker.pid,
                describe_exit(code),
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            async with self._spawning:
                if self._stopping.is_set():
                    return
                try:
                    self._workers[index] = await self._spawn(index, reserved)
                except OSError:
                    log.exception("cannot start worker %d again; trying later", index)
                    worker.ready_at = 0.0  # seen again at once, as a quick death: a longer delay
                    continue
                self._restarts.inc()
            try:
                await self._ready(self._workers[index], reserved)
            except WorkerStartError as failure:
                if not self._stopping.is_set():
                    log.error("%s; trying again", failure)

    async def _stop_all(self, keepers: list[asyncio.Task[None]]) -> int:
        """SIGTERM to every worker, SIGKILL to those still running after the grace and a
        margin; 0 when every worker stopped by itself."""
        async with self._spawning:
            self._stopping.set()
            workers = list(self._workers.values())
            for worker in workers:
                if worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.send_signal(signal.SIGTERM)
        grace = self._settings.shutdown_grace_seconds
        log.info(
            "stopping %d workers: each drains its calls in flight for up to %ss",
            len(workers),
            grace,
        )
        codes = await asyncio.gather(
            *(self._ended(w, grace + STOP_MARGIN_SECONDS) for w in workers)
        )
        await asyncio.gather(*keepers)
        for worker in workers:
            self._forget(worker)
        failed = [
            f"worker {w.index} (pid {w.pid}) {describe_exit(c)}"
            for w, c in zip(workers, codes, strict=True)
            if c not in (0, -signal.SIGTERM)
        ]
        if failed:
            log.error("workers did not stop cleanly: %s", ", ".join(failed))
            return 1
        log.info("all %d workers stopped", len(workers))
        return 0

    async def _ended(self, worker: Worker, within_s: float) -> int:
        """`worker`'s exit code, killing it when it has not ended within `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                return await worker.process.wait()
        except TimeoutError:
            log.error(
                "worker %d (pid %d) killed: still running after %.0fs",
                worker.index,
                worker.pid,
                within_s,
            )
            return await self._kill(worker)

    @staticmethod
    async def _kill(worker: Worker) -> int:
        if worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
        return await worker.process.wait()

    def _forget(self, worker: Worker) -> None:
        """Let go of an ended worker: its link, and its live gauges."""
        worker.link.close()
        if self._metrics_dir is not None:
            mark_process_dead(worker.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
