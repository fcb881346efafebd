"""Protobuf messages of LicensingService to and from plain Python values.

Tolerant on purpose: fields a newer server adds show up in
`EntitlementInfo.extra` instead of breaking the client, and fields an older
server lacks fall back to sensible defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from keyturn.licensing.v1 import licensing_pb2

_STATUS_PREFIX = "ENTITLEMENT_STATUS_"
_KNOWN_SUMMARY_FIELDS = frozenset(
    {
        "entitlement_id",
        "product_id",
        "edition_id",
        "status",
        "features",
        "seats",
        "seats_in_use",
        "end_time",
        "seat_limit",
        "in_overage",
    }
)


@dataclass(frozen=True)
class EntitlementInfo:
    """What the app may show about its license: edition, features, seats, status, end."""

    entitlement_id: str
    product_id: str
    edition_id: str
    status: str  # "trial", "active", "expired", "cancelled", "suspended" (else "unknown")
    features: Mapping[str, int | None]
    seats: int
    seats_in_use: int
    end_time: datetime | None  # None when perpetual
    seat_limit: int  # seats that may be in use at once (== seats without an overage policy)
    in_overage: bool  # more seats in use than paid for
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields newer than this client

    @property
    def perpetual(self) -> bool:
        return self.end_time is None


@dataclass(frozen=True)
class LeaseGrant:
    """One verified lease as the server issued it (by ActivateSeat or RenewLease)."""

    token: str
    claims: dict[str, Any]
    activation_id: str
    expire_time: datetime
    renew_time: datetime
    entitlement: EntitlementInfo


def to_datetime(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def _enum_name(descriptor: FieldDescriptor, number: int) -> str:
    enum = descriptor.enum_type
    value = enum.values_by_number.get(number) if enum is not None else None
    return value.name if value is not None else "UNKNOWN"


def status_name(number: int) -> str:
    """`ENTITLEMENT_STATUS_ACTIVE` -> `active`; a value newer than this client -> `unknown`."""
    value = licensing_pb2.EntitlementStatus.DESCRIPTOR.values_by_number.get(number)
    if value is None:
        return "unknown"
    return value.name.removeprefix(_STATUS_PREFIX).lower()


def features_of(features: Any) -> dict[str, int | None]:
    """Repeated Feature messages -> {name: limit or None}."""
    return {f.name: (f.limit if f.HasField("limit") else None) for f in features}


def _plain(descriptor: FieldDescriptor, value: Any) -> Any:
    """A single field value as plain Python, or None when it has no simple form
    (repeated fields and messages other than Timestamp)."""
    if descriptor.type == FieldDescriptor.TYPE_ENUM and isinstance(value, int):
        return _enum_name(descriptor, int(value))
    if isinstance(value, timestamp_pb2.Timestamp):
        return to_datetime(value)
    if isinstance(value, bool | int | float | str | bytes):
        return value
    return None


def _extra_fields(message: Message) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if descriptor.name in _KNOWN_SUMMARY_FIELDS:
            continue
        plain = _plain(descriptor, value)
        if plain is not None:
            extra[descriptor.name] = plain
    return extra


def entitlement_info(summary: licensing_pb2.EntitlementSummary) -> EntitlementInfo:
    seats = int(summary.seats)
    return EntitlementInfo(
        entitlement_id=summary.entitlement_id,
        product_id=summary.product_id,
        edition_id=summary.edition_id,
        status=status_name(int(summary.status)),
        features=features_of(summary.features),
        seats=seats,
        seats_in_use=int(summary.seats_in_use),
        end_time=to_datetime(summary.end_time) if summary.HasField("end_time") else None,
        seat_limit=int(getattr(summary, "seat_limit", 0) or seats),
        in_overage=bool(getattr(summary, "in_overage", False)),
        extra=_extra_fields(summary),
    )


def lease_grant(
    lease: licensing_pb2.Lease,
    claims: Mapping[str, Any],
    summary: licensing_pb2.EntitlementSummary,
    activation_id: str = "",
) -> LeaseGrant:
    """A verified lease. The expiry is the signed `exp` claim (the message's copy
    may carry sub-second digits the claim drops); the renew time falls back to
    half way when the message lacks it."""
    expire = datetime.fromtimestamp(int(claims["exp"]), UTC)
    if lease.HasField("renew_time"):
        renew = min(to_datetime(lease.renew_time), expire)
    else:
        issued = datetime.fromtimestamp(int(claims.get("iat", claims["exp"])), UTC)
        renew = issued + (expire - issued) / 2
    return LeaseGrant(
        token=lease.token,
        claims=dict(claims),
        activation_id=activation_id or str(claims.get("sub", "")),
        expire_time=expire,
        renew_time=renew,
        entitlement=entitlement_info(summary),
    )


def activate_request(
    product_id: str,
    fingerprint: str,
    label: str,
    license_key: str | None,
    identity_token: str | None,
) -> licensing_pb2.ActivateSeatRequest:
    request = licensing_pb2.ActivateSeatRequest(
        product_id=product_id, fingerprint=fingerprint, label=label
    )
    _set_credential(request, license_key, identity_token)
    return request


def check_request(
    product_id: str, license_key: str | None, identity_token: str | None
) -> licensing_pb2.CheckLicenseRequest:
    request = licensing_pb2.CheckLicenseRequest(product_id=product_id)
    _set_credential(request, license_key, identity_token)
    return request


def _set_credential(
    request: licensing_pb2.ActivateSeatRequest | licensing_pb2.CheckLicenseRequest,
    license_key: str | None,
    identity_token: str | None,
) -> None:
    """Exactly one credential: the oneof would silently keep only the last one set."""
    if (license_key is None) == (identity_token is None):
        raise ValueError("pass exactly one of license_key and identity_token")
    if license_key is not None:
        request.license_key = license_key
    else:
        assert identity_token is not None
        request.identity_token = identity_token
