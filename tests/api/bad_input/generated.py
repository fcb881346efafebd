"""Cases written by walking the request descriptors instead of by hand.

Every RPC's well-formed request (builders.WELL_FORMED) is walked field by field,
into the sub-messages it sets and the first item of the lists it fills. Each
family below spoils one field of it and expects the field to be named:

- every string: 10,000 characters, and a NUL character;
- every enum: the unknown values 99 and -1;
- every `page_size`: -1 and the int32 minimum; every `page_token`: garbage;
- every field REQUIRED lists: empty, and all of them at once (an empty request).

Credentials are judged by their own parsers: a bad one of any kind gets the
credential's own answer (CREDENTIALS), never a BadRequest that would tell a bad
key from an unknown one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .builders import SHAPE, WELL_FORMED, built
from .cases import K10, Case, Code, Request, invalid, refused
from .world import World

# Credential fields and the answer to any malformed one.
CREDENTIALS: dict[str, tuple[Code, str]] = {
    "license_key": (Code.UNAUTHENTICATED, "INVALID_LICENSE_KEY"),
    "identity_token": (Code.UNAUTHENTICATED, "INVALID_LICENSE_KEY"),
    "lease_token": (Code.UNAUTHENTICATED, "INVALID_LEASE"),
    "invitation_code": (Code.UNAUTHENTICATED, "INVALID_INVITATION"),
}
# An etag is compared, never parsed: a long one is just a stale one.
TOO_LONG: dict[str, tuple[Code, str]] = {"etag": (Code.ABORTED, "ETAG_MISMATCH")}


def _same(*paths: str) -> dict[str, str]:
    return {path: path for path in paths}


# The fields each RPC needs, and the field the BadRequest names when one is missing
# (a missing customer is a missing customer id).
REQUIRED: dict[str, dict[str, str]] = {
    "PutProduct": _same(
        "product", "product.product_id", "product.editions", "product.editions[0].edition_id"
    ),
    "PutSku": _same(
        "sku",
        "sku.sku_id",
        "sku.product_id",
        "sku.operations",
        "sku.operations[0].create.edition_id",
        "sku.operations[0].create.seats_per_unit",
    ),
    "GetSku": _same("sku_id"),
    "DeleteSku": _same("sku_id"),
    "FulfillOrder": {
        **_same(
            "source",
            "order_id",
            "customer.customer_id",
            "lines",
            "lines[0].sku_id",
            "lines[0].quantity",
        ),
        "customer": "customer.customer_id",
    },
    "GetOrder": _same("source", "order_id"),
    "GetEntitlement": _same("entitlement_id"),
    "ListEntitlementEvents": _same("entitlement_id"),
    "ResendCredentials": _same("entitlement_id"),
    "ActivateSeat": _same("license_key", "product_id", "fingerprint"),
    "CheckLicense": _same("license_key", "product_id"),
    "RenewLease": _same("lease_token"),
    "ReleaseSeat": _same("lease_token"),
    "RedeemInvitation": _same("invitation_code"),
    "GetUsageReport": _same("entitlement_id", "start_time", "end_time", "granularity"),
    "SuspendEntitlement": _same("entitlement_id"),
    "ReinstateEntitlement": _same("entitlement_id"),
    "ListActivations": _same("entitlement_id"),
    "DeactivateSeat": _same("entitlement_id", "activation_id", "reason"),
    "RemoveNamedUser": _same("entitlement_id", "user_id"),
    "ChangeNamedUserEmail": _same("entitlement_id", "user_id", "email"),
    "LookupCustomer": _same("customer_id"),
    "CreateWebhookSubscription": {
        **_same("subscription.url"),
        "subscription": "subscription.url",
    },
    "GetWebhookSubscription": _same("subscription_id"),
    "UpdateWebhookSubscription": {
        **_same("subscription.subscription_id", "subscription.url", "subscription.state"),
        "subscription": "subscription.subscription_id",
    },
    "DeleteWebhookSubscription": _same("subscription_id"),
    "ListWebhookDeliveries": _same("subscription_id"),
    "RedeliverWebhooks": _same("subscription_id", "webhook_id"),
}

INT32_MIN = -(2**31)
GARBAGE_PAGE_TOKENS = {"garbage": "!!garbage!!", "percent-signs": "%%%"}
NUL_TEXT = "nul\x00char"
CLEAR = object()  # stands for "unset the field"


Steps = tuple[tuple[str, int | None], ...]  # field names, and an index into lists


@dataclass(frozen=True)
class FieldAt:
    """A field of a request, by the path the BadRequest names it with."""

    path: str
    steps: Steps
    descriptor: FieldDescriptor


def fields_of(message: Message, prefix: str = "", steps: Steps = ()) -> Iterator[FieldAt]:
    """Every field of `message`, then those of the sub-messages it holds."""
    for descriptor in message.DESCRIPTOR.fields:
        name, path = descriptor.name, prefix + descriptor.name
        here = (*steps, (name, None))
        yield FieldAt(path, here, descriptor)
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if descriptor.is_repeated:
            items = getattr(message, name)
            if len(items):
                yield from fields_of(items[0], f"{path}[0].", (*steps, (name, 0)))
        elif message.HasField(name):
            yield from fields_of(getattr(message, name), f"{path}.", here)


def field_named(message: Message, path: str) -> FieldAt:
    (found,) = [at for at in fields_of(message) if at.path == path]
    return found


def with_value(message: Message, at: FieldAt, value: object) -> Message:
    """A copy of `message` with the field at `at` set to `value` (or cleared)."""
    copy = type(message)()
    copy.CopyFrom(message)
    target: Message = copy
    for name, index in at.steps[:-1]:
        target = getattr(target, name)
        if index is not None:
            target = target[index]  # type: ignore[index]
    name = at.steps[-1][0]
    if value is CLEAR:
        target.ClearField(name)
    else:
        setattr(target, name, value)
    return copy


def spoiled(rpc: str, at: FieldAt, value: object) -> Request:
    """The RPC's well-formed request in the world of the case, with one field spoiled."""
    well_formed = WELL_FORMED[rpc]

    def build(w: World) -> Message:
        return with_value(built(well_formed, w), at, value)

    return build


def _string_cases(rpc: str, at: FieldAt) -> list[Case]:
    name = at.descriptor.name
    if name in CREDENTIALS:
        code, reason = CREDENTIALS[name]
        return [
            refused(rpc, f"{at.path}-10k-chars", spoiled(rpc, at, K10), code, reason),
            refused(rpc, f"{at.path}-nul-char", spoiled(rpc, at, NUL_TEXT), code, reason),
        ]
    too_long = spoiled(rpc, at, K10)
    return [
        refused(rpc, f"{at.path}-10k-chars", too_long, *TOO_LONG[name])
        if name in TOO_LONG
        else invalid(rpc, f"{at.path}-10k-chars", too_long, at.path),
        invalid(rpc, f"{at.path}-nul-char", spoiled(rpc, at, NUL_TEXT), at.path),
    ]


def _enum_cases(rpc: str, at: FieldAt) -> list[Case]:
    return [
        invalid(rpc, f"{at.path}-99", spoiled(rpc, at, 99), at.path),
        invalid(rpc, f"{at.path}-negative", spoiled(rpc, at, -1), at.path),
    ]


def _paging_cases(rpc: str, at: FieldAt) -> list[Case]:
    if at.descriptor.name == "page_size":
        return [
            invalid(rpc, f"{at.path}-negative", spoiled(rpc, at, -1), at.path),
            invalid(rpc, f"{at.path}-int32-min", spoiled(rpc, at, INT32_MIN), at.path),
        ]
    return [
        invalid(rpc, f"{at.path}-{kind}", spoiled(rpc, at, token), at.path)
        for kind, token in GARBAGE_PAGE_TOKENS.items()
    ]


def field_cases(rpc: str) -> list[Case]:
    """The string, enum and paging families for every field of the RPC's request."""
    cases: list[Case] = []
    for at in fields_of(built(WELL_FORMED[rpc], SHAPE)):
        if at.descriptor.is_repeated:
            continue
        if at.descriptor.name in ("page_size", "page_token"):
            cases += _paging_cases(rpc, at)
        if at.descriptor.type == FieldDescriptor.TYPE_STRING:
            cases += _string_cases(rpc, at)
        elif at.descriptor.type == FieldDescriptor.TYPE_ENUM:
            cases += _enum_cases(rpc, at)
    return cases


def required_cases(rpc: str) -> list[Case]:
    """The empty request, which names every required field at the top, then each
    required field cleared (unless that leaves the empty request)."""
    required = REQUIRED.get(rpc, {})
    shape = built(WELL_FORMED[rpc], SHAPE)
    empty = type(shape)()
    top = [named for path, named in required.items() if "." not in path and "[" not in path]
    cases = [invalid(rpc, "empty-request", empty, *dict.fromkeys(top))] if top else []
    for path, named in required.items():
        at = field_named(shape, path)
        # "" rather than unset: a credential of a oneof stays chosen, only empty.
        value = "" if at.descriptor.type == FieldDescriptor.TYPE_STRING else CLEAR
        if with_value(shape, at, value) != empty:
            cases.append(invalid(rpc, f"{path}-empty", spoiled(rpc, at, value), named))
    return cases


def generated_cases(*rpcs: str) -> list[Case]:
    """Every generated case of these RPCs."""
    return [case for rpc in rpcs for case in (*required_cases(rpc), *field_cases(rpc))]
