"""Credential emails as the outbox keeps them: what to send, to whom, and how it went.

The content (the license key or invitation code) is not stored here: it is
read, sealed, from the entitlement or the named user when the email is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class MessageKind(StrEnum):
    LICENSE_KEY = "license_key"
    INVITATION = "invitation"


class MessageState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class OutboundMessage:
    message_id: str
    kind: MessageKind
    entitlement_id: str
    to_email: str
    order_source: str
    order_id: str
    create_time: datetime
    user_id: str | None = None
    state: MessageState = MessageState.QUEUED
    attempts: int = 0
    next_attempt_time: datetime | None = None
    last_error: str = ""
    sent_time: datetime | None = None


def retry_delay(attempts: int, initial: timedelta, maximum: timedelta) -> timedelta:
    """Exponential backoff: `initial` after the first failed attempt, doubling, capped."""
    exponent = min(max(attempts - 1, 0), 32)
    delay: timedelta = initial * (2**exponent)
    return min(delay, maximum)
