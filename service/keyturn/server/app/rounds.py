"""The loop of a background sender (the email dispatcher, the webhook sender): rounds
until cancelled, the next at once when this process commits (its store's bell rings)
or after the round's wait, and right away after a full batch, as more may be due."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from keyturn.server.store.unit_of_work import CommitBell


async def run_rounds(
    bell: CommitBell,
    one_round: Callable[[], Awaitable[int]],
    *,
    batch: int,
    wait_seconds: Callable[[], Awaitable[float]],
    log: logging.Logger,
    what: str,
) -> None:
    """`one_round` returns how much it took on; a failed round is logged and retried."""
    while True:
        signal = bell.armed()
        try:
            done = await one_round()
        except Exception:
            log.exception("%s round failed; trying again", what)
            done = 0
        if done < batch:
            await bell.wait(signal, await wait_seconds())
