"""Helpers of the Salesforce connector tests: Salesforce ids with their checksum, outbound
messages in the exact SOAP shape Salesforce posts, their answers read back, and a
stand-in for Salesforce's REST API (the SOQL query endpoint and the OAuth token
endpoint) that answers in the documented JSON shape, only to a valid bearer token, and
only with the fields the query names."""

from __future__ import annotations

import itertools
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET

from support.stand_in import JsonHandler, StandInServer

Json = dict[str, Any]
API_VERSION = "62.0"
WAIT_S = 60.0

# --- ids --------------------------------------------------------------------------------

_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ids = itertools.count(1)


def id18(short: str) -> str:
    """The 18-character form of a 15-character id (Salesforce's case-safe suffix)."""
    assert len(short) == 15, short
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, c in enumerate(short[start : start + 5]) if c.isupper())
        suffix += _CHECKSUM[bits]
    return short + suffix


def new_id(prefix: str) -> str:
    """A fresh 18-character id with `prefix` (801 Order, 800 Contract, 001 Account...),
    mixed case as real ids are, so that the checksum matters."""
    body = f"{prefix}Kt{next(_ids):010d}"[:15]
    return id18(body)


ORG_ID = id18("00D5g000004ElqN")  # the org the endpoint serves
OTHER_ORG_ID = id18("00D7F00000107Xs")
ACTION_ID = id18("04k5g0000008Q1h")
ACCOUNT_ID = id18("001Kt00000InItE")  # Initech


# --- the records the REST stand-in holds --------------------------------------------------


def _attributes(kind: str, record_id: str | None = None) -> Json:
    url = f"/services/data/v{API_VERSION}/sobjects/{kind}" + (f"/{record_id}" if record_id else "")
    return {"type": kind, "url": url}


def contact(email: str | None) -> Json | None:
    return None if email is None else {"attributes": _attributes("Contact"), "Email": email}


def line_items(kind: str, prefix: str, lines: Sequence[tuple[str, float]]) -> Json | None:
    """A subquery's record set of products (None when empty, as the API answers)."""
    items = [
        {
            "attributes": _attributes(kind, item_id),
            "Id": item_id,
            "Quantity": float(quantity),
            "Product2": {"attributes": _attributes("Product2"), "ProductCode": code},
        }
        for code, quantity in lines
        for item_id in [new_id(prefix)]
    ]
    return {"totalSize": len(items), "done": True, "records": items} if items else None


def new_order(
    order_type: str | None,
    lines: Sequence[tuple[str, float]],
    contract_id: str | None = "",
    **fields: Any,
) -> Json:
    """An Activated Order with a fresh Id, on a fresh Contract unless one (or None) is given."""
    contract = new_id("800") if contract_id == "" else contract_id
    return order_record(
        order_id=new_id("801"), order_type=order_type, lines=lines, contract_id=contract, **fields
    )


def order_record(
    *,
    order_id: str,
    order_type: str | None,
    lines: Sequence[tuple[str, float]],
    contract_id: str | None,
    account_id: str = ACCOUNT_ID,
    account_name: str = "Initech",
    status: str = "Activated",
    bill_to: str | None = "billing@initech.example",
    ship_to: str | None = "it@initech.example",
    original_order_id: str | None = None,
) -> Json:
    """An Order as the REST API returns it for the connector's query (all fields; the
    stand-in keeps those the query names)."""
    return {
        "attributes": _attributes("Order", order_id),
        "Id": order_id,
        "Type": order_type,
        "Status": status,
        "StatusCode": status,
        "AccountId": account_id,
        "Account": {"attributes": _attributes("Account"), "Name": account_name},
        "ContractId": contract_id,
        "OriginalOrderId": original_order_id,
        "BillToContact": contact(bill_to),
        "ShipToContact": contact(ship_to),
        "OrderItems": line_items("OrderItem", "802", lines),
    }


def opportunity_record(
    *,
    opportunity_id: str,
    opportunity_type: str | None,
    lines: Sequence[tuple[str, float]],
    contract_id: str | None = None,
    won: bool = True,
    contact_email: str | None = "buyer@globex.example",
    account_id: str = ACCOUNT_ID,
    account_name: str = "Globex",
) -> Json:
    """An Opportunity (Closed Won unless `won` is False) as the REST API returns it."""
    return {
        "attributes": _attributes("Opportunity", opportunity_id),
        "Id": opportunity_id,
        "Type": opportunity_type,
        "StageName": "Closed Won" if won else "Negotiation/Review",
        "IsWon": won,
        "AccountId": account_id,
        "Account": {"attributes": _attributes("Account"), "Name": account_name},
        "ContractId": contract_id,
        "Contact": contact(contact_email),
        "OpportunityLineItems": line_items("OpportunityLineItem", "00k", lines),
    }


# --- outbound messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class Notified:
    """One Notification of a message: the record's type and Id, and the fields picked."""

    object_id: str
    object_type: str = "Order"
    fields: Mapping[str, str] = field(default_factory=dict)
    notification_id: str = field(default_factory=lambda: new_id("04l"))


def outbound_message(
    notifications: Sequence[Notified],
    *,
    instance_url: str,
    session_id: str | None,
    organization_id: str = ORG_ID,
) -> bytes:
    """The body Salesforce posts: its SOAP envelope, namespaces and element order."""
    org15 = organization_id[:15]
    session = (
        '<SessionId xsi:nil="true"/>'
        if session_id is None
        else f"<SessionId>{escape(session_id)}</SessionId>"
    )
    items = []
    for n in notifications:
        fields = "".join(
            f"<sf:{name}>{escape(value)}</sf:{name}>" for name, value in n.fields.items()
        )
        items.append(
            f"<Notification><Id>{n.notification_id}</Id>"
            f'<sObject xsi:type="sf:{n.object_type}" '
            'xmlns:sf="urn:sobject.enterprise.soap.sforce.com">'
            f"<sf:Id>{n.object_id}</sf:Id>{fields}</sObject></Notification>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        " <soapenv:Body>\n"
        '  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">\n'
        f"   <OrganizationId>{organization_id}</OrganizationId>\n"
        f"   <ActionId>{ACTION_ID}</ActionId>\n"
        f"   {session}\n"
        f"   <EnterpriseUrl>{instance_url}/services/Soap/c/{API_VERSION}/{org15}</EnterpriseUrl>\n"
        f"   <PartnerUrl>{instance_url}/services/Soap/u/{API_VERSION}/{org15}</PartnerUrl>\n"
        f"   {''.join(items)}\n"
        "  </notifications>\n"
        " </soapenv:Body>\n"
        "</soapenv:Envelope>\n"
    ).encode()


def order_fields(record: Json) -> dict[str, str]:
    """Fields a vendor typically picks for the message (the connector reads them back)."""
    return {
        "AccountId": str(record["AccountId"]),
        "Status": str(record["Status"]),
        "Type": str(record["Type"] or ""),
    }


SOAP_ENV = "{http://schemas.xmlsoap.org/soap/envelope/}"
OUTBOUND = "{http://soap.sforce.com/2005/09/outbound}"
KEYTURN = "{urn:keyturn:connect:salesforce}"


@dataclass(frozen=True)
class Failed:
    object_id: str
    reason: str
    temporary: bool
    message: str


@dataclass(frozen=True)
class SoapAnswer:
    """What the endpoint answered: Ack, or a fault with its code, string and failures."""

    status: int
    content_type: str
    ack: bool
    faultcode: str = ""
    faultstring: str = ""
    failures: tuple[Failed, ...] = ()


def read_answer(status: int, content_type: str, body: bytes) -> SoapAnswer:
    envelope = SafeET.fromstring(body)
    assert envelope.tag == f"{SOAP_ENV}Envelope", body
    ack = envelope.find(f"{SOAP_ENV}Body/{OUTBOUND}notificationsResponse/{OUTBOUND}Ack")
    if ack is not None:
        return SoapAnswer(status, content_type, ack.text == "true")
    fault = envelope.find(f"{SOAP_ENV}Body/{SOAP_ENV}Fault")
    assert fault is not None, body
    failures = tuple(
        Failed(
            item.get("id", ""),
            item.get("reason", ""),
            item.get("temporary") == "true",
            item.text or "",
        )
        for item in fault.iterfind(f"detail/{KEYTURN}failures/{KEYTURN}failure")
    )
    return SoapAnswer(
        status,
        content_type,
        False,
        fault.findtext("faultcode", ""),
        fault.findtext("faultstring", ""),
        failures,
    )


def post_message(url: str, body: bytes) -> SoapAnswer:
    """POST as Salesforce does (blocking: call it in a worker thread)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return read_answer(response.status, response.headers["Content-Type"], response.read())
    except urllib.error.HTTPError as error:
        with error:
            return read_answer(error.code, error.headers["Content-Type"], error.read())


# --- the REST API stand-in -------------------------------------------------------------------

_QUERY = re.compile(r"SELECT (?P<fields>.+) FROM (?P<object>\w+) WHERE Id = '(?P<id>\w{15,18})'")
_SUBQUERY = re.compile(r"\(SELECT (?P<fields>.+) FROM (?P<relationship>\w+)\)")


def _split_fields(text: str) -> list[str]:
    """The SELECT list's items, commas inside a subquery's parentheses kept."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [*items, current.strip()]


def project(record: Json, fields: Sequence[str]) -> Json:
    """The record as a query naming `fields` returns it: those fields only (relationship
    fields as nested objects, subqueries as record sets)."""
    out: Json = {"attributes": record["attributes"]}
    for name in fields:
        sub = _SUBQUERY.fullmatch(name)
        if sub:
            children = record.get(sub["relationship"])
            inner = _split_fields(sub["fields"])
            out[sub["relationship"]] = (
                None
                if children is None
                else {**children, "records": [project(c, inner) for c in children["records"]]}
            )
            continue
        head, _, rest = name.partition(".")
        if head not in record:
            raise KeyError(name)
        if not rest:
            out[head] = record[head]
        elif record[head] is None:
            out[head] = None
        else:
            nested = out.setdefault(head, {"attributes": record[head]["attributes"]})
            nested.update({k: v for k, v in project(record[head], [rest]).items()})
    return out


class SalesforceStandIn:
    """Salesforce's REST API on loopback: `GET /services/data/vXX.X/query?q=SOQL` answered
    from `records`, to `Authorization: Bearer <a session in sessions>` only;
    `POST /services/oauth2/token` (client credentials) grants a token from `apps`."""

    def __init__(self) -> None:
        self.records: dict[str, Json] = {}
        self.sessions: set[str] = set()
        self.apps: dict[str, str] = {}  # client id -> secret
        self.queries: list[tuple[str, str]] = []  # (bearer, SOQL) of each query received
        self.down = False  # answer 503 to everything
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._server = StandInServer(self._handler())

    @property
    def url(self) -> str:
        return self._server.url

    def add(self, *records: Json) -> None:
        with self._lock:
            for record in records:
                self.records[record["Id"]] = record

    def new_session(self) -> str:
        """A session id as Salesforce issues them (ORG15!...)."""
        session = f"{ORG_ID[:15]}!AQ4AQKt.session.{next(self._tokens)}"
        self.sessions.add(session)
        return session

    def __enter__(self) -> SalesforceStandIn:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def _query(self, bearer: str, soql: str) -> tuple[int, Any]:
        with self._lock:
            self.queries.append((bearer, soql))
            if bearer not in self.sessions:
                return 401, [
                    {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
                ]
            match = _QUERY.fullmatch(soql)
            if match is None:
                return 400, [
                    {"message": f"unexpected query {soql}", "errorCode": "MALFORMED_QUERY"}
                ]
            record = self.records.get(match["id"])
            if record is not None and record["attributes"]["type"] != match["object"]:
                record = None
            try:
                found = [] if record is None else [project(record, _split_fields(match["fields"]))]
            except KeyError as missing:
                return 400, [{"message": f"No such column {missing}", "errorCode": "INVALID_FIELD"}]
        return 200, {"totalSize": len(found), "done": True, "records": found}

    def _token(self, form: Mapping[str, list[str]]) -> tuple[int, Any]:
        client_id = form.get("client_id", [""])[0]
        secret = form.get("client_secret", [""])[0]
        if form.get("grant_type") != ["client_credentials"] or self.apps.get(client_id) != secret:
            return 400, {
                "error": "invalid_client",
                "error_description": "invalid client credentials",
            }
        token = f"{ORG_ID[:15]}!AQ4AQKt.app.{next(self._tokens)}"
        self.sessions.add(token)
        return 200, {
            "access_token": token,
            "instance_url": self.url,
            "id": f"{self.url}/id/{ORG_ID}/005Kt0000000001",
            "token_type": "Bearer",
            "issued_at": "1767225600000",
            "signature": "not-checked",
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(JsonHandler):
            content_type = "application/json;charset=UTF-8"

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                if stand_in.down:
                    return self.send_json(
                        503, [{"message": "down", "errorCode": "SERVER_UNAVAILABLE"}]
                    )
                if parts.path != f"/services/data/v{API_VERSION}/query":
                    return self.send_json(
                        404, [{"message": "no such resource", "errorCode": "NOT_FOUND"}]
                    )
                bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                soql = urllib.parse.parse_qs(parts.query).get("q", [""])[0]
                self.send_json(*stand_in._query(bearer, soql))

            def do_POST(self) -> None:
                if stand_in.down:
                    return self.send_json(503, {"error": "unavailable"})
                if self.path != "/services/oauth2/token":
                    return self.send_json(
                        404, [{"message": "no such resource", "errorCode": "NOT_FOUND"}]
                    )
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                self.send_json(*stand_in._token(form))

        return Handler


def records_queried(stand_in: SalesforceStandIn) -> Iterator[str]:
    """The record ids the connector queried, in order."""
    for _, soql in stand_in.queries:
        match = _QUERY.fullmatch(soql)
        if match:
            yield match["id"]
