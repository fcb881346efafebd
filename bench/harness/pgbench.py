"""The database ceiling: pgbench running the server's seat SQL (harness/seat_sql.py makes
the script from store/pg_seats.py, so the two cannot drift), or bench/pgbench/NAME.sql.
 pgbench runs -n (no vacuum of its own tables), -M prepared (the server's
asyncpg prepares its statements too), for a fixed time.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .seat_sql import GENERATED

SCRIPTS = Path(__file__).resolve().parents[1] / "pgbench"
_TPS = re.compile(r"^tps = (?P<tps>[\d.]+) \(without initial connection time\)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (?P<n>\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (?P<n>\d+)", re.M)
_LATENCY = re.compile(r"^latency average = (?P<ms>[\d.]+) ms", re.M)


@dataclass(frozen=True)
class PgbenchResult:
    script: str
    clients: int
    tps: float
    transactions: int
    failed: int
    latency_ms: float


def find_pgbench() -> Path | None:
    """pgbench on PATH, else the newest /usr/lib/postgresql/*/bin/pgbench."""
    found = shutil.which("pgbench")
    if found:
        return Path(found)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pgbench"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p)],
    )
    return Path(candidates[-1]) if candidates else None


@contextlib.contextmanager
def script_path(name: str) -> Iterator[Path]:
    """bench/pgbench/NAME.sql, or the script made from the server's SQL (seat_sql.py), in
    a temporary folder removed afterwards."""
    if name in GENERATED:
        with tempfile.TemporaryDirectory(prefix="keyturn-pgbench-") as folder:
            path = Path(folder) / f"{name}.sql"
            path.write_text(GENERATED[name]())
            yield path
        return
    path = SCRIPTS / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no pgbench script {path}")
    yield path


def run_pgbench(
    pgbench: Path,
    env: Mapping[str, str],
    name: str,
    variables: Mapping[str, str | int],
    clients: int,
    duration: float,
    tick: Callable[[float], None],
) -> PgbenchResult:
    """One timed run of script `name`; `tick(seconds)` while it runs."""
    command = [str(pgbench), "-n", "-M", "prepared", "-c", str(clients)]
    command += ["-j", str(min(2, clients)), "-T", str(max(1, round(duration)))]
    for key, value in variables.items():
        command += ["-D", f"{key}={value}"]
    with script_path(name) as script:
        process = subprocess.Popen(
            [*command, "-f", str(script)],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(process.communicate()), daemon=True)
        began = time.monotonic()
        reader.start()
        while reader.is_alive():
            tick(time.monotonic() - began)
            reader.join(0.25)
    stdout, stderr = output
    tps, done = _TPS.search(stdout), _DONE.search(stdout)
    if process.returncode != 0 or tps is None or done is None:
        raise RuntimeError(
            f"pgbench {name} exited with {process.returncode}:\n{stdout}\n{stderr[-4000:]}"
        )
    failed, latency = _FAILED.search(stdout), _LATENCY.search(stdout)
    return PgbenchResult(
        script=name,
        clients=clients,
        tps=float(tps["tps"]),
        transactions=int(done["n"]),
        failed=int(failed["n"]) if failed else 0,
        latency_ms=float(latency["ms"]) if latency else float("nan"),
    )
