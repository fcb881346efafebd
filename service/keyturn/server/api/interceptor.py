"""The gRPC side of the call guard: every call of a Keyturn service goes through
`CallGuard` (auth, checks, errors, retries, log, metrics; see call_guard.py), and a
refusal ends it with the rich status of api/errors.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc

from keyturn.server.domain.errors import DomainError

from .call_guard import Call, CallGuard
from .errors import grpc_status_of
from .request_checks import tolerant
from .transport_security import has_verified_client_cert

Trailer = tuple[tuple[str, str], ...]
Context = grpc.aio.ServicerContext[Any, Any]


def _metadata_value(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """`trailer`: trailing metadata added to every answer (a worker's `keyturn-worker`)."""

    def __init__(self, guard: CallGuard, trailer: Trailer = ()) -> None:
        self._guard = guard
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
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _call(self, method: str, context: Context) -> Call:
        if self._trailer:
            context.set_trailing_metadata(self._trailer)
        peer_header = self._guard.peer_header
        # The peer now: once the call is cancelled, asking grpc may crash it.
        return Call(
            method,
            "grpc",
            context.peer(),
            _metadata_value(context, "authorization"),
            # Asked of grpc only where mutual TLS is on: the guard reads it nowhere else.
            client_verified=self._guard.require_client_cert and has_verified_client_cert(context),
            forwarded=_metadata_value(context, peer_header) if peer_header else None,
        )

    def _refusal(self, context: Context) -> Callable[[DomainError], Awaitable[NoReturn]]:
        async def refuse(error: DomainError) -> NoReturn:
            """Ends the call with the error's status and details (raises, as grpc.aio
            does), keeping this server's own trailer beside the status details."""
            status = grpc_status_of(error)
            await context.abort(
                status.code,
                status.details,
                trailing_metadata=(*self._trailer, *status.trailing_metadata),
            )

        return refuse

    def _wrap_unary(
        self, method: str, behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            return await self._guard.unary(
                self._call(method, context),
                request,
                lambda: behavior(request, context),
                self._refusal(context),
            )

        return call

    def _wrap_stream(
        self, method: str, behavior: Callable[..., Any]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            guarded = self._guard.stream(
                self._call(method, context),
                request,
                behavior(request, context),
                self._refusal(context),
            )
            async with contextlib.aclosing(guarded) as responses:  # type: ignore[type-var]
                async for response in responses:
                    yield response

        return call
