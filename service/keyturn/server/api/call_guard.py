"""What every call gets, whichever transport carried it: the abuse limits
(abuse_limits.py), bearer-token auth with the method's scope, the request checks,
domain errors turned into the transport's refusal, retries of transaction conflicts,
one log line and the metrics.

gRPC (`interceptor.py`) and HTTP/JSON (`connect_app.py`) each describe the call
(`Call`) and say how to refuse it (`Refuse`); nothing else about a call differs
between them. The log line and the metrics carry the method, the status code (a
gRPC status name, from api/errors.py STATUS_OF for both transports), the ErrorInfo
reason, the duration and (log only) the transport and the peer address: never a
credential or anything else from the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from keyturn.server.app.audit import acting_as, token_actor
from keyturn.server.app.conflicts import retry_conflicts
from keyturn.server.app.tokens import TokenAuthenticator
from keyturn.server.domain.errors import (
    DomainError,
    Reason,
    client_certificate_required,
    internal_error,
    missing_credentials,
)

from .abuse_limits import AbuseLimits
from .errors import STATUS_OF
from .metrics import RpcMetrics
from .request_checks import check_request

log = logging.getLogger("keyturn.rpc")

CATALOG = "/keyturn.fulfillment.v1.CatalogService/"
FULFILLMENT = "/keyturn.fulfillment.v1.FulfillmentService/"
WRITE_METHODS = {
    FULFILLMENT + "FulfillOrder",
    FULFILLMENT + "ResendCredentials",
    FULFILLMENT + "SuspendEntitlement",
    FULFILLMENT + "ReinstateEntitlement",
    FULFILLMENT + "DeactivateSeat",
    FULFILLMENT + "RemoveNamedUser",
    FULFILLMENT + "ChangeNamedUserEmail",
}

# The webhook calls: a subscription sends every entitlement change (customers, emails)
# to a URL of its choosing for as long as it exists, which is more than reading
# (`read`) and no part of fulfilling orders (`fulfill`): a scope of its own.
WEBHOOK_METHODS = {
    FULFILLMENT + name
    for name in (
        "CreateWebhookSubscription",
        "GetWebhookSubscription",
        "ListWebhookSubscriptions",
        "UpdateWebhookSubscription",
        "DeleteWebhookSubscription",
        "ListWebhookDeliveries",
        "RedeliverWebhooks",
    )
}


def required_scope(method: str) -> str | None:
    """The token scope a method needs; None for calls that carry their own credential."""
    if method.startswith(CATALOG):
        return "catalog"
    if method in WEBHOOK_METHODS:
        return "webhooks"
    if method.startswith(FULFILLMENT):
        return "fulfill" if method in WRITE_METHODS else "read"
    return None


def bearer_token(authorization: str | None) -> str:
    """The token of an `authorization: Bearer TOKEN` value (gRPC metadata or HTTP header)."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    raise missing_credentials()


@dataclass(frozen=True)
class Call:
    """One call as the guard sees it: `method` as /package.Service/Method."""

    method: str
    transport: str  # "grpc" or "http", for the log line
    peer: str
    authorization: str | None  # the authorization metadata or header, as sent
    client_verified: bool = False  # came with a client certificate the TLS layer verified
    forwarded: str | None = None  # the value of the abuse limits' peer header, if any


Refuse = Callable[[DomainError], Awaitable[NoReturn]]


class CallGuard:
    """`passthrough`: exceptions a transport raises to end a call itself (grpc's abort),
    which are neither bugs nor the guard's to answer. `require_client_cert`: mutual TLS
    is configured, so the admin services answer only calls whose transport verified a
    client certificate (the gRPC admin port's, or an HTTP connection's that presented one).
    `abuse`: the rate limits (none: nothing is limited)."""

    def __init__(
        self,
        authenticator: TokenAuthenticator,
        metrics: RpcMetrics | None = None,
        passthrough: tuple[type[BaseException], ...] = (),
        *,
        require_client_cert: bool = False,
        abuse: AbuseLimits | None = None,
    ) -> None:
        self._auth = authenticator
        self.require_client_cert = require_client_cert
        self.abuse = abuse
        self._metrics = metrics
        self._passthrough = passthrough

    @property
    def peer_header(self) -> str:
        """The header (gRPC metadata) a transport puts into `Call.forwarded`; "" for none."""
        return "" if self.abuse is None else self.abuse.peer_header

    @contextlib.asynccontextmanager
    async def around(self, call: Call, request: Any, refuse: Refuse) -> AsyncIterator[str]:
        """Authorize and check the request, turn failures into `refuse`, log and count the
        outcome; the block runs the call, given the actor of what it changes (the API
        token's, or "" for calls that carry their own credential)."""
        started = time.perf_counter()
        code, reason = "OK", ""
        log.debug("rpc started method=%s", call.method)
        abuse, peer = self.abuse, ""
        actor = ""
        try:
            if abuse is not None:
                peer = abuse.peer_of(call.peer, call.forwarded)
                abuse.admit(call.method, peer, request)
            scope = required_scope(call.method)
            if scope:
                if self.require_client_cert and not call.client_verified:
                    raise client_certificate_required()
                token = await self._auth.authenticate(bearer_token(call.authorization))
                self._auth.require(token, scope)
                actor = token_actor(token.token_id)
                if abuse is not None:
                    abuse.admit_token(token.token_id)
            check_request(request)
            yield actor
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away
            code = "CANCELLED"
            raise
        except DomainError as refused:
            error = refused if abuse is None else await abuse.refused(peer, refused)
            code, reason = STATUS_OF[error.reason].name, error.reason.value
            await refuse(error)
        except Exception as error:
            if isinstance(error, self._passthrough):
                raise
            code, reason = "INTERNAL", Reason.INTERNAL_ERROR.value
            await refuse(_internal(error))
        finally:
            seconds = time.perf_counter() - started
            _log_call(call, code, reason, seconds)
            if self._metrics is not None:
                self._metrics.observe(call.method, code, reason, seconds)

    async def unary(
        self, call: Call, request: Any, behavior: Callable[[], Awaitable[Any]], refuse: Refuse
    ) -> Any:
        """One answer; transaction conflicts retried."""
        async with self.around(call, request, refuse) as actor:
            with acting_as(actor) if actor else contextlib.nullcontext():
                return await retry_conflicts(behavior)

    async def stream(
        self, call: Call, request: Any, responses: AsyncIterator[Any], refuse: Refuse
    ) -> AsyncIterator[Any]:
        """The answers of a server stream, closed (its slot freed) as soon as the call ends."""
        async with (
            self.around(call, request, refuse),
            contextlib.aclosing(responses) as opened,  # type: ignore[type-var]
        ):
            async for response in opened:
                yield response


def _internal(error: Exception) -> DomainError:
    error_id = secrets.token_hex(6)
    log.error("unexpected error %s", error_id, exc_info=error)
    return internal_error(error_id)


def _log_call(call: Call, code: str, reason: str, seconds: float) -> None:
    """One line per call; its fields also go to JSON logs as they are (see logs.py)."""
    duration_ms = round(1000 * seconds, 1)
    log.info(
        "rpc method=%s code=%s duration_ms=%.1f%s peer=%s transport=%s",
        call.method,
        code,
        duration_ms,
        f" reason={reason}" if reason else "",
        call.peer,
        call.transport,
        extra={
            "method": call.method,
            "code": code,
            "reason": reason,
            "duration_ms": duration_ms,
            "peer": call.peer,
            "transport": call.transport,
        },
    )
