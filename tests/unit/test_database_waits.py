"""The bounded waits in front of the database: conflict retries and the entitlement gate."""

from __future__ import annotations

import asyncio

import pytest

from keyturn.server.app.conflicts import CONFLICT_ATTEMPTS, conflict_pause, retry_conflicts
from keyturn.server.domain.errors import DomainError, Reason, transaction_conflict
from keyturn.server.store.entitlement_gate import EntitlementGate


async def test_a_call_that_conflicts_fewer_times_than_the_attempts_succeeds() -> None:
    runs = 0

    async def flaky() -> str:
        nonlocal runs
        runs += 1
        if runs < CONFLICT_ATTEMPTS:
            raise transaction_conflict(attempts=1)
        return "done"

    assert await retry_conflicts(flaky) == "done"
    assert runs == CONFLICT_ATTEMPTS


async def test_a_call_that_always_conflicts_is_answered_with_the_attempts_made() -> None:
    runs = 0

    async def stuck() -> None:
        nonlocal runs
        runs += 1
        raise transaction_conflict(attempts=1)

    with pytest.raises(DomainError) as caught:
        await retry_conflicts(stuck, attempts=3)
    assert runs == 3
    assert caught.value.reason is Reason.TRANSACTION_CONFLICT
    assert caught.value.metadata == {"attempts": "3"}


async def test_other_errors_are_not_retried() -> None:
    runs = 0

    async def refused() -> None:
        nonlocal runs
        runs += 1
        raise DomainError(Reason.SEATS_EXHAUSTED, "full", {"seats": "1"})

    with pytest.raises(DomainError) as caught:
        await retry_conflicts(refused)
    assert runs == 1
    assert caught.value.reason is Reason.SEATS_EXHAUSTED


def test_pauses_are_jittered_and_double() -> None:
    assert conflict_pause(1, rand=lambda: 1.0) * 2 == conflict_pause(2, rand=lambda: 1.0)
    assert conflict_pause(3, rand=lambda: 0.0) == 0.0


async def test_the_gate_lets_width_claims_through_per_entitlement_and_times_out_the_rest() -> None:
    gate = EntitlementGate(width=2, wait_seconds=0.2)
    release = asyncio.Event()
    inside = 0

    async def claim(key: str) -> None:
        nonlocal inside
        async with gate.passage(key):
            inside += 1
            await release.wait()

    held = [asyncio.create_task(claim("ent-a")) for _ in range(2)]
    other = asyncio.create_task(claim("ent-b"))
    while inside < 3:  # noqa: ASYNC110 (counts set by the claims themselves)
        await asyncio.sleep(0)
    with pytest.raises(DomainError) as caught:
        async with gate.passage("ent-a"):
            raise AssertionError("a third claim on ent-a got through")
    assert caught.value.reason is Reason.DATABASE_BUSY
    assert caught.value.metadata == {"limit": "lock_timeout"}
    assert gate.waiting("ent-a") == 2
    release.set()
    await asyncio.gather(*held, other)
    assert gate.waiting("ent-a") == gate.waiting("ent-b") == 0  # no lane is kept
