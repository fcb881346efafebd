"""The seat transactions on PostgreSQL with asyncpg: few round trips, prepared statements.

The hot RPCs run here rather than through SQLAlchemy, whose statement
building cost more than the database work. The rule is not here: each
transaction locks the entitlement (one statement), notes pending lapses and
reads the device's activation (one statement, after the lock, so it sees
every claim committed before), asks `domain.seats.admit`, and writes the
activation, the kept seat count and the events in one statement.

Time comes from the database (`clock_timestamp()`), so replicas whose clocks
differ agree on which leases are live. A test clock that is not the system
clock is passed in instead.

A renewal of a seat that is held while the count fits the limit takes no
lock and no transaction: it reads, and then extends the lease only if the
activation is still as read (same lease, not released, lapse not recorded)
and the entitlement unchanged; otherwise it takes the locked path.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import asyncpg

from keyturn.server.clock import Clock, SystemClock
from keyturn.server.domain.catalog import LicenseModel
from keyturn.server.domain.deactivation_limits import ensure_allowed, releases_limited
from keyturn.server.domain.entitlement import Entitlement
from keyturn.server.domain.errors import (
    database_busy,
    database_unavailable,
    invalid_license_key,
    lease_superseded,
    seats_exhausted,
)
from keyturn.server.domain.named_users import NamedUser
from keyturn.server.domain.seats import (
    Activation,
    Lapse,
    SeatOutcome,
    admit,
    check_claimable,
    check_renewable,
    holds_seat,
    rank_needed,
    seat_freed_time,
    takes_seat,
)

from .activation_repository import activation_of
from .entitlement_gate import EntitlementGate
from .entitlement_repository import entitlement_of
from .event_repository import NewEvent
from .rows import Row
from .seats import (
    ActivationClaim,
    ClaimEvents,
    LeaseRef,
    LicenseCount,
    Release,
    ReleaseEvents,
    RenewalClaim,
    SeatResult,
    fresh_activation,
)
from .unit_of_work import BROKEN_CONNECTION, DuplicateKeyError, Store, storage_error

Db: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

_REFERENCES = (
    "ARRAY(SELECT r.external_reference FROM external_references AS r"
    " WHERE r.entitlement_id = e.entitlement_id ORDER BY r.external_reference) AS refs"
)
# $1: a fixed instant (a test clock) or NULL for the database's clock; $2: its offset.
_NOW = "coalesce($1::timestamptz, clock_timestamp() + $2::float8 * interval '1 second')"

LOCK_BY_KEY = f"SELECT e.*, {_REFERENCES} FROM entitlements AS e WHERE e.key_hash = $1 FOR UPDATE"
LOCK_BY_ID = (
    f"SELECT e.*, {_REFERENCES} FROM entitlements AS e WHERE e.entitlement_id = $1 FOR UPDATE"
)

# $3 entitlement, $4 lapse grace in seconds, $5 note lapses (floating), $6 the device.
_NOTE_LAPSES = f"""
WITH t AS (SELECT {_NOW} AS now),
lapsed AS (
    UPDATE activations AS a SET lapse_recorded_time = t.now FROM t
    WHERE $5 AND a.entitlement_id = $3 AND a.released_time IS NULL
      AND a.lapse_recorded_time IS NULL
      AND a.lease_expire_time <= t.now - $4::float8 * interval '1 second'
    RETURNING a.activation_id, a.lease_expire_time
)
SELECT t.now, ARRAY(SELECT activation_id FROM lapsed ORDER BY activation_id) AS lapsed,
       ARRAY(SELECT lease_expire_time FROM lapsed ORDER BY activation_id) AS lapsed_expiry,
       a.*, u.email AS user_email, u.create_time AS user_create_time,
       u.redeem_time AS user_redeem_time, u.identity_jti AS user_identity_jti,
       u.identity_used_time AS user_identity_used_time
FROM t LEFT JOIN activations AS a ON {{device}}
LEFT JOIN named_users AS u ON u.user_id = a.user_id
"""
NOTE_LAPSES_AND_FIND_DEVICE = _NOTE_LAPSES.format(
    device="a.entitlement_id = $3 AND a.fingerprint = $6"
)
NOTE_LAPSES_AND_FIND_ACTIVATION = _NOTE_LAPSES.format(device="a.activation_id = $6")


def _insert_events(first: int, only_after: str = "") -> str:
    """The events of `_event_arrays`, as parameters $first.. (one array per column); with
    `only_after` (a CTE), written only if that CTE returned a row."""
    arrays = ", ".join(
        f"${first + i}::{kind}[]"
        for i, kind in enumerate(
            ("text", "text", "timestamptz", "text", "text", "text", "json", "timestamptz", "text")
        )
    )
    source = f"{only_after}, " if only_after else ""
    return f"""
    INSERT INTO entitlement_events
        (entitlement_id, type, create_time, order_source, order_id, activation_id, snapshot,
         effective_time, actor)
    SELECT event.* FROM {source}unnest({arrays}) AS event"""


def _with_count_and_events(written: str, params: int) -> str:
    """One statement: `written` (an activation write using $1..$params, $2 being the
    entitlement), the entitlement's kept count, and the events, as unnest arrays."""
    count = params + 1
    return f"""
WITH written AS ({written}),
held AS (UPDATE entitlements SET seats_held = ${count} WHERE entitlement_id = $2),
recorded AS ({_insert_events(count + 1)})
SELECT 1
"""


_ACTIVATION_VALUES = 9  # activation id, entitlement, fingerprint ... user id
INSERT_ACTIVATION = _with_count_and_events(
    """
    INSERT INTO activations (activation_id, entitlement_id, fingerprint, label, lease_jti,
        lease_expire_time, create_time, update_time, seat_time, user_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)""",
    _ACTIVATION_VALUES,
)
UPDATE_ACTIVATION = _with_count_and_events(
    """
    UPDATE activations SET fingerprint = $3, label = $4, lease_jti = $5,
        lease_expire_time = $6, update_time = $7, seat_time = $8, user_id = $9,
        released_time = NULL, lapse_recorded_time = NULL, released_by = NULL,
        release_reason = NULL, deactivated = false
    WHERE activation_id = $1 AND entitlement_id = $2""",
    _ACTIVATION_VALUES,
)
RELEASE_ACTIVATION = _with_count_and_events(
    """
    UPDATE activations SET released_time = $3, update_time = $3, released_by = $5
    WHERE activation_id = $1 AND entitlement_id = $2 AND $4""",
    5,
)
# The newest counted events of a deactivation limit ($1 entitlement, $2 types, $3 since,
# $4 how many), through ix_entitlement_events_entitlement_id_type_create_time.
NEWEST_COUNTED = """
SELECT create_time FROM entitlement_events
WHERE entitlement_id = $1 AND type = ANY($2::text[]) AND create_time > $3
ORDER BY create_time DESC LIMIT $4
"""

# Seats in use of `e` at `t.now`: the kept count less the lapses not recorded yet ($3:
# the lapse grace in seconds), found through ix_activations_unlapsed.
_IN_USE = """
    e.seats_held - CASE WHEN e.license_model = 'floating' THEN (
        SELECT count(*) FROM activations AS p
        WHERE p.entitlement_id = e.entitlement_id AND p.released_time IS NULL
          AND p.lapse_recorded_time IS NULL
          AND p.lease_expire_time <= t.now - $3::float8 * interval '1 second'
    ) ELSE 0 END AS in_use"""

# The device's activation beside its entitlement's columns, prefixed a_, and its user.
_DEVICE_COLUMNS = """
       a.activation_id AS a_activation_id,
       a.entitlement_id AS a_entitlement_id, a.fingerprint AS a_fingerprint,
       a.label AS a_label, a.lease_jti AS a_lease_jti,
       a.lease_expire_time AS a_lease_expire_time, a.create_time AS a_create_time,
       a.released_time AS a_released_time, a.seat_time AS a_seat_time,
       a.user_id AS a_user_id, a.lapse_recorded_time AS a_lapse_recorded_time,
       a.update_time AS a_update_time, a.released_by AS a_released_by,
       a.release_reason AS a_release_reason, a.deactivated AS a_deactivated,
       u.email AS user_email, u.create_time AS user_create_time,
       u.redeem_time AS user_redeem_time, u.identity_jti AS user_identity_jti,
       u.identity_used_time AS user_identity_used_time"""

# The unlocked renewal: read, then extend only what is unchanged.
READ_FOR_RENEWAL = f"""
SELECT t.now, e.*, {_REFERENCES}, {_IN_USE}, {_DEVICE_COLUMNS}
FROM (SELECT {_NOW} AS now) AS t
JOIN activations AS a ON a.activation_id = $4
JOIN entitlements AS e ON e.entitlement_id = a.entitlement_id
LEFT JOIN named_users AS u ON u.user_id = a.user_id
"""
EXTEND_LEASE = """
UPDATE activations AS a SET lease_jti = $3, lease_expire_time = $4, update_time = $5
FROM entitlements AS e
WHERE a.activation_id = $1 AND a.lease_jti = $2 AND a.released_time IS NULL
  AND a.lapse_recorded_time IS NULL AND e.entitlement_id = a.entitlement_id
  AND e.update_time = $6
RETURNING a.activation_id
"""

# The unlocked activation of a new device: read ($4 key hash or entitlement id, $5 the
# device), then add it only if the entitlement is as read (ADD_DEVICE).
_READ_FOR_ACTIVATION = f"""
SELECT t.now, e.*, {_REFERENCES}, {_IN_USE}, {_DEVICE_COLUMNS}
FROM (SELECT {_NOW} AS now) AS t
JOIN entitlements AS e ON {{entitlement}}
LEFT JOIN activations AS a ON a.entitlement_id = e.entitlement_id AND a.fingerprint = $5
LEFT JOIN named_users AS u ON u.user_id = a.user_id
"""
READ_FOR_ACTIVATION_BY_KEY = _READ_FOR_ACTIVATION.format(entitlement="e.key_hash = $4")
READ_FOR_ACTIVATION_BY_ID = _READ_FOR_ACTIVATION.format(entitlement="e.entitlement_id = $4")
# $10 the seats held as read, $11 the entitlement's update time as read; nothing is
# written unless both still hold (then RETURNING gives the new count).
ADD_DEVICE = f"""
WITH held AS (
    UPDATE entitlements SET seats_held = seats_held + 1
    WHERE entitlement_id = $2 AND seats_held = $10 AND update_time = $11
      AND ($9::text IS NULL OR EXISTS (SELECT 1 FROM named_users WHERE user_id = $9))
    RETURNING seats_held
),
written AS (
    INSERT INTO activations (activation_id, entitlement_id, fingerprint, label, lease_jti,
        lease_expire_time, create_time, update_time, seat_time, user_id)
    SELECT $1, $2, $3, $4, $5, $6, $7, $7, $8, $9 FROM held
),
recorded AS ({_insert_events(12, only_after="held")})
SELECT seats_held FROM held
"""
# Under the entitlement's lock: the named user of an identity-token claim still exists.
USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM named_users WHERE user_id = $1)"
CONTENTION_MEMORY_SECONDS = 1.0  # after a lost race on an entitlement, lock it at once

_COUNT = f"""
SELECT t.now, e.*, {_REFERENCES}, {_IN_USE}
FROM (SELECT {_NOW} AS now) AS t, entitlements AS e
"""
COUNT_BY_KEY = _COUNT + " WHERE e.key_hash = $4"
COUNT_BY_ID = _COUNT + " WHERE e.entitlement_id = $4"

RANK = """
SELECT count(*) FROM activations AS a
WHERE a.entitlement_id = $1 AND a.released_time IS NULL
  AND ($2 OR (a.lapse_recorded_time IS NULL AND a.lease_expire_time > $3))
  AND (coalesce(a.seat_time, a.create_time) < $4
       OR (coalesce(a.seat_time, a.create_time) = $4 AND a.activation_id < $5))
"""


def _user(row: Row, user_id: str | None, entitlement_id: str) -> NamedUser | None:
    if user_id is None or row["user_email"] is None:
        return None
    return NamedUser(
        user_id=user_id,
        entitlement_id=entitlement_id,
        email=row["user_email"],
        create_time=row["user_create_time"],
        redeem_time=row["user_redeem_time"],
        identity_jti=row["user_identity_jti"],
        identity_used_time=row["user_identity_used_time"],
    )


def _renamed_activation(row: asyncpg.Record) -> Activation | None:
    if row["a_activation_id"] is None:
        return None
    prefix = "a_"
    return activation_of({k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)})


def _event_arrays(recorded: list[NewEvent]) -> list[list[Any]]:
    return [
        [e.entitlement_id for e in recorded],
        [e.type for e in recorded],
        [e.create_time for e in recorded],
        [e.order_source for e in recorded],
        [e.order_id for e in recorded],
        [e.activation_id for e in recorded],
        [e.snapshot for e in recorded],
        [e.effective_time for e in recorded],
        [e.actor for e in recorded],
    ]


async def _one_row(db: Db, statement: str, *args: object) -> asyncpg.Record:
    """The row of a statement that always returns one."""
    row = await db.fetchrow(statement, *args)
    assert row is not None
    return row


@contextlib.asynccontextmanager
async def _database_errors() -> AsyncIterator[None]:
    """Driver failures as the domain's (see unit_of_work.storage_error): a lost or refused
    database is DATABASE_UNAVAILABLE, a statement past the driver's bound DATABASE_BUSY."""
    try:
        yield
    except asyncpg.UniqueViolationError as error:
        raise DuplicateKeyError(str(error)) from error
    except asyncpg.PostgresError as error:
        answer = storage_error(error.sqlstate)
        if answer is None:
            raise
        raise answer from error
    except TimeoutError as error:  # asyncpg's command_timeout: no answer at all
        raise database_busy("statement_timeout") from error
    except (*BROKEN_CONNECTION, asyncpg.InterfaceError, OSError) as error:
        raise database_unavailable() from error


class PgSeats:
    def __init__(self, store: Store, clock: Clock, lapse_grace: timedelta) -> None:
        self._store = store
        self._clock = clock
        self._grace_seconds = lapse_grace.total_seconds()
        self._grace = lapse_grace
        self._contended: dict[str, float] = {}  # entitlement id -> when a race was lost
        self._gate = EntitlementGate(max(2, store.pool_size // 2), store.limits.lock)

    def _time_args(self) -> tuple[datetime | None, float]:
        """($1, $2) of every statement: the database's clock, shifted as the system clock
        is (tests of expiry); any other clock's own instant."""
        if isinstance(self._clock, SystemClock):
            return None, self._clock.offset.total_seconds()
        return self._clock.now(), 0.0

    async def now(self) -> datetime:
        """The instant seat decisions are taken at: the database's clock."""
        async with self._connection() as db:
            instant: datetime = await db.fetchval(f"SELECT {_NOW}", *self._time_args())
        return instant

    @contextlib.asynccontextmanager
    async def _connection(self, entitlement: str = "") -> AsyncIterator[Db]:
        """A pooled connection; for a claim on `entitlement` (its key hash or id) once the
        entitlement's gate lets it through."""
        async with contextlib.AsyncExitStack() as stack:
            if entitlement:
                await stack.enter_async_context(self._gate.passage(entitlement))
            await stack.enter_async_context(_database_errors())
            pool = await self._store.driver_pool()
            try:
                db = await pool.acquire(timeout=self._store.limits.pool)
            except TimeoutError as error:
                raise database_busy("pool_timeout") from error
            try:
                yield db
            except BROKEN_CONNECTION:
                db.terminate()  # its protocol state is lost (see BROKEN_CONNECTION)
                raise
            finally:
                await pool.release(db)

    @contextlib.asynccontextmanager
    async def _transaction(self, entitlement: str = "") -> AsyncIterator[Db]:
        async with self._connection(entitlement) as db, db.transaction():
            yield db

    # --- activation and renewal --------------------------------------------

    async def activate(self, claim: ActivationClaim, events: ClaimEvents) -> SeatResult:
        async with self._connection(claim.key_hash or claim.entitlement_id) as db:
            result = await self._add_device_unlocked(db, claim, events)
            if result is None:
                async with db.transaction():
                    result = await self._activate_locked(db, claim, events)
        await self._committed(result.lapsed, result.outcome)
        return result

    async def _add_device_unlocked(
        self, db: Db, claim: ActivationClaim, events: ClaimEvents
    ) -> SeatResult | None:
        """A device new to the entitlement, while no lapse waits to be recorded: read,
        decide, and add it in one statement that writes only if the entitlement is as
        read. None when the locked path must decide (a known device, pending lapses, a
        race lost to another claim on the same entitlement)."""
        row = await db.fetchrow(
            READ_FOR_ACTIVATION_BY_KEY if claim.key_hash else READ_FOR_ACTIVATION_BY_ID,
            *self._time_args(),
            self._grace_seconds,
            claim.key_hash or claim.entitlement_id,
            claim.fingerprint,
        )
        if row is None:
            raise invalid_license_key()
        entitlement = entitlement_of(row, tuple(row["refs"]))
        now: datetime = row["now"]
        check_claimable(entitlement, claim.product_id, now)
        held, in_use = int(row["seats_held"]), int(row["in_use"])
        if row["a_activation_id"] is not None or held != in_use:
            return None
        if self._contended_recently(entitlement.entitlement_id):
            return None
        if admit(None, False, in_use, entitlement.seat_limit) is SeatOutcome.REFUSED:
            raise seats_exhausted(
                entitlement.seats, entitlement.seat_limit
            )  # no seat was free when read
        fresh = fresh_activation(claim, entitlement, now)
        result = SeatResult(SeatOutcome.GRANTED, fresh, entitlement, in_use + 1, now)
        try:
            added = await db.fetchval(
                ADD_DEVICE,
                fresh.activation_id,
                fresh.entitlement_id,
                fresh.fingerprint,
                fresh.label,
                fresh.lease_jti,
                fresh.lease_expire_time,
                now,
                fresh.seat_time,
                fresh.user_id,
                held,
                entitlement.update_time,
                *_event_arrays(events(result)),
            )
        except asyncpg.UniqueViolationError:
            added = None  # the same device, added by a concurrent claim
        if added is None:
            self._note_contention(entitlement.entitlement_id)
            return None
        return result

    def _contended_recently(self, entitlement_id: str) -> bool:
        lost = self._contended.get(entitlement_id)
        return lost is not None and time.monotonic() - lost < CONTENTION_MEMORY_SECONDS

    def _note_contention(self, entitlement_id: str) -> None:
        if len(self._contended) > 10_000:
            self._contended.clear()
        self._contended[entitlement_id] = time.monotonic()

    async def _activate_locked(
        self, db: Db, claim: ActivationClaim, events: ClaimEvents
    ) -> SeatResult:
        lock, key = (
            (LOCK_BY_KEY, claim.key_hash) if claim.key_hash else (LOCK_BY_ID, claim.entitlement_id)
        )
        locked = await self._locked(db, lock, key, NOTE_LAPSES_AND_FIND_DEVICE, claim.fingerprint)
        if locked is None:
            raise invalid_license_key()
        entitlement, row, state = locked
        if claim.user_id is not None and not await db.fetchval(USER_EXISTS, claim.user_id):
            raise invalid_license_key()  # removed since their identity token was read
        now: datetime = state["now"]
        check_claimable(entitlement, claim.product_id, now)
        fresh = fresh_activation(claim, entitlement, now)
        return await self._claim(db, entitlement, row, state, fresh, False, events)

    async def _locked(
        self, db: Db, lock: str, key: str, find: str, device: str
    ) -> tuple[Entitlement, asyncpg.Record, asyncpg.Record] | None:
        """Lock the entitlement (`lock` by `key`), then, in a statement of its own so that it
        sees every claim committed before the lock was granted, record pending lapses and
        `find` the device. None: no such entitlement."""
        locked = await db.fetchrow(lock, key)
        if locked is None:
            return None
        entitlement = entitlement_of(locked, tuple(locked["refs"]))
        state = await _one_row(
            db,
            find,
            *self._time_args(),
            entitlement.entitlement_id,
            self._grace_seconds,
            entitlement.license_model is LicenseModel.FLOATING,
            device,
        )
        return entitlement, locked, state

    async def renew(self, claim: RenewalClaim, events: ClaimEvents) -> SeatResult:
        async with self._connection(claim.entitlement_id) as db:
            kept = await self._renew_unlocked(db, claim)
            if kept is not None:
                return kept
            async with db.transaction():
                locked = await self._locked(
                    db,
                    LOCK_BY_ID,
                    claim.entitlement_id,
                    NOTE_LAPSES_AND_FIND_ACTIVATION,
                    claim.activation_id,
                )
                if locked is None:
                    raise invalid_license_key()
                entitlement, row, state = locked
                now = state["now"]
                entitlement.ensure_usable(now)
                current = self._current(state)
                if current is not None and current.entitlement_id != claim.entitlement_id:
                    current = None
                held = check_renewable(current, claim.activation_id, claim.jti)
                wanted = replace(
                    held,
                    lease_jti=claim.new_jti,
                    lease_expire_time=entitlement.lease_expiry(now),
                    seat_time=now,
                    label="",
                )
                result = await self._claim(db, entitlement, row, state, wanted, True, events)
        await self._committed(result.lapsed, result.outcome)
        return result

    async def _renew_unlocked(self, db: Db, claim: RenewalClaim) -> SeatResult | None:
        """The renewal of a held seat while the count fits: no lock, no transaction. None
        when the locked path must decide (lapsed, over the limit, changed meanwhile)."""
        row = await db.fetchrow(
            READ_FOR_RENEWAL, *self._time_args(), self._grace_seconds, claim.activation_id
        )
        if row is None:
            return None
        now: datetime = row["now"]
        entitlement = entitlement_of(row, tuple(row["refs"]))
        current = _renamed_activation(row)
        if current is None or current.entitlement_id != claim.entitlement_id:
            return None
        check_renewable(current, claim.activation_id, claim.jti)
        entitlement.ensure_usable(now)
        holds = holds_seat(current, entitlement.license_model, now, self._grace)
        held = int(row["seats_held"])  # an upper bound of the seats in use
        if not holds or rank_needed(holds, held, entitlement.seat_limit):
            return None
        if admit(current, holds, held, entitlement.seat_limit) is not SeatOutcome.KEPT:
            return None
        expiry = entitlement.lease_expiry(now)
        extended = await db.fetchval(
            EXTEND_LEASE,
            current.activation_id,
            claim.jti,
            claim.new_jti,
            expiry,
            now,
            entitlement.update_time,
        )
        if extended is None:
            return None
        activation = replace(current, lease_jti=claim.new_jti, lease_expire_time=expiry)
        user = _user(row, current.user_id, entitlement.entitlement_id)
        in_use = int(row["in_use"])
        return SeatResult(SeatOutcome.KEPT, activation, entitlement, in_use, now, user)

    def _lapses(self, state: Row) -> tuple[Lapse, ...]:
        """The lapses the locked statement just recorded, each freed when the seat rule says."""
        return tuple(
            Lapse(activation_id, seat_freed_time(expiry, self._grace))
            for activation_id, expiry in zip(state["lapsed"], state["lapsed_expiry"], strict=True)
        )

    def _current(self, state: Row) -> Activation | None:
        if state["activation_id"] is None:
            return None
        current = activation_of(state)
        if current.activation_id in state["lapsed"]:
            current = replace(current, lapse_recorded_time=state["now"])
        return current

    async def _claim(
        self,
        db: Db,
        entitlement: Entitlement,
        locked: Row,
        state: Row,
        wanted: Activation,
        renewal: bool,
        events: ClaimEvents,
    ) -> SeatResult:
        now: datetime = state["now"]
        lapsed = self._lapses(state)
        current = self._current(state)
        model = entitlement.license_model
        holds = current is not None and holds_seat(current, model, now, self._grace)
        in_use = int(locked["seats_held"]) - len(lapsed)
        ahead = 0
        if current is not None and rank_needed(holds, in_use, entitlement.seat_limit):
            ahead = await db.fetchval(
                RANK,
                entitlement.entitlement_id,
                model is LicenseModel.NODE_LOCKED,
                now - self._grace,
                current.seat_time or current.create_time,
                current.activation_id,
            )
        outcome = admit(current, holds, in_use, entitlement.seat_limit, ahead)
        if outcome is SeatOutcome.REFUSED:
            raise seats_exhausted(entitlement.seats, entitlement.seat_limit)
        took = takes_seat(outcome)
        seats_in_use = in_use + 1 if took else in_use
        user = None
        if current is None:
            activation = wanted
            statement = INSERT_ACTIVATION
        else:
            activation = replace(
                current,
                label=wanted.label or current.label,
                lease_jti=wanted.lease_jti,
                lease_expire_time=wanted.lease_expire_time,
                seat_time=current.seat_time if outcome is SeatOutcome.KEPT else now,
                user_id=current.user_id if renewal else wanted.user_id,
                released_time=None,
                lapse_recorded_time=None,
            )
            statement = UPDATE_ACTIVATION
            if renewal:
                user = _user(state, current.user_id, entitlement.entitlement_id)
        result = SeatResult(outcome, activation, entitlement, seats_in_use, now, user, lapsed)
        await db.execute(
            statement,
            activation.activation_id,
            activation.entitlement_id,
            activation.fingerprint,
            activation.label,
            activation.lease_jti,
            activation.lease_expire_time,
            now,
            activation.seat_time,
            activation.user_id,
            seats_in_use,
            *_event_arrays(events(result)),
        )
        return result

    async def _committed(self, lapsed: tuple[Lapse, ...], outcome: SeatOutcome) -> None:
        if lapsed or takes_seat(outcome):
            await self._store.events_committed()

    # --- release and check --------------------------------------------------

    async def release(self, lease: LeaseRef, events: ReleaseEvents, released_by: str) -> Release:
        async with self._transaction(lease.entitlement_id) as db:
            locked = await self._locked(
                db,
                LOCK_BY_ID,
                lease.entitlement_id,
                NOTE_LAPSES_AND_FIND_ACTIVATION,
                lease.activation_id,
            )
            if locked is None:
                raise lease_superseded(lease.activation_id)
            entitlement, row, state = locked
            now: datetime = state["now"]
            lapsed = self._lapses(state)
            current = self._current(state)
            if not lease.is_current_for(current):
                raise lease_superseded(lease.activation_id)
            released_now = current.released_time is None
            if released_now and releases_limited(entitlement.deactivation_limit):
                await self._ensure_release_allowed(db, entitlement, now)
            counted = released_now and current.lapse_recorded_time is None
            held = int(row["seats_held"]) - len(lapsed) - (1 if counted else 0)
            result = Release(entitlement, held, now, released_now, lapsed)
            recorded = events(result, lease.activation_id)
            await db.execute(
                RELEASE_ACTIVATION,
                current.activation_id,
                entitlement.entitlement_id,
                now,
                released_now,
                released_by,
                held,
                *_event_arrays(recorded),
            )
        if recorded:
            await self._store.events_committed()
        return result

    async def _ensure_release_allowed(
        self, db: Db, entitlement: Entitlement, now: datetime
    ) -> None:
        """A device's release, where its SKU counts releases against the deactivation limit
        (the caller holds the entitlement's lock, so concurrent ones count each other)."""
        limit = entitlement.deactivation_limit
        assert limit is not None
        newest = await db.fetch(
            NEWEST_COUNTED,
            entitlement.entitlement_id,
            [t.value for t in limit.counted_types],
            limit.window_start(now),
            limit.count,
        )
        ensure_allowed(limit, [r["create_time"] for r in newest], now)

    async def check(self, key_hash: str, entitlement_id: str) -> LicenseCount | None:
        async with self._connection() as db:
            row = await db.fetchrow(
                COUNT_BY_KEY if key_hash else COUNT_BY_ID,
                *self._time_args(),
                self._grace_seconds,
                key_hash or entitlement_id,
            )
        if row is None:
            return None
        return LicenseCount(entitlement_of(row, tuple(row["refs"])), int(row["in_use"]), row["now"])
