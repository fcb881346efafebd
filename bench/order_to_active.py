"""Order to active seat, measured: from a signed Stripe webhook to a verified lease.

Each run posts a new `invoice.paid` to the Stripe connector's endpoint, which
fulfils it through Keyturn; the dispatcher mails the license key to a real
SMTP server (aiosmtpd) on loopback; the run reads the key from the mail and
activates a seat with the Python client, which verifies the lease offline.
All on default settings (the dispatcher wakes on the commit of the order).

    .venv/bin/python bench/order_to_active.py [--runs 50] [--database-url URL]

Prints the median, p90, p99 and max seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from keyturn.server.config import Settings
from keyturn.server.store.migrate import upgrade

from support.order_to_active import pipeline

SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def main(runs: int, database_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = database_url or f"sqlite+aiosqlite:///{folder}/keyturn.db"
        await asyncio.to_thread(upgrade, url)
        settings = Settings(database_url=url, secret_key=SECRET, auto_migrate=False)  # type: ignore[arg-type]
        async with pipeline(settings) as run:
            await run.order_to_active(0)  # warm-up: connections, first JWKS fetch
            times = [(await run.order_to_active(n))[1] for n in range(1, runs + 1)]
    backend = url.split(":", 1)[0]
    print(f"order to active ({backend}, {runs} runs, webhook -> verified lease):")
    print(
        f"  median {statistics.median(times) * 1000:.0f} ms   p90 {percentile(times, 0.9) * 1000:.0f} ms"
        f"   p99 {percentile(times, 0.99) * 1000:.0f} ms   max {max(times) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.database_url))
