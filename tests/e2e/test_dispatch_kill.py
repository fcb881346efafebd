"""`kill -9` of an email dispatcher mid-send: every email goes out, none more than twice,
and twice only when the kill fell between the SMTP acceptance and the database record.

The dispatcher is `keyturn dispatch`, or the one inside `keyturn serve`; 30 license-key
emails are queued before it starts. The SMTP server (support/smtp.FaultAtQuit) kills
it at the end of the session of a message drawn at random: that message is accepted
(the dispatcher has the 250 of DATA) and cannot have been recorded as sent (the send
waits for the answer to QUIT). Other messages of its batch may be anywhere in their
sessions. Once it is dead, the messages received but not recorded as sent are the
ones in the window; the dispatcher is started again with its clock past the claims the
dead one held (claims last DispatchSettings.claim_for, the documented wait before a
dead dispatcher's messages are taken over), and sends the rest. Then every message
was received exactly once, or exactly twice if it was in the window, each with its own
license key; the outbox records each as sent.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from keyturn.fulfillment.v1 import catalog_pb2_grpc, fulfillment_pb2_grpc
from keyturn.server.app.context import AppContext
from keyturn.server.app.delivery import DispatchSettings

from conftest import Tokens, server_settings
from support.catalog import put_catalog
from support.durability import faults_line
from support.mailing import KEY_SKU, fulfil_many, keys_by_message, outbox_rows, sent_line
from support.readiness import serves
from support.rpc import create_sku
from support.smtp import FaultAtQuit, SmtpServer, body_text
from support.subprocess_server import ServerProcess, start_dispatcher, start_server

ORDERS = 30
BATCH = DispatchSettings().batch  # messages a dispatcher has in flight at once
LATER = DispatchSettings().claim_for + timedelta(seconds=1)  # the claims have run out
WAIT_S = 60.0
NAMES = {"dispatch": "cli", "serve": "serve"}  # in the FAULTS line
FAST = {
    "KEYTURN_DISPATCH_POLL_SECONDS": "0.1",
    "KEYTURN_DISPATCH_RETRY_INITIAL_SECONDS": "0.05",
    "KEYTURN_DISPATCH_RETRY_MAX_SECONDS": "0.5",
    "KEYTURN_DISPATCH_MAX_ATTEMPTS": "10000",  # refused while not armed: never FAILED
}


@contextlib.contextmanager
def dispatcher(command: str, cwd: Path, settings: Mapping[str, str]) -> Iterator[ServerProcess]:
    """`keyturn dispatch`, or `keyturn serve` (one process) with its dispatcher."""
    if command == "dispatch":
        with start_dispatcher(cwd, settings) as child:
            yield child
    else:
        with start_server(cwd, settings, workers=1) as child:
            yield child


def all_sent(message_ids: set[str]) -> Callable[[Sequence[str]], bool]:
    """Whether a dispatcher's log shows every one of `message_ids` recorded as sent."""
    checks = [sent_line(m) for m in message_ids]
    return lambda lines: all(check(lines) for check in checks)


@pytest.mark.parametrize("command", ["dispatch", "serve"])
async def test_kill_9_of_a_dispatcher_mid_send_sends_each_email_at_most_twice_and_none_lost(
    app: AppContext,
    database_url: str,
    tokens: Tokens,
    catalog_stub: catalog_pb2_grpc.CatalogServiceStub,
    fulfillment_stub: fulfillment_pb2_grpc.FulfillmentServiceStub,
    tmp_path: Path,
    command: str,
) -> None:
    seed = random.randrange(1 << 32)
    at = random.Random(seed).randint(1, ORDERS - BATCH)
    mailbox = FaultAtQuit(at)
    mailbox.answer = "451 4.3.0 not yet"  # until the dispatcher's pid is known
    smtp = SmtpServer(mailbox)
    smtp.start()
    try:
        # Queued by the test's own server, which has no dispatcher.
        await put_catalog(catalog_stub, tokens("catalog"), create_sku(KEY_SKU))
        responses = await fulfil_many(fulfillment_stub, tokens, ORDERS)
        keys = keys_by_message(responses)
        settings = server_settings(
            database_url,
            KEYTURN_SMTP_HOST="127.0.0.1",
            KEYTURN_SMTP_PORT=str(smtp.port),
            KEYTURN_SMTP_SECURITY="none",
            **FAST,
        )
        with dispatcher(command, tmp_path, settings) as child:
            mailbox.fault = lambda: os.kill(child.pid, signal.SIGKILL)
            mailbox.answer = "250 OK"
            assert await child.await_exit(WAIT_S) == -signal.SIGKILL
            killed_at = time.monotonic()
        received_before = collections.Counter(mailbox.message_ids())
        recorded = {r["message_id"] for r in await outbox_rows(app.store) if r["state"] == "sent"}
        assert set(received_before.values()) == {1}, received_before
        headers = {m: f"<{m}@localhost>" for m in keys}
        assert {headers[m] for m in recorded} <= set(received_before), "recorded, not received"
        in_window = {m for m in keys if headers[m] in received_before} - recorded
        assert mailbox.faulted_on in {headers[m] for m in in_window}

        # Started again once the dead one's claims have run out.
        mailbox.reopen()
        later = {**settings, "KEYTURN_CLOCK_OFFSET_SECONDS": str(LATER.total_seconds())}
        with dispatcher(command, tmp_path, later) as again:
            restart = {}
            if command == "serve":
                await serves(
                    again.address,
                    responses[0].entitlements[0].license_key,
                    "probe-after-restart",
                    clock_offset=LATER,
                )
                restart["restart_s"] = f"{time.monotonic() - killed_at:.2f}"
            await again.await_stderr(all_sent(set(keys) - recorded), WAIT_S)
            resent_s = time.monotonic() - killed_at
            again.signal(signal.SIGTERM)
            assert await again.await_exit(WAIT_S) == 0, again.stderr_tail()
    finally:
        smtp.stop()
    received = collections.Counter(mailbox.message_ids())
    expected = {headers[m]: 2 if m in in_window else 1 for m in keys}
    twice_outside = sum(1 for header, times in received.items() if times > expected.get(header, 0))
    faults_line(
        f"kill9-dispatch-{NAMES[command]}-{'sqlite' if database_url.startswith('sqlite') else 'pg'}",
        faults=1,
        requests=ORDERS,  # emails sent while the dispatcher was killed and restarted
        lost=sum(1 for header in expected if header not in received),
        twice=sum(1 for times in received.values() if times == 2),
        twice_outside_window=twice_outside,
        **restart,
        resent_s=f"{resent_s:.2f}",
        seed=seed,
    )
    assert dict(received) == expected
    for mail in mailbox.messages:
        message_id = str(mail["Message-ID"]).removeprefix("<").removesuffix("@localhost>")
        assert keys[message_id] in body_text(mail)
    rows = await outbox_rows(app.store)
    assert {r["message_id"]: r["state"] for r in rows} == dict.fromkeys(keys, "sent")
