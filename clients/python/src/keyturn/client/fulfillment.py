"""FulfillmentClient: orders in, entitlements and their events out, for order connectors."""

from __future__ import annotations

import functools
from collections.abc import Generator, Iterator
from datetime import UTC, datetime

import grpc

from keyturn.fulfillment.v1 import fulfillment_pb2, fulfillment_pb2_grpc

from .bearer import BearerClient
from .calls import paged
from .errors import from_rpc_error

Filter = str | int


class FulfillmentClient(BearerClient):
    """Thin sync wrapper of FulfillmentService: protobuf messages in and out, typed errors.

    FulfillOrder is retried on UNAVAILABLE like every other call: the same
    `source` + `order_id` replays the stored result, so a retry after a lost
    answer never fulfils an order twice.
    """

    @functools.cached_property
    def _stub(self) -> fulfillment_pb2_grpc.FulfillmentServiceStub:
        return fulfillment_pb2_grpc.FulfillmentServiceStub(self._channel)

    def fulfill_order(
        self, request: fulfillment_pb2.FulfillOrderRequest
    ) -> fulfillment_pb2.FulfillOrderResponse:
        """Apply an order (all lines or none); the same order again replays its result."""
        return self._call(self._stub.FulfillOrder, request)

    def get_order(self, source: str, order_id: str) -> fulfillment_pb2.Order:
        request = fulfillment_pb2.GetOrderRequest(source=source, order_id=order_id)
        return self._call(self._stub.GetOrder, request).order

    def get_entitlement(self, entitlement_id: str) -> fulfillment_pb2.Entitlement:
        request = fulfillment_pb2.GetEntitlementRequest(entitlement_id=entitlement_id)
        return self._call(self._stub.GetEntitlement, request).entitlement

    def list_entitlements(
        self, *, page_size: int = 0, **filters: Filter
    ) -> Iterator[fulfillment_pb2.Entitlement]:
        """Every entitlement matching the filters (fields of ListEntitlementsRequest:
        customer_id, email, product_id, status, external_reference), page after page."""
        template = fulfillment_pb2.ListEntitlementsRequest(page_size=page_size)
        for name, value in filters.items():
            if name == "page_token" or name not in template.DESCRIPTOR.fields_by_name:
                raise TypeError(f"unknown entitlement filter {name!r}")
            setattr(template, name, value)

        def fetch(token: str) -> tuple[list[fulfillment_pb2.Entitlement], str]:
            request = fulfillment_pb2.ListEntitlementsRequest()
            request.CopyFrom(template)
            request.page_token = token
            response = self._call(self._stub.ListEntitlements, request)
            return list(response.entitlements), response.next_page_token

        return paged(fetch)

    def list_entitlement_events(
        self, entitlement_id: str, *, page_size: int = 0
    ) -> Iterator[fulfillment_pb2.EntitlementEvent]:
        """One entitlement's history, oldest first, page after page."""

        def fetch(token: str) -> tuple[list[fulfillment_pb2.EntitlementEvent], str]:
            request = fulfillment_pb2.ListEntitlementEventsRequest(
                entitlement_id=entitlement_id, page_size=page_size, page_token=token
            )
            response = self._call(self._stub.ListEntitlementEvents, request)
            return list(response.events), response.next_page_token

        return paged(fetch)

    def get_usage_report(
        self,
        entitlement_id: str,
        *,
        start: datetime,
        end: datetime,
        granularity: fulfillment_pb2.UsageGranularity.ValueType,
    ) -> list[fulfillment_pb2.UsageBucket]:
        """Seats in use of one entitlement per hour or day of [start, end) (whole buckets,
        UTC): peak, average and seat limit, up to now."""
        request = fulfillment_pb2.GetUsageReportRequest(
            entitlement_id=entitlement_id, granularity=granularity
        )
        request.start_time.FromDatetime(start.astimezone(UTC))
        request.end_time.FromDatetime(end.astimezone(UTC))
        return list(self._call(self._stub.GetUsageReport, request).buckets)

    def resend_credentials(self, entitlement_id: str) -> int:
        """Queue the credential email again; returns the number of messages queued."""
        request = fulfillment_pb2.ResendCredentialsRequest(entitlement_id=entitlement_id)
        return self._call(self._stub.ResendCredentials, request).queued_messages

    def suspend_entitlement(
        self, entitlement_id: str, reason: str = ""
    ) -> fulfillment_pb2.Entitlement:
        """Hold the entitlement (a failed payment): its apps get EntitlementSuspendedError
        on activation and renewal until `reinstate_entitlement`. Safe to repeat."""
        request = fulfillment_pb2.SuspendEntitlementRequest(
            entitlement_id=entitlement_id, reason=reason
        )
        return self._call(self._stub.SuspendEntitlement, request).entitlement

    def reinstate_entitlement(self, entitlement_id: str) -> fulfillment_pb2.Entitlement:
        """Lift a suspension: the same devices go on. Safe to repeat."""
        request = fulfillment_pb2.ReinstateEntitlementRequest(entitlement_id=entitlement_id)
        return self._call(self._stub.ReinstateEntitlement, request).entitlement

    def watch_events(
        self, after_sequence: int = 0
    ) -> Generator[fulfillment_pb2.EntitlementEvent, None, None]:
        """Every entitlement change after `after_sequence`, then new ones as they happen.

        Blocks between events. When the stream breaks with UNAVAILABLE (network,
        or a replica shutting down) it reconnects after the last sequence seen,
        so nothing is skipped or repeated; other errors are raised. Stop by
        closing the generator (or breaking out of the loop).
        """
        last = after_sequence
        failures = 0
        while True:
            request = fulfillment_pb2.WatchEntitlementEventsRequest(after_sequence=last)
            stream = self._stub.WatchEntitlementEvents(request, metadata=self._metadata)
            try:
                for response in stream:
                    failures = 0
                    last = response.event.sequence
                    yield response.event
                return
            except grpc.RpcError as exc:
                failures += 1
                error = from_rpc_error(exc)
                if not self.retry.retries(error, failures):
                    raise error from exc
            finally:
                stream.cancel()  # type: ignore[no-untyped-call]
            self._sleep(self.retry.backoff(failures - 1))
