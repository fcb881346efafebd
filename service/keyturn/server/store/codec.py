"""Domain values to and from the JSON kept in catalog, order and event columns."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any, assert_never

from keyturn.server.domain.catalog import (
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
    Reinstate,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    RenewalAnchor,
    Suspend,
)
from keyturn.server.domain.deactivation_limits import DeactivationLimit
from keyturn.server.domain.entitlement import Customer
from keyturn.server.domain.orders import LineResult, OrderLine, OrderRequest


def features_to_json(features: tuple[Feature, ...]) -> list[dict[str, Any]]:
    return [{"name": f.name, "limit": f.limit} for f in features]


def features_from_json(data: list[dict[str, Any]]) -> tuple[Feature, ...]:
    return tuple(Feature(d["name"], d.get("limit")) for d in data)


def editions_to_json(editions: tuple[Edition, ...]) -> list[dict[str, Any]]:
    return [
        {
            "edition_id": e.edition_id,
            "display_name": e.display_name,
            "features": features_to_json(e.features),
        }
        for e in editions
    ]


def editions_from_json(data: list[dict[str, Any]]) -> tuple[Edition, ...]:
    return tuple(
        Edition(d["edition_id"], d["display_name"], features_from_json(d["features"])) for d in data
    )


def operation_to_json(op: Operation) -> dict[str, Any]:
    body: dict[str, Any]
    match op:
        case Create():
            body = {
                "edition_id": op.edition_id,
                "seats_per_unit": op.seats_per_unit,
                "term": op.term,
                "trial": op.trial,
                "features": features_to_json(op.features),
                "license_model": op.license_model.value,
                "lease_duration_seconds": int(op.lease_duration.total_seconds()),
                "dispatch": op.dispatch.value,
                "grace_seconds": int(op.grace.total_seconds()),
                "overage": op.overage.value,
            }
            if op.deactivation_limit is not None:
                body["deactivation_limit"] = asdict(op.deactivation_limit)
        case Renew():
            body = {"term": op.term, "anchor": op.anchor.value}
        case AddFeatures():
            body = {"features": features_to_json(op.features)}
        case RemoveFeatures():
            body = {"feature_names": list(op.feature_names)}
        case (
            AddSeats()
            | RemoveSeats()
            | ChangeEdition()
            | ConvertTrial()
            | Cancel()
            | Suspend()
            | Reinstate()
        ):
            body = asdict(op)
        case unreachable:
            assert_never(unreachable)
    return {op.name: body}


def operation_from_json(data: dict[str, Any]) -> Operation:
    ((name, body),) = data.items()
    if name == Create.name:
        return Create(
            edition_id=body["edition_id"],
            seats_per_unit=body["seats_per_unit"],
            term=body["term"],
            trial=body["trial"],
            features=features_from_json(body["features"]),
            license_model=LicenseModel(body["license_model"]),
            lease_duration=timedelta(seconds=body["lease_duration_seconds"]),
            dispatch=Dispatch(body["dispatch"]),
            grace=timedelta(seconds=body.get("grace_seconds", 0)),
            overage=Overage(body.get("overage", Overage.NONE)),
            deactivation_limit=(
                DeactivationLimit(**body["deactivation_limit"])
                if "deactivation_limit" in body
                else None
            ),
        )
    if name == Renew.name:
        return Renew(
            body["term"], RenewalAnchor(body.get("anchor", RenewalAnchor.FROM_NOW_IF_EXPIRED))
        )
    if name == AddFeatures.name:
        return AddFeatures(features_from_json(body["features"]))
    if name == RemoveFeatures.name:
        return RemoveFeatures(tuple(body["feature_names"]))
    simple: dict[
        str,
        type[AddSeats | RemoveSeats | ChangeEdition | ConvertTrial | Cancel | Suspend | Reinstate],
    ]
    simple = {
        cls.name: cls
        for cls in (AddSeats, RemoveSeats, ChangeEdition, ConvertTrial, Cancel, Suspend, Reinstate)
    }
    return simple[name](**body)


def order_to_json(order: OrderRequest) -> dict[str, Any]:
    return asdict(order)


def order_from_json(data: dict[str, Any]) -> OrderRequest:
    return OrderRequest(
        source=data["source"],
        order_id=data["order_id"],
        customer=Customer(**data["customer"]),
        ship_to_email=data["ship_to_email"],
        lines=tuple(
            OrderLine(**{**line, "named_user_emails": tuple(line.get("named_user_emails", ()))})
            for line in data["lines"]
        ),
    )


def results_to_json(results: tuple[LineResult, ...]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def results_from_json(data: list[dict[str, Any]]) -> tuple[LineResult, ...]:
    return tuple(
        LineResult(d["line_index"], d["sku_id"], d["entitlement_id"], tuple(d["operations"]))
        for d in data
    )
