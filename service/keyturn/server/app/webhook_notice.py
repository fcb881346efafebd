"""The email an operator gets when Keyturn pauses a failing webhook subscription.

Sent to KEYTURN_WEBHOOKS_NOTIFY_EMAIL through the SMTP server of the credential emails,
by the process that paused the subscription, once. Best effort on purpose: the durable
notice is the audit record `webhook.pause`, written in the pause's own transaction; a
mail that cannot go is logged, not queued (the outbox holds credential emails of
entitlements, and a pause is not one).
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import make_msgid

from keyturn.server.dispatch.smtp import DeliveryError
from keyturn.server.domain.webhooks import Subscription

from .delivery import Sender

log = logging.getLogger("keyturn.webhooks")


class PauseNotice:
    def __init__(self, sender: Sender, mail_from: str, to: str) -> None:
        self._sender = sender
        self._from = mail_from
        self._to = to

    def compose(self, subscription: Subscription) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._from
        mail["To"] = self._to
        mail["Subject"] = f"Keyturn paused the webhook subscription {subscription.subscription_id}"
        mail["Message-ID"] = make_msgid("webhook-pause")
        mail.set_content(
            f"Keyturn stopped sending events to {subscription.spec.url}"
            f" ({subscription.spec.description or 'no description'}).\n\n"
            f"{subscription.pause_reason}\n\n"
            f"Nothing is lost: the subscription stays at sequence {subscription.cursor}. Once "
            "the endpoint answers again, resume it (keyturn webhooks resume "
            f"{subscription.subscription_id}, or UpdateWebhookSubscription with state "
            "WEBHOOK_STATE_ACTIVE) and the events follow in order.\n"
        )
        return mail

    async def send(self, subscription: Subscription) -> None:
        try:
            await self._sender.send(self.compose(subscription))
        except (DeliveryError, OSError) as failure:
            log.warning(
                "the pause notice of %s could not be sent: %s",
                subscription.subscription_id,
                failure,
            )
