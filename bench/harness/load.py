"""The load generator: separate processes, each a grpc.aio client with N calls in flight.

A `LoadPool` keeps its processes (spawned once) for the whole run. For each
measurement the parent sends every process a `Job`; each connects, says it is
ready, and when all are the parent sends one start instant and one end instant
(time.monotonic, which is the same clock in every process on Linux). Calls
run from then on; those that complete before the start instant are warm-up and
are not counted. Each process sends back its latencies, status codes and, when
asked, the leases it obtained. A shared counter per process feeds the progress
line.

Kinds of call:
- activate: ActivateSeat with a new fingerprint each call, each with a key
  picked at random;
- check: CheckLicense, keys likewise;
- renew: each call slot owns one lease and renews it again and again with the
  newest token;
- release: each call takes the next lease of the process's share and releases
  it; a process whose share runs out stops, and its window ends there;
- echo: the echo server's method with the bytes of an ActivateSeat request.

With `max_calls`, there is no warm-up and no end instant: the processes make
that many calls in all and stop. Otherwise, calls still in flight at the end
instant are cancelled (they would not count).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import random
import signal
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc

from .echo import METHOD as ECHO_METHOD

CALL_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
FOREVER = float("inf")


@dataclass(frozen=True)
class Job:
    """What one process runs for one measurement."""

    kind: str
    target: str
    in_flight: int
    product_id: str = ""
    keys: tuple[str, ...] = ()
    leases: tuple[str, ...] = ()  # renew: one per slot; release: the share to release
    payload: bytes = b""  # echo
    tag: str = ""  # makes fingerprints unique across measurements and processes
    collect_leases: bool = False  # activate: send back the leases obtained
    max_calls: int = 0  # 0: by time


@dataclass
class ProcessResult:
    latencies: array.array[float]
    codes: Counter[str]
    window: float  # seconds the counted calls ran over
    leases: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class LoadResult:
    """One measurement, merged over the processes."""

    calls: int
    calls_per_s: float
    p50_s: float
    p99_s: float
    codes: dict[str, int]  # "OK" and failures as CODE or CODE/REASON
    window_s: float
    leases: tuple[str, ...]

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in self.codes.items() if code != "OK"}


def percentile(ordered: Sequence[float], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _code_of(error: grpc.aio.AioRpcError) -> str:
    """CODE, or CODE/REASON when the status carries a google.rpc.ErrorInfo."""
    code = error.code().name
    trailers = cast(Sequence[tuple[str, str | bytes]], error.trailing_metadata() or ())
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return f"{code}/{info.reason}"
    return code


# --- in a load process ----------------------------------------------------------


class _Run:
    """The call slots of one job in one process."""

    def __init__(self, job: Job, channel: grpc.aio.Channel, counter: Any, index: int) -> None:
        self.job = job
        self.counter = counter
        self.stub = licensing_pb2_grpc.LicensingServiceStub(channel)
        self.echo = channel.unary_unary(
            ECHO_METHOD, request_serializer=None, response_deserializer=None
        )
        self.start = 0.0
        self.end = FOREVER
        self.latencies: array.array[float] = array.array("d")
        self.codes: Counter[str] = Counter()
        self.leases: list[str] = []
        self.pool = list(job.leases)
        self.issued = 0
        self.last_done = 0.0
        self.ran_out = False
        self.rng = random.Random(f"{job.tag}-{index}")

    async def call(self, slot: int, n: int, held: list[str]) -> tuple[str, Any]:
        job = self.job
        if job.kind == "activate":
            key = self.rng.choice(job.keys)
            request = lic.ActivateSeatRequest(
                license_key=key,
                product_id=job.product_id,
                fingerprint=f"{job.tag}-{slot}-{n}",
                label="bench device",
            )
            return "OK", await self.stub.ActivateSeat(request, timeout=CALL_TIMEOUT_S)
        if job.kind == "check":
            key = self.rng.choice(job.keys)
            check = lic.CheckLicenseRequest(license_key=key, product_id=job.product_id)
            return "OK", await self.stub.CheckLicense(check, timeout=CALL_TIMEOUT_S)
        if job.kind == "renew":
            renew = lic.RenewLeaseRequest(lease_token=held[0])
            response = await self.stub.RenewLease(renew, timeout=CALL_TIMEOUT_S)
            held[0] = response.lease.token
            return "OK", response
        if job.kind == "release":
            release = lic.ReleaseSeatRequest(lease_token=held[0])
            return "OK", await self.stub.ReleaseSeat(release, timeout=CALL_TIMEOUT_S)
        return "OK", await self.echo(job.payload, timeout=CALL_TIMEOUT_S)

    def _next_lease(self, slot: int, held: list[str]) -> bool:
        """Renew keeps its lease; release takes a new one. False: nothing left."""
        if self.job.kind == "renew":
            if not held:
                held.append(self.job.leases[slot])
            return True
        if self.job.kind == "release":
            if not self.pool:
                self.ran_out = True
                return False
            held[:] = [self.pool.pop()]
        return True

    async def slot(self, slot: int) -> None:
        held: list[str] = []
        n = 0
        while time.monotonic() < self.end and not self.ran_out:
            if self.job.max_calls and self.issued >= self.job.max_calls:
                return
            if not self._next_lease(slot, held):
                return
            self.issued += 1
            n += 1
            began = time.perf_counter()
            try:
                code, response = await self.call(slot, n, held)
            except grpc.aio.AioRpcError as error:
                code, response = _code_of(error), None
            took = time.perf_counter() - began
            done = time.monotonic()
            self.counter.value += 1
            if code == "OK" and self.job.collect_leases:
                self.leases.append(response.lease.token)
            if self.start <= done <= self.end:
                self.latencies.append(took)
                self.codes[code] += 1
                self.last_done = max(self.last_done, done)

    def result(self) -> ProcessResult:
        if self.job.max_calls or self.ran_out:
            window = max(self.last_done - self.start, 1e-9)
        else:
            window = self.end - self.start
        return ProcessResult(self.latencies, self.codes, window, self.leases)


async def _run_job(
    job: Job, conn: multiprocessing.connection.Connection, counter: Any, index: int
) -> ProcessResult:
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(job.target, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_S)
        run = _Run(job, channel, counter, index)
        conn.send("ready")
        run.start, run.end = await asyncio.to_thread(conn.recv)
        slots = [asyncio.create_task(run.slot(i)) for i in range(job.in_flight)]
        # By time: the calls still in flight at the end instant would not count; they are
        # cancelled, so that a slow RPC does not hold up the next measurement.
        timeout = None if job.max_calls else max(0.0, run.end - time.monotonic())
        done, pending = await asyncio.wait(slots, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a failure of the load generator itself
        return run.result()


def _process_main(conn: multiprocessing.connection.Connection, counter: Any, index: int) -> None:
    """A load process: jobs until None. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        job = conn.recv()
        if job is None:
            return
        counter.value = 0
        try:
            result = asyncio.run(_run_job(job, conn, counter, index))
        except Exception:
            result = ProcessResult(array.array("d"), Counter(), 0.0, error=traceback.format_exc())
        conn.send(result)


# --- in the parent ----------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def merge(results: Sequence[ProcessResult]) -> LoadResult:
    latencies = sorted(x for r in results for x in r.latencies)
    codes: Counter[str] = Counter()
    for r in results:
        codes.update(r.codes)
    rate = sum(sum(r.codes.values()) / r.window for r in results if r.window > 0)
    return LoadResult(
        calls=len(latencies),
        calls_per_s=rate,
        p50_s=percentile(latencies, 0.50),
        p99_s=percentile(latencies, 0.99),
        codes=dict(codes),
        window_s=statistics.fmean([r.window for r in results]) if results else 0.0,
        leases=tuple(lease for r in results for lease in r.leases),
    )


Tick = Callable[[float, int], None]  # (seconds since the start instant, calls so far)


class LoadPool:
    """The load processes of a run (spawned, so no state leaks from the parent)."""

    def __init__(self, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._counters: list[Any] = []
        self._processes: list[Any] = []
        for index in range(processes):
            parent, child = context.Pipe()
            counter = context.Value("q", 0, lock=False)
            process = context.Process(
                target=_process_main,
                args=(child, counter, index),
                name=f"bench-load-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._conns.append(parent)
            self._counters.append(counter)
            self._processes.append(process)

    @property
    def size(self) -> int:
        return len(self._processes)

    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._processes]

    def run(
        self,
        job: Job,
        warmup: float,
        duration: float,
        tick: Tick,
        on_start: Callable[[], None] = lambda: None,
        on_end: Callable[[], None] = lambda: None,
    ) -> LoadResult:
        """One measurement; `on_start`/`on_end` run at its start and end instants (server
        CPU samples), `tick` every quarter second."""
        shares = self._shares(job)
        used = [(conn, share) for conn, share in zip(self._conns, shares, strict=True) if share]
        for conn, share in used:
            conn.send(share)
        for conn, _ in used:
            if not conn.poll(READY_TIMEOUT_S):
                raise RuntimeError("a load process did not connect in time")
            answer = conn.recv()
            if isinstance(answer, ProcessResult):
                raise RuntimeError(f"load process failed:\n{answer.error}")
        start = time.monotonic() + (0.0 if job.max_calls else warmup)
        end = FOREVER if job.max_calls else start + duration
        for conn, _ in used:
            conn.send((start, end))
        results = self._collect([conn for conn, _ in used], start, end, tick, on_start, on_end)
        failed = [r.error for r in results if r.error]
        if failed:
            raise RuntimeError(f"load process failed:\n{failed[0]}")
        return merge(results)

    def _shares(self, job: Job) -> list[Job | None]:
        """The job of each process: slots, leases and calls split between them."""
        slots = _split(job.in_flight, self.size)
        calls = _split(job.max_calls, self.size)
        shares: list[Job | None] = []
        lease_at = 0
        for index, n in enumerate(slots):
            if n == 0:
                shares.append(None)
                continue
            if job.kind == "renew":
                leases = job.leases[lease_at : lease_at + n]
                lease_at += n
            else:
                leases = job.leases[index :: self.size]
            shares.append(
                replace(
                    job,
                    in_flight=n,
                    leases=leases,
                    tag=f"{job.tag}-p{index}",
                    max_calls=calls[index] if job.max_calls else 0,
                )
            )
        return shares

    def _collect(
        self,
        conns: list[multiprocessing.connection.Connection],
        start: float,
        end: float,
        tick: Tick,
        on_start: Callable[[], None],
        on_end: Callable[[], None],
    ) -> list[ProcessResult]:
        results: dict[int, ProcessResult] = {}
        started = ended = False
        while len(results) < len(conns):
            now = time.monotonic()
            if not started and now >= start:
                started = True
                on_start()
            if started and not ended and now >= end:
                ended = True
                on_end()
            tick(now - start, sum(c.value for c in self._counters))
            deadline = start if not started else end if not ended else FOREVER
            wake = min(0.25, max(0.0, deadline - now))
            for conn in multiprocessing.connection.wait(
                [c for i, c in enumerate(conns) if i not in results], timeout=wake
            ):
                assert isinstance(conn, multiprocessing.connection.Connection)
                results[conns.index(conn)] = conn.recv()
        if not started:
            on_start()
        if not ended:
            on_end()
        return [results[i] for i in range(len(conns))]

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(None)
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for conn in self._conns:
            conn.close()
