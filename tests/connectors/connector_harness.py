"""Helpers of the connector tests: the Stripe lookup keys of the shipped catalog, Stripe events
built and signed as Stripe does, HTTP posts on loopback, database digests, and `keyturn`
commands run as child processes. The fixtures are in connector_fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy
import stripe

from keyturn.server.store.unit_of_work import Store

from support.rows import table_digests
from support.subprocess_server import LineCollector, child_env, keyturn_command

Json = dict[str, Any]

SECRET = "whsec_test_5f1c0a9e2b7d4c3a8e6f0b1d2c3e4f5a"
# The Stripe lookup keys of examples/catalog.yaml, which the connector tests load as shipped.
STANDARD = "CAD-STD-1Y"  # lookup key of the Standard price
PRO = "CAD-PRO-1Y"  # lookup key of the Pro price
PERPETUAL = "CAD-PRO-PERPETUAL"  # a one-off purchase (checkout in payment mode)
WAIT_S = 60.0  # upper bound for a child process to start or end; reached only on failure
API_VERSION = "2024-06-20"  # a version whose invoice lines still carry `price`


# --- what the database holds ---------------------------------------------------------------

EXTRA_TABLES = ("named_users", "outbox")  # not in support.rows.TABLES


async def database_state(store: Store) -> dict[str, str]:
    """A digest of every table, so that any insert or update shows."""
    digests = await table_digests(store)
    async with store.read() as tx:
        for table in EXTRA_TABLES:
            result = await tx.connection.execute(sqlalchemy.text(f"SELECT * FROM {table}"))
            rows = sorted(repr(tuple(row)) for row in result)
            digests[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return digests


# --- Stripe events -------------------------------------------------------------------------

_ids = itertools.count(1)


def stripe_id(prefix: str) -> str:
    """A fresh id shaped like Stripe's (`evt_1Q...`)."""
    return f"{prefix}_1Q{next(_ids):06d}TestKeyturnConn"


def price(lookup_key: str | None, price_id: str | None = None) -> Json:
    return {
        "id": price_id or f"price_{lookup_key or 'nokey'}",
        "object": "price",
        "active": True,
        "currency": "usd",
        "lookup_key": lookup_key,
        "product": "prod_AcmeCad",
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": 4900,
    }


def invoice_line(
    lookup_key: str | None, quantity: int, subscription: str, line_type: str = "subscription"
) -> Json:
    return {
        "id": stripe_id("il"),
        "object": "line_item",
        "amount": 4900 * quantity,
        "currency": "usd",
        "description": f"{quantity} x Acme CAD ({lookup_key})",
        "livemode": False,
        "period": {"start": 1767225600, "end": 1769904000},
        "price": price(lookup_key),
        "proration": False,
        "quantity": quantity,
        "subscription": subscription,
        "subscription_item": stripe_id("si"),
        "type": line_type,
    }


def invoice(
    billing_reason: str,
    subscription: str,
    lines: Sequence[Json],
    *,
    invoice_id: str | None = None,
    customer: str = "cus_Initech",
    email: str | None = "billing@initech.example",
    name: str | None = "Initech",
    new_shape: bool = False,
) -> Json:
    """An invoice as Stripe sends it; `new_shape`: API 2025-03-31 and later, where the
    subscription is under `parent.subscription_details`."""
    body: Json = {
        "id": invoice_id or stripe_id("in"),
        "object": "invoice",
        "amount_due": sum(int(line["amount"]) for line in lines),
        "amount_paid": sum(int(line["amount"]) for line in lines),
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "currency": "usd",
        "customer": customer,
        "customer_email": email,
        "customer_name": name,
        "lines": {
            "object": "list",
            "data": list(lines),
            "has_more": False,
            "total_count": len(lines),
            "url": "/v1/invoices/in_x/lines",
        },
        "livemode": False,
        "paid": True,
        "status": "paid",
    }
    if new_shape:
        body["parent"] = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": subscription},
        }
    else:
        body["subscription"] = subscription
    return body


def subscription_item(
    lookup_key: str | None, quantity: int, item_id: str, price_id: str | None = None
) -> Json:
    return {
        "id": item_id,
        "object": "subscription_item",
        "created": 1767225600,
        "metadata": {},
        "price": price(lookup_key, price_id),
        "quantity": quantity,
        "subscription": "sub_x",
    }


def subscription(
    subscription_id: str, items: Sequence[Json], customer: str = "cus_Initech", **fields: Any
) -> Json:
    body: Json = {
        "id": subscription_id,
        "object": "subscription",
        "cancel_at_period_end": False,
        "currency": "usd",
        "customer": customer,
        "items": {"object": "list", "data": list(items), "has_more": False},
        "livemode": False,
        "metadata": {},
        "status": "active",
    }
    body.update(fields)
    return body


def checkout_session(
    mode: str,
    metadata: Mapping[str, str],
    payment_status: str = "paid",
    customer: str | None = None,
) -> Json:
    return {
        "id": stripe_id("cs_test"),
        "object": "checkout.session",
        "amount_total": 29900,
        "currency": "usd",
        "customer": customer,
        "customer_details": {"email": "buyer@globex.example", "name": "Globex"},
        "metadata": dict(metadata),
        "mode": mode,
        "payment_status": payment_status,
        "status": "complete",
    }


def event(
    event_type: str,
    obj: Json,
    *,
    previous: Json | None = None,
    event_id: str | None = None,
) -> Json:
    data: Json = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": event_id or stripe_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(time.time()),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def payload_of(stripe_event: Json) -> str:
    """The body Stripe posts (pretty-printed JSON); the same event gives the same bytes."""
    return json.dumps(stripe_event, indent=2)


def sign(payload: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The Stripe-Signature header, computed as Stripe does."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = stripe.WebhookSignature._compute_signature(f"{t}.{payload}", secret)
    return f"t={t},v1={digest}"


# --- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: Json


def post(url: str, payload: bytes, headers: Mapping[str, str]) -> Answer:
    """POST on loopback (blocking: call it in a worker thread)."""
    request = urllib.request.Request(
        url,
        data=payload,
        method="POST",
        headers={"Content-Type": "application/json; charset=utf-8", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return Answer(response.status, json.loads(response.read()))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, json.loads(error.read()))


async def deliver(
    url: str,
    payload: str | Json,
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> Answer:
    """One delivery as Stripe makes it: the body, freshly signed (unless `signature` given)."""
    body = payload if isinstance(payload, str) else payload_of(payload)
    header = sign(body, secret, timestamp) if signature is None else signature
    headers = {"Stripe-Signature": header} if header else {}
    return await asyncio.to_thread(post, url, body.encode(), headers)


# --- `keyturn` child processes -------------------------------------------------------------


def run_keyturn(
    args: Sequence[str], cwd: Path, settings: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """One `keyturn` command to completion, whatever its exit code (blocking)."""
    return subprocess.run(
        [*keyturn_command(), *args],
        cwd=cwd,
        env=child_env(settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


async def run_keyturn_async(
    args: Sequence[str], cwd: Path, settings: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_keyturn, args, cwd, settings)


WEBHOOK_LINE = re.compile(r"^keyturn stripe webhook on (?P<url>http://\S+:(?P<port>\d+)/\S*)$")


class ChildProcess:
    """A long-running `keyturn` command; its stdout and stderr read line by line."""

    def __init__(self, args: Sequence[str], cwd: Path, settings: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            [*keyturn_command(), *args],
            cwd=cwd,
            env=child_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.stdout = LineCollector(self.process.stdout, f"child-{self.process.pid}-stdout")
        self.stderr = LineCollector(self.process.stderr, f"child-{self.process.pid}-stderr")

    def await_line(self, pattern: re.Pattern[str], timeout: float = WAIT_S) -> re.Match[str]:
        """The first stdout line matching `pattern`, waited for (bounded, no sleeping)."""
        if not self.stdout.wait_for(lambda lines: any(map(pattern.match, lines)), timeout):
            raise AssertionError(
                f"no stdout line matching {pattern.pattern!r} within {timeout}s "
                f"(exit code {self.process.poll()}); stdout:\n{self.stdout.text()}\n"
                f"stderr:\n{self.stderr.text()}"
            )
        return next(m for m in map(pattern.match, self.stdout.lines) if m)

    def terminate(self, timeout: float = WAIT_S) -> int:
        """SIGTERM and the exit code; SIGKILL (and AssertionError) if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"did not end within {timeout}s of SIGTERM") from None
        finally:
            self.stdout.join(5)
            self.stderr.join(5)
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()
        return code


@contextlib.contextmanager
def child(args: Sequence[str], cwd: Path, settings: Mapping[str, str]) -> Iterator[ChildProcess]:
    """A child process that is stopped (SIGTERM, then SIGKILL) however the block ends."""
    process = ChildProcess(args, cwd, settings)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            with contextlib.suppress(AssertionError):
                process.terminate()
