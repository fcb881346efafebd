"""Conflicting transactions are retried here, a few times, before a caller hears of them.

A serialization failure or a deadlock rolls the whole transaction back; every use
case is one transaction and safe to run again, so the server runs it again after a
short jittered pause (so that two transactions that deadlocked do not meet again at
once). Only when every attempt conflicted does the caller get ABORTED /
TRANSACTION_CONFLICT, with the number of attempts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from keyturn.server.domain.errors import DomainError, Reason, transaction_conflict

T = TypeVar("T")

CONFLICT_ATTEMPTS = 4
FIRST_PAUSE_SECONDS = 0.005


def conflict_pause(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the attempt after `failures` conflicts: jittered, doubling."""
    return float(rand() * FIRST_PAUSE_SECONDS * 2 ** (failures - 1))


async def retry_conflicts(run: Callable[[], Awaitable[T]], attempts: int = CONFLICT_ATTEMPTS) -> T:
    """`run()`, again after each TRANSACTION_CONFLICT, at most `attempts` times in all."""
    for failures in range(1, attempts):
        try:
            return await run()
        except DomainError as error:
            if error.reason is not Reason.TRANSACTION_CONFLICT:
                raise
        await asyncio.sleep(conflict_pause(failures))
    try:
        return await run()
    except DomainError as error:
        if error.reason is Reason.TRANSACTION_CONFLICT:
            raise transaction_conflict(attempts) from error
        raise
