"""Outbound webhooks, the rules: what a subscription is, which events it gets, how its
webhook ids read, when a failing endpoint is retried and when it is paused.

No I/O here (the secret's random bytes aside, as ids take theirs): the sender
(app/webhook_sender.py) reads the log, posts and records; these functions decide.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from .errors import FieldViolation
from .events import EventType
from .messages import retry_delay

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # generated secrets; given ones may be 24 to 64 bytes
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
MAX_URL = 2000
MAX_DESCRIPTION = 200
MAX_PRODUCT_IDS = 100
MAX_EXCERPT = 500
PRODUCT_ID = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")  # domain/validation.SLUG's shape


class WebhookState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a caller chooses of a subscription (the rest is its delivery state)."""

    url: str
    event_types: tuple[str, ...] = ()  # EventType values; empty: every type
    product_ids: tuple[str, ...] = ()  # empty: every product
    description: str = ""


@dataclass(frozen=True)
class Subscription:
    subscription_id: str
    spec: SubscriptionSpec
    state: WebhookState
    cursor: int  # the last sequence delivered or skipped by the filters
    create_time: datetime
    update_time: datetime
    pause_reason: str = ""
    attempts: int = 0  # failed attempts in a row on the event after the cursor
    next_attempt_time: datetime | None = None
    failing_since: datetime | None = None


@dataclass(frozen=True)
class Delivery:
    """One attempt of one event to one subscription, as the delivery log keeps it."""

    subscription_id: str
    sequence: int
    attempt_time: datetime
    http_status: int  # 0: no answer (refused, timed out)
    delivered: bool
    response_excerpt: str
    redelivery: bool = False

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.subscription_id, self.sequence)


def wants(spec: SubscriptionSpec, event_type: str, product_id: str) -> bool:
    """Whether an event of this type, of an entitlement of this product, is sent."""
    if spec.event_types and event_type not in spec.event_types:
        return False
    return not spec.product_ids or product_id in spec.product_ids


def webhook_id(subscription_id: str, sequence: int) -> str:
    """The `webhook-id` of an event sent to a subscription: the same on every attempt and
    every redelivery, so that a receiver drops what it already has."""
    return f"{subscription_id}.{sequence}"


def sequence_of(subscription_id: str, presented: str) -> int | None:
    """The sequence a webhook id of this subscription names; None if it is not one."""
    prefix, _, number = presented.rpartition(".")
    if prefix != subscription_id or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def check_secret(path: str, secret: str) -> list[FieldViolation]:
    """A Standard Webhooks secret: `whsec_` and the base64 of 24 to 64 bytes."""
    body = secret.removeprefix(SECRET_PREFIX)
    problem = (
        f"must be {SECRET_PREFIX!r} followed by the base64 of {MIN_SECRET_BYTES} to "
        f"{MAX_SECRET_BYTES} bytes"
    )
    if body == secret or len(body) > 4 * MAX_SECRET_BYTES:
        return [FieldViolation(path, problem)]
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return [FieldViolation(path, problem)]
    if not MIN_SECRET_BYTES <= len(raw) <= MAX_SECRET_BYTES:
        return [FieldViolation(path, problem)]
    return []


KNOWN_TYPES = frozenset(t.value for t in EventType)


def check_spec(spec: SubscriptionSpec, path: str = "subscription") -> list[FieldViolation]:
    """Every problem of a subscription's URL, filters and description."""
    found = _check_url(f"{path}.url", spec.url)
    for i, event_type in enumerate(spec.event_types):
        if event_type not in KNOWN_TYPES:
            found.append(FieldViolation(f"{path}.event_types[{i}]", "is not an event type"))
    if len(spec.product_ids) > MAX_PRODUCT_IDS:
        found.append(FieldViolation(f"{path}.product_ids", f"at most {MAX_PRODUCT_IDS}"))
    for i, product_id in enumerate(spec.product_ids):
        if not PRODUCT_ID.fullmatch(product_id):
            found.append(FieldViolation(f"{path}.product_ids[{i}]", "is not a product id"))
    if len(spec.description) > MAX_DESCRIPTION:
        found.append(
            FieldViolation(f"{path}.description", f"must be at most {MAX_DESCRIPTION} characters")
        )
    elif not spec.description.isprintable():
        found.append(FieldViolation(f"{path}.description", "must be one line of text"))
    return found


def _check_url(path: str, url: str) -> list[FieldViolation]:
    if not url:
        return [FieldViolation(path, "is required")]
    if len(url) > MAX_URL:
        return [FieldViolation(path, f"must be at most {MAX_URL} characters")]
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return [FieldViolation(path, "is not a URL")]
    if parts.scheme not in ("http", "https") or not parts.hostname or not url.isprintable():
        return [FieldViolation(path, "must be an http:// or https:// URL with a host")]
    if parts.username or parts.password:
        return [FieldViolation(path, "must not carry a user or password")]
    return []


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing endpoint is retried (KEYTURN_WEBHOOKS_RETRY_*) and how long it may
    fail before the subscription is paused (KEYTURN_WEBHOOKS_PAUSE_AFTER_SECONDS)."""

    initial: timedelta = timedelta(seconds=5)
    maximum: timedelta = timedelta(hours=1)
    pause_after: timedelta = timedelta(days=3)


@dataclass(frozen=True)
class AfterFailure:
    """What a failed attempt leads to."""

    attempts: int
    failing_since: datetime
    next_attempt_time: datetime
    pause_reason: str  # non-empty: the subscription is paused now


def after_failure(
    subscription: Subscription, now: datetime, policy: RetryPolicy, what: str
) -> AfterFailure:
    """The next attempt after exponential backoff, or a pause once the endpoint has been
    failing for `policy.pause_after` (counted from its first failure in a row)."""
    attempts = subscription.attempts + 1
    since = subscription.failing_since or now
    reason = ""
    if now - since >= policy.pause_after:
        reason = (
            f"paused by Keyturn: failing since {since.isoformat()} ({attempts} attempts "
            f"in a row); last: {what}"
        )[:MAX_EXCERPT]
    delay = retry_delay(attempts, policy.initial, policy.maximum)
    return AfterFailure(attempts, since, now + delay, reason)


def excerpt(text: str) -> str:
    """What the delivery log keeps of an answer or an error: one line, bounded."""
    flat = " ".join(text.split())
    return flat[:MAX_EXCERPT]


def check_state(path: str, state: WebhookState | None) -> list[FieldViolation]:
    """A state the caller must name (None: unset or unknown)."""
    if state is None:
        return [FieldViolation(path, "must be WEBHOOK_STATE_ACTIVE or WEBHOOK_STATE_PAUSED")]
    return []
