"""Faults injected into a PostgreSQL cluster of the tests' own, and their tally.

`FaultyCluster` is a `LocalCluster` (never the shared server) that a test may
stop (fast, or immediate: a crash), start again on the same port, freeze
(SIGSTOP of the postmaster and every backend: a database that accepts TCP
connections and answers nothing) and thaw.

`FaultTally` is what one fault test saw: faults injected, requests made while a
fault was in effect, INTERNAL answers, acknowledged writes lost, seats
oversold, client leases lost. `record()` prints it on one line and appends it to
the file named by KEYTURN_FAULT_REPORT, which conftest sums up at the end of the
run (also over pytest-xdist workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from keyturn.server.store.migrate import upgrade

from .postgres import FAST_SETTINGS, LocalCluster, create_database, drop_database
from .threads import run_in_own_loop

REPORT_ENV = "KEYTURN_FAULT_REPORT"


@dataclass
class FaultTally:
    faults: int = 0
    requests: int = 0  # made while a fault was in effect
    internal: int = 0
    lost: int = 0  # acknowledged writes not found afterwards
    oversold: int = 0
    leases_lost: int = 0  # client leases given up for a transient fault

    def line(self, name: str, **extra: object) -> str:
        fields = " ".join(f"{key}={value}" for key, value in {**asdict(self), **extra}.items())
        return f"FAULTS {name}: {fields}"


TALLY_FIELDS = frozenset(FaultTally.__dataclass_fields__)


def record(name: str, tally: FaultTally, **extra: object) -> None:
    """Print the tally of fault test `name` (and `extra` figures of its own) and add the
    tally to the run's report."""
    print(tally.line(name, **extra))
    report = os.environ.get(REPORT_ENV)
    if report:
        with Path(report).open("a") as out:
            out.write(json.dumps({"name": name, **asdict(tally)}) + "\n")


def read_report(path: Path) -> list[dict[str, int | str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class FaultyCluster:
    """A started LocalCluster with the faults above; databases made on it are migrated."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        # A crash (immediate stop) must not lose acknowledged commits: synchronous commit
        # on. fsync may stay off: the processes crash, not the machine (the page cache
        # keeps what was written).
        self.settings = {**FAST_SETTINGS, "synchronous_commit": "on"}

    @property
    def admin_url(self) -> str:
        return self.cluster.admin_url

    def start(self) -> None:
        """Start, on the port it had before once it has one (the servers' URLs stay valid)."""
        self.cluster.start(self.settings, port=self.cluster.port or None)

    def start_if_stopped(self) -> None:
        if not self.cluster.running:
            self.start()

    def stop(self, mode: str = "fast") -> None:
        """fast: a clean shutdown that disconnects everyone; immediate: a crash (recovery
        runs at the next start)."""
        self.cluster.stop(mode)

    def processes(self) -> list[int]:
        """The postmaster and every process it started."""
        pid_file = self.cluster.data / "postmaster.pid"
        postmaster = int(pid_file.read_text().splitlines()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The field after the parenthesised name: state, then the parent pid.
                after_name = stat.read_text().rsplit(")", 1)[1].split()
                if int(after_name[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the cluster stopped (SIGSTOP) inside, continued on exit."""
        stopped = self.processes()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def new_database(self) -> tuple[str, str]:
        """A fresh database migrated to the newest schema: (its name, its URL)."""
        name = f"keyturn_fault_{uuid.uuid4().hex[:12]}"
        url = run_in_own_loop(create_database(self.admin_url, name))
        upgrade(url)
        return name, url

    def drop_database(self, name: str) -> None:
        run_in_own_loop(drop_database(self.admin_url, name))


@contextlib.contextmanager
def faulty_cluster(name: str) -> Iterator[FaultyCluster]:
    """A new, started FaultyCluster, removed (with its data) on exit."""
    cluster = LocalCluster(name)
    try:
        cluster.initdb()
        faulty = FaultyCluster(cluster)
        faulty.start()
        yield faulty
    finally:
        cluster.remove()
