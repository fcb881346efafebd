"""The gRPC servicers: decode the request, call one use case, encode the answer.

Authentication and error mapping happen around them, in the interceptor.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator

import grpc

from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import catalog_pb2_grpc as cat_grpc
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.fulfillment.v1 import fulfillment_pb2_grpc as ful_grpc
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.licensing.v1 import licensing_pb2_grpc as lic_grpc
from keyturn.server.app import (
    audit_trail,
    catalog,
    customers,
    devices,
    entitlements,
    fulfillment,
    licensing,
    named_user_admin,
    suspension,
    usage,
    webhooks,
)
from keyturn.server.app.context import AppContext
from keyturn.server.app.event_views import EventView
from keyturn.server.domain.errors import FieldViolation, invalid_request
from keyturn.server.domain.webhooks import WebhookState

from .audit_convert import audit_event_out, audit_filter_in
from .catalog_convert import product_in, product_out, sku_in, sku_out
from .devices_convert import activation_out, states_in
from .fulfillment_convert import (
    entitlement_filter_in,
    entitlement_out,
    event_out,
    fulfilled_out,
    message_out,
    named_user_out,
    order_in,
    order_out,
)
from .licensing_convert import credential_in, lease_out, signing_keys_out, summary_out
from .metrics import WatchMetrics
from .usage_convert import usage_report_out, usage_request_in
from .webhooks_convert import (
    check_output_only,
    delivery_out,
    spec_in,
    state_in,
    subscription_out,
)

Context = grpc.aio.ServicerContext[object, object]


def _require(present: bool, field: str) -> None:
    if not present:
        raise invalid_request([FieldViolation(field, "is required")])


class CatalogServicer(cat_grpc.CatalogServiceServicer):
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def PutProduct(
        self, request: cat.PutProductRequest, context: Context
    ) -> cat.PutProductResponse:
        _require(request.HasField("product"), "product")
        saved = await catalog.put_product(self._ctx, product_in(request.product))
        return cat.PutProductResponse(product=product_out(saved))

    async def ListProducts(
        self, request: cat.ListProductsRequest, context: Context
    ) -> cat.ListProductsResponse:
        items, token = await catalog.list_products(self._ctx, request.page_size, request.page_token)
        return cat.ListProductsResponse(
            products=[product_out(p) for p in items], next_page_token=token
        )

    async def PutSku(self, request: cat.PutSkuRequest, context: Context) -> cat.PutSkuResponse:
        _require(request.HasField("sku"), "sku")
        saved = await catalog.put_sku(self._ctx, sku_in(request.sku))
        return cat.PutSkuResponse(sku=sku_out(saved))

    async def GetSku(self, request: cat.GetSkuRequest, context: Context) -> cat.GetSkuResponse:
        return cat.GetSkuResponse(sku=sku_out(await catalog.get_sku(self._ctx, request.sku_id)))

    async def ListSkus(
        self, request: cat.ListSkusRequest, context: Context
    ) -> cat.ListSkusResponse:
        items, token = await catalog.list_skus(
            self._ctx, request.page_size, request.page_token, request.product_id
        )
        return cat.ListSkusResponse(skus=[sku_out(s) for s in items], next_page_token=token)

    async def DeleteSku(
        self, request: cat.DeleteSkuRequest, context: Context
    ) -> cat.DeleteSkuResponse:
        await catalog.delete_sku(self._ctx, request.sku_id, request.etag)
        return cat.DeleteSkuResponse()


class WatchResponses:
    """Each event's stream message built once: the feed hands the same view to every stream.

    Kept while the view lives (the feed's tail holds it); views read for one stream
    take their message with them."""

    def __init__(self) -> None:
        self._built: weakref.WeakKeyDictionary[EventView, ful.WatchEntitlementEventsResponse] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, view: EventView) -> ful.WatchEntitlementEventsResponse:
        built = self._built.get(view)
        if built is None:
            built = self._built[view] = ful.WatchEntitlementEventsResponse(event=event_out(view))
        return built


class FulfillmentServicer(ful_grpc.FulfillmentServiceServicer):
    def __init__(self, ctx: AppContext, watch_metrics: WatchMetrics) -> None:
        self._ctx = ctx
        self._watch_responses = WatchResponses()
        self._watch_metrics = watch_metrics

    async def FulfillOrder(
        self, request: ful.FulfillOrderRequest, context: Context
    ) -> ful.FulfillOrderResponse:
        result = await fulfillment.fulfil_order(self._ctx, order_in(request))
        return fulfilled_out(result)

    async def GetOrder(
        self, request: ful.GetOrderRequest, context: Context
    ) -> ful.GetOrderResponse:
        view = await fulfillment.get_order(self._ctx, request.source, request.order_id)
        return ful.GetOrderResponse(order=order_out(view.order, view.messages))

    async def GetEntitlement(
        self, request: ful.GetEntitlementRequest, context: Context
    ) -> ful.GetEntitlementResponse:
        view = await fulfillment.get_entitlement(self._ctx, request.entitlement_id)
        return ful.GetEntitlementResponse(entitlement=entitlement_out(view))

    async def ListEntitlements(
        self, request: ful.ListEntitlementsRequest, context: Context
    ) -> ful.ListEntitlementsResponse:
        views, token = await entitlements.list_entitlements(
            self._ctx, entitlement_filter_in(request), request.page_size, request.page_token
        )
        return ful.ListEntitlementsResponse(
            entitlements=[entitlement_out(v) for v in views], next_page_token=token
        )

    async def ListEntitlementEvents(
        self, request: ful.ListEntitlementEventsRequest, context: Context
    ) -> ful.ListEntitlementEventsResponse:
        views, token = await entitlements.list_entitlement_events(
            self._ctx, request.entitlement_id, request.page_size, request.page_token
        )
        return ful.ListEntitlementEventsResponse(
            events=[event_out(v) for v in views], next_page_token=token
        )

    async def ResendCredentials(
        self, request: ful.ResendCredentialsRequest, context: Context
    ) -> ful.ResendCredentialsResponse:
        queued = await fulfillment.resend_credentials(
            self._ctx, request.entitlement_id, request.user_id
        )
        return ful.ResendCredentialsResponse(
            queued_messages=len(queued), messages=[message_out(m) for m in queued]
        )

    async def SuspendEntitlement(
        self, request: ful.SuspendEntitlementRequest, context: Context
    ) -> ful.SuspendEntitlementResponse:
        view = await suspension.suspend_entitlement(
            self._ctx, entitlement_id=request.entitlement_id, reason=request.reason
        )
        return ful.SuspendEntitlementResponse(entitlement=entitlement_out(view))

    async def ReinstateEntitlement(
        self, request: ful.ReinstateEntitlementRequest, context: Context
    ) -> ful.ReinstateEntitlementResponse:
        view = await suspension.reinstate_entitlement(
            self._ctx, entitlement_id=request.entitlement_id
        )
        return ful.ReinstateEntitlementResponse(entitlement=entitlement_out(view))

    async def WatchEntitlementEvents(
        self, request: ful.WatchEntitlementEventsRequest, context: Context
    ) -> AsyncIterator[ful.WatchEntitlementEventsResponse]:
        # Closed here, not when collected: its stream slot is freed as soon as the call ends.
        async with (
            contextlib.aclosing(
                entitlements.watch_events(self._ctx, request.after_sequence)
            ) as stream,
            contextlib.aclosing(self._watch_metrics.track(stream)) as tracked,
        ):
            async for view in tracked:
                yield self._watch_responses.of(view)

    async def ListActivations(
        self, request: ful.ListActivationsRequest, context: Context
    ) -> ful.ListActivationsResponse:
        views, token = await devices.list_activations(
            self._ctx,
            entitlement_id=request.entitlement_id,
            customer_id=request.customer_id,
            states=states_in(request.states),
            user_id=request.user_id,
            node_locked=request.node_locked if request.HasField("node_locked") else None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ful.ListActivationsResponse(
            activations=[activation_out(v) for v in views], next_page_token=token
        )

    async def DeactivateSeat(
        self, request: ful.DeactivateSeatRequest, context: Context
    ) -> ful.DeactivateSeatResponse:
        view = await devices.deactivate_seat(
            self._ctx,
            entitlement_id=request.entitlement_id,
            activation_id=request.activation_id,
            reason=request.reason,
        )
        return ful.DeactivateSeatResponse(activation=activation_out(view))

    async def GetUsageReport(
        self, request: ful.GetUsageReportRequest, context: Context
    ) -> ful.GetUsageReportResponse:
        start, end, granularity = usage_request_in(request)
        report = await usage.usage_report(
            self._ctx,
            entitlement_id=request.entitlement_id,
            start=start,
            end=end,
            granularity=granularity,
        )
        return usage_report_out(report)

    async def ListAuditEvents(
        self, request: ful.ListAuditEventsRequest, context: Context
    ) -> ful.ListAuditEventsResponse:
        found, token = await audit_trail.list_audit_events(
            self._ctx,
            where=audit_filter_in(request),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ful.ListAuditEventsResponse(
            audit_events=[audit_event_out(e) for e in found], next_page_token=token
        )

    async def RemoveNamedUser(
        self, request: ful.RemoveNamedUserRequest, context: Context
    ) -> ful.RemoveNamedUserResponse:
        removed = await named_user_admin.remove_named_user(
            self._ctx, entitlement_id=request.entitlement_id, user_id=request.user_id
        )
        return ful.RemoveNamedUserResponse(
            entitlement=entitlement_out(removed.entitlement),
            released_seats=removed.released_seats,
        )

    async def ChangeNamedUserEmail(
        self, request: ful.ChangeNamedUserEmailRequest, context: Context
    ) -> ful.ChangeNamedUserEmailResponse:
        changed = await named_user_admin.change_named_user_email(
            self._ctx,
            entitlement_id=request.entitlement_id,
            user_id=request.user_id,
            email=request.email,
        )
        return ful.ChangeNamedUserEmailResponse(
            named_user=named_user_out(changed.user, changed.invitation_code),
            messages=[message_out(m) for m in changed.messages],
        )

    async def LookupCustomer(
        self, request: ful.LookupCustomerRequest, context: Context
    ) -> ful.LookupCustomerResponse:
        views, token = await customers.lookup_customer(
            self._ctx,
            customer_id=request.customer_id,
            email=request.email,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ful.LookupCustomerResponse(
            entitlements=[entitlement_out(v) for v in views], next_page_token=token
        )

    async def CreateWebhookSubscription(
        self, request: ful.CreateWebhookSubscriptionRequest, context: Context
    ) -> ful.CreateWebhookSubscriptionResponse:
        check_output_only(request.subscription, creating=True)
        created, secret = await webhooks.create_subscription(
            self._ctx,
            spec_in(request.subscription),
            state=state_in(request.subscription.state, default=WebhookState.ACTIVE),
            secret=request.secret,
            after_sequence=request.after_sequence if request.HasField("after_sequence") else None,
        )
        return ful.CreateWebhookSubscriptionResponse(
            subscription=subscription_out(created), secret=secret
        )

    async def GetWebhookSubscription(
        self, request: ful.GetWebhookSubscriptionRequest, context: Context
    ) -> ful.GetWebhookSubscriptionResponse:
        found = await webhooks.get_subscription(self._ctx, request.subscription_id)
        return ful.GetWebhookSubscriptionResponse(subscription=subscription_out(found))

    async def ListWebhookSubscriptions(
        self, request: ful.ListWebhookSubscriptionsRequest, context: Context
    ) -> ful.ListWebhookSubscriptionsResponse:
        found, token = await webhooks.list_subscriptions(
            self._ctx, request.page_size, request.page_token
        )
        return ful.ListWebhookSubscriptionsResponse(
            subscriptions=[subscription_out(s) for s in found], next_page_token=token
        )

    async def UpdateWebhookSubscription(
        self, request: ful.UpdateWebhookSubscriptionRequest, context: Context
    ) -> ful.UpdateWebhookSubscriptionResponse:
        subscription = request.subscription
        check_output_only(subscription, creating=False)
        updated = await webhooks.update_subscription(
            self._ctx,
            subscription.subscription_id,
            spec_in(subscription),
            state_in(subscription.state),
        )
        return ful.UpdateWebhookSubscriptionResponse(subscription=subscription_out(updated))

    async def DeleteWebhookSubscription(
        self, request: ful.DeleteWebhookSubscriptionRequest, context: Context
    ) -> ful.DeleteWebhookSubscriptionResponse:
        await webhooks.delete_subscription(self._ctx, request.subscription_id)
        return ful.DeleteWebhookSubscriptionResponse()

    async def ListWebhookDeliveries(
        self, request: ful.ListWebhookDeliveriesRequest, context: Context
    ) -> ful.ListWebhookDeliveriesResponse:
        found, token = await webhooks.list_deliveries(
            self._ctx, request.subscription_id, request.page_size, request.page_token
        )
        return ful.ListWebhookDeliveriesResponse(
            deliveries=[delivery_out(d) for d in found], next_page_token=token
        )

    async def RedeliverWebhooks(
        self, request: ful.RedeliverWebhooksRequest, context: Context
    ) -> ful.RedeliverWebhooksResponse:
        target = request.WhichOneof("target")
        webhooks.check_redelivery(request.subscription_id, target is not None)
        if target == "from_sequence":
            moved = await webhooks.replay_from(
                self._ctx, request.subscription_id, request.from_sequence
            )
            return ful.RedeliverWebhooksResponse(subscription=subscription_out(moved))
        subscription, delivery = await webhooks.redeliver_one(
            self._ctx, request.subscription_id, request.webhook_id
        )
        return ful.RedeliverWebhooksResponse(
            subscription=subscription_out(subscription), delivery=delivery_out(delivery)
        )


class LicensingServicer(lic_grpc.LicensingServiceServicer):
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def ActivateSeat(
        self, request: lic.ActivateSeatRequest, context: Context
    ) -> lic.ActivateSeatResponse:
        grant = await licensing.activate_seat(
            self._ctx,
            credential_in(request),
            request.product_id,
            request.fingerprint,
            request.label,
        )
        return lic.ActivateSeatResponse(
            lease=lease_out(grant),
            activation_id=grant.activation.activation_id,
            entitlement=summary_out(grant.license),
        )

    async def RenewLease(
        self, request: lic.RenewLeaseRequest, context: Context
    ) -> lic.RenewLeaseResponse:
        grant = await licensing.renew_lease(self._ctx, request.lease_token)
        return lic.RenewLeaseResponse(
            lease=lease_out(grant), entitlement=summary_out(grant.license)
        )

    async def ReleaseSeat(
        self, request: lic.ReleaseSeatRequest, context: Context
    ) -> lic.ReleaseSeatResponse:
        await licensing.release_seat(self._ctx, request.lease_token)
        return lic.ReleaseSeatResponse()

    async def CheckLicense(
        self, request: lic.CheckLicenseRequest, context: Context
    ) -> lic.CheckLicenseResponse:
        license = await licensing.check_license(
            self._ctx, credential_in(request), request.product_id
        )
        return lic.CheckLicenseResponse(entitlement=summary_out(license))

    async def GetSigningKeys(
        self, request: lic.GetSigningKeysRequest, context: Context
    ) -> lic.GetSigningKeysResponse:
        return signing_keys_out(await licensing.signing_keys(self._ctx))

    async def RedeemInvitation(
        self, request: lic.RedeemInvitationRequest, context: Context
    ) -> lic.RedeemInvitationResponse:
        token = await licensing.redeem_invitation(self._ctx, request.invitation_code)
        return lic.RedeemInvitationResponse(identity_token=token)
