"""The Salesforce Outbound Messaging endpoint: check the organization, read each record
back through the REST API, fulfil its order, and answer Salesforce.

Answers, chosen so that no order silently vanishes:
- `Ack true` (HTTP 200): every notification of the message was fulfilled, replayed
  (Salesforce delivered it again) or needs no order (not yet Activated / won).
- SOAP fault `soapenv:Client` (HTTP 500), nothing done: the body is no outbound message,
  or it comes from another organization than KEYTURN_SALESFORCE_ORGANIZATION_ID.
- SOAP fault `soapenv:Server` (HTTP 500): some record was not done: an unmapped product,
  an order Keyturn refuses, Salesforce's API or Keyturn unreachable. The faultstring
  names each one and is what Salesforce's Outbound Messages delivery status shows; the
  records that were done stay done, and the retry (Salesforce's own, for up to 24
  hours) replays them and tries the others again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from .product_map import ProductMap
from .salesforce_api import SalesforceApi, SalesforceApiError
from .salesforce_mapping import (
    KINDS,
    SOURCE,
    Ignored,
    UnmappedProduct,
    UnusableOrder,
    order_for_record,
)
from .salesforce_message import (
    Failure,
    Notification,
    UnusableMessage,
    ack_reply,
    fault_reply,
    parse_notifications,
    salesforce_id_15,
    same_salesforce_id,
)
from .webhook_server import ConnectorServer, Fulfil, Refused, Reply, Request, fulfil_order

log = logging.getLogger("keyturn.connect.salesforce")
DEFAULT_PATH = "/salesforce/outbound"
MAX_FAULT = 2000  # characters of the faultstring: Salesforce shows its start


@dataclass(frozen=True)
class SalesforceEndpoint:
    """What answering one message takes."""

    organization_id: str
    api: SalesforceApi
    products: ProductMap
    fulfil: Fulfil

    def answer(self, body: bytes) -> Reply:
        """One delivery of an outbound message: what to answer Salesforce."""
        try:
            message = parse_notifications(body)
        except UnusableMessage as exc:
            log.error("salesforce: refused a delivery: %s", exc)
            return fault_reply(f"not an outbound message: {exc}", client=True)
        if not same_salesforce_id(message.organization_id, self.organization_id):
            log.error("salesforce: refused a message of organization %s", message.organization_id)
            return fault_reply(
                f"organization {message.organization_id} is not the one this endpoint "
                "serves (KEYTURN_SALESFORCE_ORGANIZATION_ID); nothing was done",
                client=True,
            )
        failures = [
            failure
            for notification in message.notifications
            if (failure := self._fulfil(notification, message.session_id)) is not None
        ]
        if not failures:
            return ack_reply()
        return fault_reply(_summary(failures, len(message.notifications)), failures, client=False)

    def _fulfil(self, notification: Notification, session_id: str | None) -> Failure | None:
        """Fulfil one notification's record; None when done (or nothing to do)."""
        record_id = notification.object_id
        kind = KINDS.get(notification.object_type)
        if kind is None:
            supported = " or ".join(KINDS)
            message = f"sObject type {notification.object_type!r}: send {supported} records"
            return Failure(record_id, "UNSUPPORTED_OBJECT", message, temporary=False)
        try:
            records = self.api.query(kind.soql(record_id), session_id)
            if not records:
                raise UnusableOrder(f"{kind.name} {record_id} is not found or not visible")
            order = order_for_record(kind, records[0], lambda code: self.products.sku(SOURCE, code))
        except SalesforceApiError as exc:
            log.warning("salesforce %s %s: %s", kind.name, record_id, exc)
            return Failure(record_id, "SALESFORCE_API", str(exc), exc.temporary)
        except UnmappedProduct as exc:
            log.error("salesforce %s %s refused: %s", kind.name, record_id, exc)
            return Failure(record_id, "PRODUCT_NOT_MAPPED", str(exc), temporary=False)
        except UnusableOrder as exc:
            log.error("salesforce %s %s refused: %s", kind.name, record_id, exc)
            return Failure(record_id, "UNUSABLE_ORDER", str(exc), temporary=False)
        if isinstance(order, Ignored):
            log.info("salesforce %s %s: %s", kind.name, record_id, order.reason)
            return None
        outcome = fulfil_order(self.fulfil, order)
        if isinstance(outcome, Refused):
            return Failure(record_id, outcome.reason, outcome.message, outcome.temporary)
        replayed = " (replayed)" if outcome.response.replayed else ""
        log.info("salesforce %s %s fulfilled%s", kind.name, record_id, replayed)
        return None


def _summary(failures: Sequence[Failure], total: int) -> str:
    """The faultstring: which records were not done and why, within MAX_FAULT."""
    each = "; ".join(f"{f.object_id}: {f.reason}: {f.message}" for f in failures)
    text = f"Keyturn did not fulfil {len(failures)} of {total} records, retry: {each}"
    return text if len(text) <= MAX_FAULT else text[: MAX_FAULT - 3] + "..."


class SalesforceOutboundServer(ConnectorServer):
    """The connector's HTTP server with its one route: POST {path}."""

    def __init__(
        self, listen: tuple[str, int], endpoint: SalesforceEndpoint, path: str = DEFAULT_PATH
    ) -> None:
        if salesforce_id_15(endpoint.organization_id) is None:
            raise ValueError("a Salesforce organization id (00D..., 15 or 18 characters)")

        def route(request: Request) -> Reply:
            return endpoint.answer(request.body)

        super().__init__(listen, {path: route})
