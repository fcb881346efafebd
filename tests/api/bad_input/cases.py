"""What a case is: one bad request to one RPC, and the exact answer it must get."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

from .world import World

Code = grpc.StatusCode
Metadata = tuple[tuple[str, str], ...]

CATALOG = "keyturn.fulfillment.v1.CatalogService"
FULFILLMENT = "keyturn.fulfillment.v1.FulfillmentService"
LICENSING = "keyturn.licensing.v1.LicensingService"

# RPC -> (service, scope of the token sent by default; None: no bearer token).
RPCS: dict[str, tuple[str, str | None]] = {
    "PutProduct": (CATALOG, "catalog"),
    "ListProducts": (CATALOG, "catalog"),
    "PutSku": (CATALOG, "catalog"),
    "GetSku": (CATALOG, "catalog"),
    "ListSkus": (CATALOG, "catalog"),
    "DeleteSku": (CATALOG, "catalog"),
    "FulfillOrder": (FULFILLMENT, "fulfill"),
    "GetOrder": (FULFILLMENT, "read"),
    "GetEntitlement": (FULFILLMENT, "read"),
    "ListEntitlements": (FULFILLMENT, "read"),
    "ListEntitlementEvents": (FULFILLMENT, "read"),
    "WatchEntitlementEvents": (FULFILLMENT, "read"),
    "ActivateSeat": (LICENSING, None),
    "RenewLease": (LICENSING, None),
    "ReleaseSeat": (LICENSING, None),
    "GetSigningKeys": (LICENSING, None),
    "ResendCredentials": (FULFILLMENT, "fulfill"),
    "CheckLicense": (LICENSING, None),
    "RedeemInvitation": (LICENSING, None),
    "GetUsageReport": (FULFILLMENT, "read"),
    "SuspendEntitlement": (FULFILLMENT, "fulfill"),
    "ReinstateEntitlement": (FULFILLMENT, "fulfill"),
    "ListAuditEvents": (FULFILLMENT, "read"),
    "ListActivations": (FULFILLMENT, "read"),
    "DeactivateSeat": (FULFILLMENT, "fulfill"),
    "RemoveNamedUser": (FULFILLMENT, "fulfill"),
    "ChangeNamedUserEmail": (FULFILLMENT, "fulfill"),
    "LookupCustomer": (FULFILLMENT, "read"),
    "CreateWebhookSubscription": (FULFILLMENT, "webhooks"),
    "GetWebhookSubscription": (FULFILLMENT, "webhooks"),
    "ListWebhookSubscriptions": (FULFILLMENT, "webhooks"),
    "UpdateWebhookSubscription": (FULFILLMENT, "webhooks"),
    "DeleteWebhookSubscription": (FULFILLMENT, "webhooks"),
    "ListWebhookDeliveries": (FULFILLMENT, "webhooks"),
    "RedeliverWebhooks": (FULFILLMENT, "webhooks"),
}
# Server-streaming RPCs: a case reads the first message, where the error shows.
STREAMING = {"WatchEntitlementEvents"}

# Oversized values. The answer must stay small too: an error that echoes a 10k value
# into its message and ErrorInfo overflows the 16 KiB trailer limit of the client,
# which then sees RESOURCE_EXHAUSTED and no ErrorInfo.
K10 = "a" * 10_000
MB = "x" * (1 << 20)
# Cases that send text with a NUL character: PostgreSQL can neither store nor compare
# it, so the server must refuse it before it reaches the database.

# The answer to a request whose bytes are not a message of the method's type.
INVALID_UNDECODABLE = (Code.INVALID_ARGUMENT, "INVALID_REQUEST")

Request = Message | bytes | Callable[[World], Message | bytes]
Expected = str | Callable[[World], str]  # an ErrorInfo metadata value, or how to get it
DEFAULT = "default"


@dataclass(frozen=True)
class Case:
    rpc: str
    name: str
    request: Request
    code: Code
    reason: str
    fields: tuple[str, ...] = ()  # field paths the BadRequest must name
    metadata: dict[str, Expected] = field(default_factory=dict)  # ErrorInfo metadata expected
    auth: str | Metadata | None = DEFAULT  # a scope, raw metadata, or None for no token

    @property
    def id(self) -> str:
        return f"{self.rpc}:{self.name}"


def invalid(
    rpc: str, name: str, request: Request, *fields: str, auth: str | Metadata | None = DEFAULT
) -> Case:
    """INVALID_ARGUMENT / INVALID_REQUEST, with a BadRequest naming each of `fields`."""
    return Case(rpc, name, request, Code.INVALID_ARGUMENT, "INVALID_REQUEST", fields, auth=auth)


def refused(
    rpc: str,
    name: str,
    request: Request,
    code: Code,
    reason: str,
    auth: str | Metadata | None = DEFAULT,
    **metadata: Expected,
) -> Case:
    """Any other answer, with the ErrorInfo metadata given as keywords."""
    return Case(rpc, name, request, code, reason, (), metadata, auth)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def json_b64(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def page_token(value: object) -> str:
    """A token as the server shapes them (base64url of JSON), with any content."""
    return json_b64(value)
