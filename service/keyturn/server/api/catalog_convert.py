"""CatalogService messages to and from domain catalog values."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import assert_never

from google.protobuf import duration_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as pb
from keyturn.server.domain.catalog import (
    DEFAULT_LEASE_DURATION,
    MAX_GRACE,
    MAX_LEASE_DURATION,
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Dispatch,
    Edition,
    Feature,
    LicenseModel,
    Operation,
    Overage,
    Product,
    Reinstate,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    RenewalAnchor,
    Sku,
    Suspend,
)
from keyturn.server.domain.deactivation_limits import DeactivationLimit
from keyturn.server.domain.errors import FieldViolation, raise_if_invalid

from .timestamps import duration, timestamp

LICENSE_MODELS = {
    pb.LICENSE_MODEL_UNSPECIFIED: LicenseModel.FLOATING,
    pb.LICENSE_MODEL_FLOATING: LicenseModel.FLOATING,
    pb.LICENSE_MODEL_NODE_LOCKED: LicenseModel.NODE_LOCKED,
}
LICENSE_MODEL_OUT = {
    LicenseModel.FLOATING: pb.LICENSE_MODEL_FLOATING,
    LicenseModel.NODE_LOCKED: pb.LICENSE_MODEL_NODE_LOCKED,
}
DISPATCHES = {
    pb.DISPATCH_UNSPECIFIED: Dispatch.LICENSE_KEY,
    pb.DISPATCH_LICENSE_KEY: Dispatch.LICENSE_KEY,
    pb.DISPATCH_INVITATION: Dispatch.INVITATION,
    pb.DISPATCH_NONE: Dispatch.NONE,
}
OVERAGES = {
    pb.OVERAGE_POLICY_UNSPECIFIED: Overage.NONE,
    pb.OVERAGE_POLICY_NONE: Overage.NONE,
    pb.OVERAGE_POLICY_ALLOW_125_PERCENT: Overage.ALLOW_125_PERCENT,
    pb.OVERAGE_POLICY_ALLOW_150_PERCENT: Overage.ALLOW_150_PERCENT,
    pb.OVERAGE_POLICY_ALLOW_200_PERCENT: Overage.ALLOW_200_PERCENT,
}
OVERAGE_OUT = {
    overage: code for code, overage in OVERAGES.items() if code != pb.OVERAGE_POLICY_UNSPECIFIED
}
ANCHORS = {
    pb.RENEWAL_ANCHOR_UNSPECIFIED: RenewalAnchor.FROM_NOW_IF_EXPIRED,
    pb.RENEWAL_ANCHOR_FROM_EXPIRY: RenewalAnchor.FROM_EXPIRY,
    pb.RENEWAL_ANCHOR_FROM_NOW: RenewalAnchor.FROM_NOW,
    pb.RENEWAL_ANCHOR_FROM_NOW_IF_EXPIRED: RenewalAnchor.FROM_NOW_IF_EXPIRED,
}
ANCHOR_OUT = {
    RenewalAnchor.FROM_EXPIRY: pb.RENEWAL_ANCHOR_FROM_EXPIRY,
    RenewalAnchor.FROM_NOW: pb.RENEWAL_ANCHOR_FROM_NOW,
    RenewalAnchor.FROM_NOW_IF_EXPIRED: pb.RENEWAL_ANCHOR_FROM_NOW_IF_EXPIRED,
}
DISPATCH_OUT = {
    Dispatch.LICENSE_KEY: pb.DISPATCH_LICENSE_KEY,
    Dispatch.INVITATION: pb.DISPATCH_INVITATION,
    Dispatch.NONE: pb.DISPATCH_NONE,
}


def features_in(features: Iterable[pb.Feature]) -> tuple[Feature, ...]:
    return tuple(Feature(f.name, f.limit if f.HasField("limit") else None) for f in features)


def features_out(features: Iterable[Feature]) -> list[pb.Feature]:
    return [
        pb.Feature(name=f.name) if f.limit is None else pb.Feature(name=f.name, limit=f.limit)
        for f in features
    ]


def product_in(message: pb.Product) -> Product:
    return Product(
        product_id=message.product_id,
        display_name=message.display_name,
        editions=tuple(
            Edition(e.edition_id, e.display_name, features_in(e.features)) for e in message.editions
        ),
        etag=message.etag,
    )


def product_out(product: Product) -> pb.Product:
    message = pb.Product(
        product_id=product.product_id,
        display_name=product.display_name,
        editions=[
            pb.Edition(
                edition_id=e.edition_id,
                display_name=e.display_name,
                features=features_out(e.features),
            )
            for e in product.editions
        ],
        etag=product.etag,
    )
    if product.update_time:
        message.update_time.CopyFrom(timestamp(product.update_time))
    return message


def _term(path: str, term: str, perpetual: bool, violations: list[FieldViolation]) -> str | None:
    if perpetual and term:
        violations.append(FieldViolation(f"{path}.term", "must be empty when perpetual is set"))
    if not perpetual and not term:
        violations.append(FieldViolation(f"{path}.term", "is required unless perpetual is set"))
    return None if perpetual else term


def _duration_in(
    message: duration_pb2.Duration,
    path: str,
    limit: timedelta,
    text: str,
    violations: list[FieldViolation],
) -> timedelta | None:
    """A bounded Duration field; None (with a violation) when out of range."""
    if abs(message.seconds) > limit.total_seconds():
        violations.append(FieldViolation(path, text))
        return None
    return message.ToTimedelta()


def _create_in(path: str, op: pb.CreateOperation, violations: list[FieldViolation]) -> Create:
    if op.license_model not in LICENSE_MODELS:
        violations.append(FieldViolation(f"{path}.license_model", "unknown license model"))
    if op.dispatch not in DISPATCHES:
        violations.append(FieldViolation(f"{path}.dispatch", "unknown dispatch"))
    if op.overage not in OVERAGES:
        violations.append(FieldViolation(f"{path}.overage", "unknown overage policy"))
    lease = grace = None
    if op.HasField("lease_duration"):
        lease = _duration_in(
            op.lease_duration,
            f"{path}.lease_duration",
            MAX_LEASE_DURATION,
            "must be between 1 minute and 30 days",
            violations,
        )
    if op.HasField("grace_period"):
        grace = _duration_in(
            op.grace_period,
            f"{path}.grace_period",
            MAX_GRACE,
            "must be between 0 and 90 days",
            violations,
        )
    limit = None
    if op.HasField("deactivation_limit"):
        given = op.deactivation_limit
        limit = DeactivationLimit(given.count, given.period, given.count_releases)
    return Create(
        edition_id=op.edition_id,
        seats_per_unit=op.seats_per_unit,
        term=_term(path, op.term, op.perpetual, violations),
        trial=op.trial,
        features=features_in(op.features),
        license_model=LICENSE_MODELS.get(op.license_model, LicenseModel.FLOATING),
        lease_duration=DEFAULT_LEASE_DURATION if lease is None else lease,
        dispatch=DISPATCHES.get(op.dispatch, Dispatch.LICENSE_KEY),
        grace=timedelta(0) if grace is None else grace,
        overage=OVERAGES.get(op.overage, Overage.NONE),
        deactivation_limit=limit,
    )


def operation_in(
    path: str, message: pb.Operation, violations: list[FieldViolation]
) -> Operation | None:
    kind = message.WhichOneof("kind")
    path = f"{path}.{kind}"
    if kind == "create":
        return _create_in(path, message.create, violations)
    if kind == "renew":
        if message.renew.anchor not in ANCHORS:
            violations.append(FieldViolation(f"{path}.anchor", "unknown renewal anchor"))
        anchor = ANCHORS.get(message.renew.anchor, RenewalAnchor.FROM_NOW_IF_EXPIRED)
        return Renew(message.renew.term, anchor)
    if kind == "add_seats":
        return AddSeats(message.add_seats.seats_per_unit)
    if kind == "remove_seats":
        return RemoveSeats(message.remove_seats.seats_per_unit)
    if kind == "change_edition":
        return ChangeEdition(message.change_edition.edition_id)
    if kind == "add_features":
        return AddFeatures(features_in(message.add_features.features))
    if kind == "remove_features":
        return RemoveFeatures(tuple(message.remove_features.feature_names))
    if kind == "convert_trial":
        convert = message.convert_trial
        return ConvertTrial(_term(path, convert.term, convert.perpetual, violations))
    if kind == "cancel":
        return Cancel()
    if kind == "suspend":
        return Suspend()
    if kind == "reinstate":
        return Reinstate()
    violations.append(FieldViolation(path.removesuffix(".None"), "no operation is set"))
    return None


def sku_in(message: pb.Sku) -> Sku:
    violations: list[FieldViolation] = []
    operations = [
        operation_in(f"sku.operations[{i}]", op, violations)
        for i, op in enumerate(message.operations)
    ]
    raise_if_invalid(violations)
    return Sku(
        sku_id=message.sku_id,
        product_id=message.product_id,
        display_name=message.display_name,
        operations=tuple(op for op in operations if op is not None),
        etag=message.etag,
    )


def deactivation_limit_out(limit: DeactivationLimit | None) -> pb.DeactivationLimit | None:
    if limit is None:
        return None
    return pb.DeactivationLimit(
        count=limit.count, period=limit.period, count_releases=limit.count_releases
    )


def operation_out(op: Operation) -> pb.Operation:
    match op:
        case Create():
            return pb.Operation(
                create=pb.CreateOperation(
                    deactivation_limit=deactivation_limit_out(op.deactivation_limit),
                    edition_id=op.edition_id,
                    seats_per_unit=op.seats_per_unit,
                    term=op.term or "",
                    perpetual=op.term is None,
                    trial=op.trial,
                    features=features_out(op.features),
                    license_model=LICENSE_MODEL_OUT[op.license_model],
                    lease_duration=duration(op.lease_duration),
                    dispatch=DISPATCH_OUT[op.dispatch],
                    grace_period=duration(op.grace),
                    overage=OVERAGE_OUT[op.overage],
                )
            )
        case Renew():
            return pb.Operation(renew=pb.RenewOperation(term=op.term, anchor=ANCHOR_OUT[op.anchor]))
        case AddSeats():
            return pb.Operation(add_seats=pb.AddSeatsOperation(seats_per_unit=op.seats_per_unit))
        case RemoveSeats():
            return pb.Operation(
                remove_seats=pb.RemoveSeatsOperation(seats_per_unit=op.seats_per_unit)
            )
        case ChangeEdition():
            return pb.Operation(change_edition=pb.ChangeEditionOperation(edition_id=op.edition_id))
        case AddFeatures():
            return pb.Operation(
                add_features=pb.AddFeaturesOperation(features=features_out(op.features))
            )
        case RemoveFeatures():
            return pb.Operation(
                remove_features=pb.RemoveFeaturesOperation(feature_names=list(op.feature_names))
            )
        case ConvertTrial():
            return pb.Operation(
                convert_trial=pb.ConvertTrialOperation(
                    term=op.term or "", perpetual=op.term is None
                )
            )
        case Cancel():
            return pb.Operation(cancel=pb.CancelOperation())
        case Suspend():
            return pb.Operation(suspend=pb.SuspendOperation())
        case Reinstate():
            return pb.Operation(reinstate=pb.ReinstateOperation())
        case unreachable:
            assert_never(unreachable)


def sku_out(sku: Sku) -> pb.Sku:
    message = pb.Sku(
        sku_id=sku.sku_id,
        product_id=sku.product_id,
        display_name=sku.display_name,
        operations=[operation_out(op) for op in sku.operations],
        etag=sku.etag,
    )
    if sku.update_time:
        message.update_time.CopyFrom(timestamp(sku.update_time))
    return message
