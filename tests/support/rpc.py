"""Helpers for asserting on gRPC errors and building catalog entries in tests."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful


@dataclass(frozen=True)
class RpcFailure:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    fields: list[str]
    message: str
    retry_delay_seconds: float | None = None  # a google.rpc.RetryInfo's delay


def failure_of(error: grpc.aio.AioRpcError) -> RpcFailure:
    """The code, ErrorInfo and BadRequest fields of a failed call (reason '' if absent)."""
    details = b""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = value if isinstance(value, bytes) else value.encode()
    status = status_pb2.Status.FromString(details)
    reason, domain, metadata, fields = "", "", {}, []
    retry_delay: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return RpcFailure(
        error.code(), reason, domain, metadata, fields, error.details() or "", retry_delay
    )


PRODUCT_ID = "acme-cad"


def product(product_id: str = PRODUCT_ID) -> cat.Product:
    return cat.Product(
        product_id=product_id,
        display_name="Acme CAD",
        editions=[
            cat.Edition(
                edition_id="standard",
                display_name="Standard",
                features=[cat.Feature(name="export-pdf"), cat.Feature(name="projects", limit=10)],
            ),
            cat.Edition(
                edition_id="pro",
                display_name="Pro",
                features=[cat.Feature(name="export-pdf"), cat.Feature(name="projects", limit=100)],
            ),
        ],
    )


def create_sku(
    sku_id: str,
    seats: int = 1,
    term: str = "P1Y",
    trial: bool = False,
    model: int = cat.LICENSE_MODEL_FLOATING,
    product_id: str = PRODUCT_ID,
    lease_seconds: int = 900,
) -> cat.Sku:
    return cat.Sku(
        sku_id=sku_id,
        product_id=product_id,
        display_name=sku_id,
        operations=[
            cat.Operation(
                create=cat.CreateOperation(
                    edition_id="standard",
                    seats_per_unit=seats,
                    term=term,
                    perpetual=not term,
                    trial=trial,
                    license_model=model,
                    lease_duration=duration_pb2.Duration(seconds=lease_seconds),
                )
            )
        ],
    )


def order(
    order_id: str, sku_id: str, quantity: int = 1, reference: str = "", source: str = "test"
) -> ful.FulfillOrderRequest:
    return ful.FulfillOrderRequest(
        source=source,
        order_id=order_id,
        customer=ful.Customer(customer_id="cust-1", name="Initech", email="it@initech.example"),
        lines=[ful.OrderLine(sku_id=sku_id, quantity=quantity, external_reference=reference)],
    )
