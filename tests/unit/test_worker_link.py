"""The supervisor-worker link over a real socket pair: reports, end of file, lifeline."""

from __future__ import annotations

import asyncio
import os

from keyturn.server.worker_link import Report, SupervisorEnd, WorkerEnd


def worker_of(supervisor: SupervisorEnd) -> WorkerEnd:
    """The worker's end, as a worker process would open it from the inherited fd."""
    worker = WorkerEnd(os.dup(supervisor.child_fd))
    supervisor.child_started()
    return worker


async def test_ready_report_carries_the_port() -> None:
    supervisor = SupervisorEnd()
    worker = worker_of(supervisor)
    worker.ready(50123)
    assert await supervisor.report() == Report(port=50123)
    worker.close()
    supervisor.close()


async def test_failed_report_is_one_line_whatever_the_error() -> None:
    supervisor = SupervisorEnd()
    worker = worker_of(supervisor)
    worker.failed("OSError: cannot listen\non 127.0.0.1:1")
    report = await supervisor.report()
    assert report == Report(error="OSError: cannot listen on 127.0.0.1:1")
    assert report is not None
    assert not report.ready
    worker.close()
    supervisor.close()


async def test_a_worker_that_ends_without_a_report_reads_as_none() -> None:
    supervisor = SupervisorEnd()
    worker_of(supervisor).close()
    assert await supervisor.report() is None
    supervisor.close()


async def test_the_worker_learns_that_the_supervisor_is_gone() -> None:
    supervisor = SupervisorEnd()
    worker = worker_of(supervisor)
    gone = asyncio.create_task(worker.supervisor_gone())
    await asyncio.sleep(0)
    assert not gone.done()
    supervisor.close()
    await asyncio.wait_for(gone, 10)
    worker.close()
