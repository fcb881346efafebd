"""LicensingService messages from lease grants and signing keys."""

from __future__ import annotations

import json
from typing import Any

from keyturn.licensing.v1 import licensing_pb2 as pb
from keyturn.server.app.licensing import Credential, LeaseGrant, LicenseStatus
from keyturn.server.domain.entitlement import Status

from .timestamps import timestamp

STATUS_OUT = {
    Status.TRIAL: pb.ENTITLEMENT_STATUS_TRIAL,
    Status.ACTIVE: pb.ENTITLEMENT_STATUS_ACTIVE,
    Status.EXPIRED: pb.ENTITLEMENT_STATUS_EXPIRED,
    Status.CANCELLED: pb.ENTITLEMENT_STATUS_CANCELLED,
    Status.SUSPENDED: pb.ENTITLEMENT_STATUS_SUSPENDED,
}


def credential_in(
    message: pb.ActivateSeatRequest | pb.CheckLicenseRequest,
) -> Credential:
    if message.WhichOneof("credential") == "identity_token":
        return Credential(identity_token=message.identity_token)
    return Credential(license_key=message.license_key)


def summary_out(license: LicenseStatus) -> pb.EntitlementSummary:
    e = license.entitlement
    message = pb.EntitlementSummary(
        entitlement_id=e.entitlement_id,
        product_id=e.product_id,
        edition_id=e.edition_id,
        status=STATUS_OUT[license.status],
        features=[
            pb.Feature(name=f.name) if f.limit is None else pb.Feature(name=f.name, limit=f.limit)
            for f in e.features
        ],
        seats=e.seats,
        seats_in_use=license.seats_in_use,
        seat_limit=e.seat_limit,
        in_overage=license.seats_in_use > e.seats,
    )
    if e.end_time is not None:
        message.end_time.CopyFrom(timestamp(e.end_time))
    return message


def lease_out(grant: LeaseGrant) -> pb.Lease:
    return pb.Lease(
        token=grant.token,
        expire_time=timestamp(grant.expire_time),
        renew_time=timestamp(grant.renew_time),
    )


def signing_keys_out(jwks: dict[str, Any]) -> pb.GetSigningKeysResponse:
    return pb.GetSigningKeysResponse(
        keys=[pb.JsonWebKey(**key) for key in jwks["keys"]],
        jwks_json=json.dumps(jwks, separators=(",", ":")),
    )
