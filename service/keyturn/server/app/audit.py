"""Who made a change, and the audit row every change leaves.

The actor of a call is set once, by the transport's guard after it authenticated the
API token (`token:ID`), and read here by every use case that changes something, so no
use case can forget to pass it and none can name someone else. Code outside a call
names its own actor with `acting_as`: the lapse sweep (`system:lapse-sweep`), the CLI
(`cli:USER`). Seat events name their device (`device:ACTIVATION_ID`) where the seat
transactions write them.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from keyturn.server.store.unit_of_work import Transaction

SYSTEM = "system"

_current: ContextVar[str] = ContextVar("keyturn_actor", default=SYSTEM)


def token_actor(token_id: str) -> str:
    return f"token:{token_id}"


def device_actor(activation_id: str) -> str:
    return f"device:{activation_id}"


def system_actor(job: str) -> str:
    return f"{SYSTEM}:{job}"


def cli_actor() -> str:
    """The operating-system user running a `keyturn` command against the database."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's)
        user = "unknown"
    return f"cli:{user}"


def current_actor() -> str:
    return _current.get()


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Changes made inside the block are recorded as `actor`'s."""
    reset = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(reset)


async def record(
    tx: Transaction,
    now: datetime,
    action: str,
    resource: str,
    *,
    entitlement_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """One audit row for a change made in `tx`, by the current actor. `action` is
    `noun.verb` (order.fulfil, sku.put, token.revoke), `resource` what it changed
    (skus/ID, orders/SOURCE/ID, entitlements/ID)."""
    await tx.audit.append(
        create_time=now,
        actor=current_actor(),
        action=action,
        resource=resource,
        entitlement_id=entitlement_id,
        details=details or {},
    )
