"""How long-running commands learn to stop: SIGTERM or SIGINT sets an event."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (handled on the running loop from now on)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
