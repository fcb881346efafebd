"""Around every call: bearer-token auth, domain errors to rich statuses, one log line, metrics.

The log line and the metrics carry the method, the status code, the ErrorInfo
reason, the duration and (log only) the peer address: never a credential or
anything else from the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from keyturn.server.app.conflicts import retry_conflicts
from keyturn.server.app.tokens import TokenAuthenticator
from keyturn.server.domain.errors import (
    DomainError,
    Reason,
    client_certificate_required,
    internal_error,
    missing_credentials,
)

from .errors import STATUS_OF, grpc_status_of
from .metrics import RpcMetrics
from .request_checks import check_request, tolerant
from .transport_security import has_verified_client_cert

log = logging.getLogger("keyturn.rpc")

CATALOG = "/keyturn.fulfillment.v1.CatalogService/"
FULFILLMENT = "/keyturn.fulfillment.v1.FulfillmentService/"
WRITE_METHODS = {FULFILLMENT + "FulfillOrder", FULFILLMENT + "ResendCredentials"}


def required_scope(method: str) -> str | None:
    """The token scope a method needs; None for calls that carry their own credential."""
    if method.startswith(CATALOG):
        return "catalog"
    if method.startswith(FULFILLMENT):
        return "fulfill" if method in WRITE_METHODS else "read"
    return None


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    raise missing_credentials()


Trailer = tuple[tuple[str, str], ...]


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`trailer`: trailing metadata added to every answer (a worker's `keyturn-worker`).
    `require_client_cert`: the calls that need a token also need a connection with a
    verified client certificate (mutual TLS for the admin services)."""

    def __init__(
        self,
        authenticator: TokenAuthenticator,
        metrics: RpcMetrics | None = None,
        trailer: Trailer = (),
        *,
        require_client_cert: bool = False,
    ) -> None:
        self._auth = authenticator
        self._require_client_cert = require_client_cert
        self._metrics = metrics
        self._trailer = trailer
        # Wrapped once per method, not per call: the servers' handlers never change.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or not method.startswith("/keyturn."):
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        scope = required_scope(method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, scope, handler.unary_unary),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, scope, handler.unary_stream),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], scope: str) -> None:
        if self._require_client_cert and not has_verified_client_cert(context):
            raise client_certificate_required()
        token = await self._auth.authenticate(_bearer(context))
        self._auth.require(token, scope)

    @contextlib.asynccontextmanager
    async def _guard(
        self,
        method: str,
        scope: str | None,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[None]:
        """Authorize and check the request, turn failures into statuses, log and count the
        outcome."""
        started = time.perf_counter()
        code, reason = "OK", ""
        peer = context.peer()  # now: once the call is cancelled, asking grpc may crash it
        log.debug("rpc started method=%s", method)
        if self._trailer:
            context.set_trailing_metadata(self._trailer)
        try:
            if scope:
                await self._authorize(context, scope)
            check_request(request)
            yield
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except DomainError as error:
            code, reason = STATUS_OF[error.reason].name, error.reason.value
            await self._abort(context, error)
        except Exception as error:
            code, reason = _unexpected(error), Reason.INTERNAL_ERROR.value
            await self._abort(context, _internal(error))
        finally:
            seconds = time.perf_counter() - started
            _log_call(method, code, reason, seconds, peer)
            if self._metrics is not None:
                self._metrics.observe(method, code, reason, seconds)

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
        """Ends the call with the error's status and details (raises, as grpc.aio does),
        keeping this server's own trailer beside the status details."""
        status = grpc_status_of(error)
        await context.abort(
            status.code,
            status.details,
            trailing_metadata=(*self._trailer, *status.trailing_metadata),
        )

    def _wrap_unary(
        self, method: str, scope: str | None, behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._guard(method, scope, request, context):
                return await retry_conflicts(lambda: behavior(request, context))

        return call

    def _wrap_stream(
        self, method: str, scope: str | None, behavior: Callable[..., Any]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with (
                self._guard(method, scope, request, context),
                contextlib.aclosing(behavior(request, context)) as responses,
            ):
                async for response in responses:
                    yield response

        return call


def _unexpected(error: Exception) -> str:
    """Aborts raised by grpc itself pass through; anything else is a bug, logged in full."""
    if isinstance(error, grpc.aio.AbortError):
        raise error
    return "INTERNAL"


def _internal(error: Exception) -> DomainError:
    error_id = secrets.token_hex(6)
    log.error("unexpected error %s", error_id, exc_info=error)
    return internal_error(error_id)


def _log_call(method: str, code: str, reason: str, seconds: float, peer: str) -> None:
    """One line per call; its fields also go to JSON logs as they are (see logs.py)."""
    duration_ms = round(1000 * seconds, 1)
    log.info(
        "rpc method=%s code=%s duration_ms=%.1f%s peer=%s",
        method,
        code,
        duration_ms,
        f" reason={reason}" if reason else "",
        peer,
        extra={
            "method": method,
            "code": code,
            "reason": reason,
            "duration_ms": duration_ms,
            "peer": peer,
        },
    )
