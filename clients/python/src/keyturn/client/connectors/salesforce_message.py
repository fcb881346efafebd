"""Salesforce Outbound Messaging on the wire: the SOAP `notifications` Salesforce posts,
read with a hardened parser, and the two answers it understands.

Salesforce posts (Outbound Messaging WSDL, namespace http://soap.sforce.com/2005/09/outbound):

    <soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ...>
      <soapenv:Body>
        <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
          <OrganizationId>00D...</OrganizationId>
          <ActionId>04k...</ActionId>
          <SessionId>...</SessionId>            (xsi:nil="true" unless "Send Session ID")
          <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/62.0/00D...</EnterpriseUrl>
          <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/62.0/00D...</PartnerUrl>
          <Notification>                         (1 to 100)
            <Id>04l...</Id>
            <sObject xsi:type="sf:Order" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
              <sf:Id>801...</sf:Id> ...the fields picked for the message...
            </sObject>
          </Notification>
        </notifications>
      </soapenv:Body>
    </soapenv:Envelope>

It stops retrying a message only on `<notificationsResponse><Ack>true</Ack>` (HTTP 200);
anything else (here: a SOAP fault, HTTP 500, whose faultstring its delivery status
queue shows) is retried with growing intervals for up to 24 hours.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .webhook_server import Reply

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND = "http://soap.sforce.com/2005/09/outbound"
SOBJECT = "urn:sobject.enterprise.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
KEYTURN = "urn:keyturn:connect:salesforce"  # the fault detail's own elements
MAX_NOTIFICATIONS = 100
CONTENT_TYPE = "text/xml; charset=utf-8"

_ID = re.compile(r"[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?")
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


class UnusableMessage(ValueError):
    """The body is not an Outbound Messaging `notifications` envelope."""


def is_salesforce_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def salesforce_id_15(value: str) -> str | None:
    """The case-sensitive 15-character form of a Salesforce id given in either form, or
    None when it is no id (an 18-character id whose last three do not check out)."""
    if not is_salesforce_id(value):
        return None
    short = value[:15]
    if len(value) == 18 and value[15:].upper() != _suffix(short):
        return None
    return short


def _suffix(short: str) -> str:
    """The three characters that make an id case-insensitive: one per five, each
    spelling which of them are upper case."""
    chunks = (short[i : i + 5] for i in range(0, 15, 5))
    return "".join(
        _CHECKSUM[sum(1 << i for i, char in enumerate(chunk) if "A" <= char <= "Z")]
        for chunk in chunks
    )


def same_salesforce_id(first: str, second: str) -> bool:
    """Whether two ids, each in its 15- or 18-character form, name the same record."""
    short = salesforce_id_15(first)
    return short is not None and short == salesforce_id_15(second)


@dataclass(frozen=True)
class Notification:
    """One record the message is about: the notification's id and the sObject's."""

    notification_id: str
    object_type: str  # Order, Opportunity... (xsi:type without its prefix)
    object_id: str
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notifications:
    organization_id: str
    action_id: str
    session_id: str | None
    enterprise_url: str
    partner_url: str
    notifications: Sequence[Notification]


def parse_notifications(body: bytes) -> Notifications:
    """The message in `body`; UnusableMessage saying what is wrong. No DTDs, entities or
    external references are read (defusedxml refuses them)."""
    try:
        envelope = SafeET.fromstring(body)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise UnusableMessage(f"not an XML document Keyturn reads: {exc}") from None
    if envelope.tag != f"{{{SOAP_ENV}}}Envelope":
        raise UnusableMessage("not a SOAP 1.1 envelope")
    message = envelope.find(f"{{{SOAP_ENV}}}Body/{{{OUTBOUND}}}notifications")
    if message is None:
        raise UnusableMessage("the SOAP body holds no Outbound Messaging notifications")
    organization_id = _text(message, "OrganizationId")
    if salesforce_id_15(organization_id) is None:
        raise UnusableMessage(f"OrganizationId {organization_id!r} is not a Salesforce id")
    items = [_notification(n) for n in message.findall(f"{{{OUTBOUND}}}Notification")]
    if not 1 <= len(items) <= MAX_NOTIFICATIONS:
        raise UnusableMessage(f"{len(items)} notifications: Salesforce sends 1 to 100")
    session = message.find(f"{{{OUTBOUND}}}SessionId")
    nil = session is None or session.get(f"{{{XSI}}}nil") == "true"
    return Notifications(
        organization_id=organization_id,
        action_id=_text(message, "ActionId"),
        session_id=None if nil or session is None else (session.text or "").strip() or None,
        enterprise_url=_text(message, "EnterpriseUrl"),
        partner_url=_text(message, "PartnerUrl"),
        notifications=items,
    )


def _text(parent: Element, name: str, namespace: str = OUTBOUND) -> str:
    found = parent.find(f"{{{namespace}}}{name}")
    return "" if found is None else (found.text or "").strip()


def _notification(element: Element) -> Notification:
    notification_id = _text(element, "Id")
    record = element.find(f"{{{OUTBOUND}}}sObject")
    if record is None:
        raise UnusableMessage(f"notification {notification_id!r} carries no sObject")
    object_type = (record.get(f"{{{XSI}}}type") or "").rpartition(":")[2]
    object_id = _text(record, "Id", SOBJECT)
    if not is_salesforce_id(object_id):
        raise UnusableMessage(f"notification {notification_id!r}: sObject Id {object_id!r}")
    fields = {
        child.tag.rpartition("}")[2]: (child.text or "").strip()
        for child in record
        if child.tag.startswith(f"{{{SOBJECT}}}")
    }
    return Notification(notification_id, object_type, object_id, fields)


# --- answers ---------------------------------------------------------------------------------


def _envelope() -> tuple[Element, Element]:
    envelope = Element(f"{{{SOAP_ENV}}}Envelope")
    return envelope, ET.SubElement(envelope, f"{{{SOAP_ENV}}}Body")


def _reply(status: HTTPStatus, envelope: Element) -> Reply:
    ET.register_namespace("soapenv", SOAP_ENV)
    ET.register_namespace("keyturn", KEYTURN)
    return Reply(status, ET.tostring(envelope, encoding="utf-8"), CONTENT_TYPE)


def ack_reply() -> Reply:
    """`<notificationsResponse><Ack>true</Ack>`: Salesforce drops the message from its queue."""
    envelope, body = _envelope()
    response = ET.SubElement(body, f"{{{OUTBOUND}}}notificationsResponse")
    ET.SubElement(response, f"{{{OUTBOUND}}}Ack").text = "true"
    return _reply(HTTPStatus.OK, envelope)


@dataclass(frozen=True)
class Failure:
    """Why one record of the message was not done; `temporary`: a retry may succeed as is."""

    object_id: str
    reason: str
    message: str
    temporary: bool


def fault_reply(summary: str, failures: Sequence[Failure] = (), *, client: bool) -> Reply:
    """A SOAP fault (HTTP 500): not acknowledged, so Salesforce retries and shows
    `summary` as the delivery failure reason; the detail lists each record's reason."""
    envelope, body = _envelope()
    fault = ET.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    ET.SubElement(fault, "faultcode").text = "soapenv:Client" if client else "soapenv:Server"
    ET.SubElement(fault, "faultstring").text = summary
    if failures:
        detail = ET.SubElement(ET.SubElement(fault, "detail"), f"{{{KEYTURN}}}failures")
        for failure in failures:
            item = ET.SubElement(detail, f"{{{KEYTURN}}}failure")
            item.set("id", failure.object_id)
            item.set("reason", failure.reason)
            item.set("temporary", "true" if failure.temporary else "false")
            item.text = failure.message
    return _reply(HTTPStatus.INTERNAL_SERVER_ERROR, envelope)
