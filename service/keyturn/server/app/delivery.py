"""The dispatcher: sends the outbox's due emails and records how each attempt went.

Exactly-once in practice: a message is claimed (for a while) before it is
sent and marked right after, so replicas never send the same one twice. The
one window is a crash after the SMTP server accepted a message and before it
was marked sent: the claim then runs out and the message goes again, with the
same Message-ID, which lets a receiver drop the repeat.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, Protocol

from keyturn.server.dispatch.rendering import MailRenderer
from keyturn.server.dispatch.smtp import DeliveryError
from keyturn.server.domain.messages import (
    MessageKind,
    MessageState,
    OutboundMessage,
    retry_delay,
)
from keyturn.server.store.unit_of_work import CommitBell

from .context import AppContext
from .rounds import run_rounds

log = logging.getLogger("keyturn.dispatch")


class Withdrawn(Exception):
    """The invitation is no longer for its recipient: the user was removed or their
    email changed after it was queued (app/named_user_admin.py withdraws the queued ones;
    this catches one a dispatcher had already claimed). Never sent, never retried."""


class Sender(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


@dataclass(frozen=True)
class DispatchSettings:
    mail_from: str = "Keyturn <licenses@localhost>"
    batch: int = 8  # claimed and sent together, so every claim covers one attempt only
    poll_seconds: float = 1.0
    retry_initial: timedelta = timedelta(seconds=5)
    retry_max: timedelta = timedelta(minutes=10)
    max_attempts: int = 50
    claim_for: timedelta = timedelta(minutes=5)  # longer than any one SMTP attempt


class Dispatcher:
    def __init__(
        self,
        ctx: AppContext,
        sender: Sender,
        renderer: MailRenderer,
        settings: DispatchSettings,
    ) -> None:
        self._ctx = ctx
        self._sender = sender
        self._renderer = renderer
        self._settings = settings
        domain = parseaddr(settings.mail_from)[1].rpartition("@")[2]
        self._id_domain = domain or "keyturn.invalid"
        self.settled = CommitBell()  # rung after each attempt's outcome is recorded

    async def run(self) -> None:
        """Send until cancelled: at once when this process queues mail, else every poll."""
        await run_rounds(
            self._ctx.store.bell,
            self.dispatch_due,
            batch=self._settings.batch,
            wait_seconds=self._wait_seconds,
            log=log,
            what="dispatch",
        )

    async def _wait_seconds(self) -> float:
        """Until the earliest retry is due, at most the poll interval."""
        async with self._ctx.store.read() as tx:
            due = await tx.outbox.next_due_time()
        poll = self._settings.poll_seconds
        if due is None:
            return poll
        return min(poll, max(0.0, (due - self._ctx.clock.now()).total_seconds()))

    async def dispatch_due(self) -> int:
        """One round: claim due messages, send them, record the outcomes. Returns the
        number of messages attempted."""
        now = self._ctx.clock.now()
        async with self._ctx.store.write() as tx:
            claimed = await tx.outbox.claim_due(now, self._settings.claim_for, self._settings.batch)
        await asyncio.gather(*(self._attempt(m) for m in claimed))
        return len(claimed)

    async def _attempt(self, message: OutboundMessage) -> None:
        attempts = message.attempts + 1
        try:
            email = await self._compose(message)
            await self._sender.send(email)
        except DeliveryError as failure:
            await self._record_failure(message, attempts, failure.reason, failure.permanent)
            return
        except Withdrawn as withdrawn:
            await self._record_failure(message, attempts, f"withdrawn: {withdrawn}", True)
            return
        except Exception as exc:  # a template or data fault: keep it queued, say why
            log.exception("composing message %s failed", message.message_id)
            await self._record_failure(message, attempts, f"cannot compose: {exc}", False)
            return
        async with self._ctx.store.write() as tx:
            await tx.outbox.settle(
                message.message_id, MessageState.SENT, attempts, self._ctx.clock.now()
            )
        self.settled.ring()
        log.info("sent %s (%s) after %d attempts", message.message_id, message.kind, attempts)

    async def _record_failure(
        self, message: OutboundMessage, attempts: int, reason: str, permanent: bool
    ) -> None:
        now = self._ctx.clock.now()
        gave_up = permanent or attempts >= self._settings.max_attempts
        if gave_up and not permanent:
            reason = f"gave up after {attempts} attempts; last: {reason}"
        retry_at = None
        if not gave_up:
            retry_at = now + retry_delay(
                attempts, self._settings.retry_initial, self._settings.retry_max
            )
        async with self._ctx.store.write() as tx:
            await tx.outbox.settle(
                message.message_id,
                MessageState.FAILED if gave_up else MessageState.QUEUED,
                attempts,
                now,
                reason,
                retry_at,
            )
        self.settled.ring()
        log.warning(
            "message %s attempt %d failed (%s): %s",
            message.message_id,
            attempts,
            "permanent" if gave_up else f"retry at {retry_at}",
            # SMTP servers often quote the recipient; logs carry no customer address
            # (GetOrder shows the reason as it came).
            _without(message.to_email, reason),
        )

    async def _compose(self, message: OutboundMessage) -> EmailMessage:
        values = await self._values(message)
        rendered = self._renderer.render(message.kind, values)
        email = EmailMessage()
        email["From"] = self._settings.mail_from
        email["To"] = message.to_email
        email["Subject"] = rendered.subject
        email["Message-ID"] = f"<{message.message_id}@{self._id_domain}>"
        email["Date"] = format_datetime(message.create_time)
        email.set_content(rendered.text)
        email.add_alternative(rendered.html, subtype="html")
        return email

    async def _values(self, message: OutboundMessage) -> dict[str, Any]:
        """What the templates show, with the secret unsealed only now, in memory."""
        sealer = self._ctx.sealer
        async with self._ctx.store.read() as tx:
            entitlement = await tx.entitlements.get(message.entitlement_id)
            if entitlement is None:
                raise ValueError(f"entitlement {message.entitlement_id} is gone")
            product = await tx.catalog.get_product(entitlement.product_id)
            if message.kind is MessageKind.INVITATION:
                user = await tx.named_users.get(message.user_id or "")
                if user is None:
                    raise Withdrawn("the named user was removed")
                if user.email != message.to_email:
                    raise Withdrawn("the named user's email was changed")
                sealed = await tx.named_users.sealed_invitation(user.user_id)
            else:
                sealed = await tx.entitlements.sealed_key(entitlement.entitlement_id)
        if sealed is None:
            raise ValueError(f"no credential to send for {message.message_id}")
        edition = product.edition(entitlement.edition_id) if product else None
        end = entitlement.end_time
        credential = sealer.unseal(sealed).decode()
        return {
            "product_name": (product.display_name if product else "") or entitlement.product_id,
            "edition_name": (edition.display_name if edition else "") or entitlement.edition_id,
            "customer_name": entitlement.customer.name,
            "seats": entitlement.seats,
            "end_date": _date(end),
            "license_key": credential if message.kind is MessageKind.LICENSE_KEY else "",
            "invitation_code": credential if message.kind is MessageKind.INVITATION else "",
            "email": message.to_email,
        }


def _without(address: str, text: str) -> str:
    """`text` with `address` (in any case) replaced by a placeholder."""
    if not address:
        return text
    return re.sub(re.escape(address), "<recipient>", text, flags=re.IGNORECASE)


def _date(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d")
