"""The three services over HTTP/JSON (the Connect protocol), built from their descriptors.

Every method of every service descriptor gets an endpoint at
`/package.Service/Method`, calling the very servicer method gRPC calls, inside the
same `CallGuard`: a new RPC is served over HTTP by construction, with no second
generated file to keep. A refusal is the Connect error of api/errors.py (same code
table, same ErrorInfo and BadRequest details).

connect-python decodes the request before any endpoint runs, and answers a body
that does not parse (malformed JSON, an unknown field, a wrong type) as UNKNOWN,
HTTP 500. Here the codec is wrapped so that such a body reaches the guard as
`Undecodable`, which answers INVALID_ARGUMENT / INVALID_REQUEST after the token is
judged, as over gRPC; and a wrong content type or HTTP method gets a JSON body
saying so.

Connect's request context knows nothing of TLS: the client certificate the connection
verified (the ASGI TLS extension, api/http_server.py) reaches `Call.client_verified`
through a context variable set around each request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any, NoReturn, cast

from connectrpc._protocol import ConnectWireError  # the library's own error body
from connectrpc._server_shared import EndpointServerStream, EndpointUnary
from connectrpc.code import Code as ConnectCode
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from keyturn.server.domain.errors import DomainError, FieldViolation, invalid_request

from .call_guard import Call, CallGuard, Refuse
from .errors import connect_error_of
from .request_checks import Undecodable

Options = descriptor_pb2.MethodOptions
IDEMPOTENCY = {
    Options.IDEMPOTENCY_UNKNOWN: IdempotencyLevel.UNKNOWN,
    Options.NO_SIDE_EFFECTS: IdempotencyLevel.NO_SIDE_EFFECTS,
    Options.IDEMPOTENT: IdempotencyLevel.IDEMPOTENT,
}
# What a request's Content-Type may be, for the answer to one it may not.
CONTENT_TYPES = (
    "application/json (or application/proto); application/connect+json for server-streaming methods"
)


# Whether the request being served came over a connection with a verified client certificate.
_client_verified: ContextVar[bool] = ContextVar("client_verified", default=False)


def has_verified_client_cert(scope: Mapping[str, Any]) -> bool:
    """Whether the ASGI TLS extension of `scope` carries a client certificate."""
    tls = scope.get("extensions", {}).get("tls") or {}
    return bool(tls.get("client_cert_chain"))


def _refusal(ctx: RequestContext[Any, Any]) -> Refuse:
    async def refuse(error: DomainError) -> NoReturn:
        """The Connect error; a refusal that ends by itself also says when (Retry-After)."""
        if error.retry_delay_seconds is not None:
            ctx.response_headers()["retry-after"] = str(error.retry_delay_seconds)
        raise connect_error_of(error)

    return refuse


def _call(guard: CallGuard, method: str, ctx: RequestContext[Any, Any]) -> Call:
    headers = ctx.request_headers()
    return Call(
        method,
        "http",
        ctx.client_address() or "",
        headers.get("authorization"),
        client_verified=_client_verified.get(),
        forwarded=headers.get(guard.peer_header) if guard.peer_header else None,
    )


async def _within_deadline(call: Awaitable[Any], timeout_ms: float | None) -> Any:
    """The call, cancelled at the caller's deadline (`connect-timeout-ms`), as grpc
    cancels a gRPC call at its deadline: its transaction is rolled back and its
    statements cancelled, and the caller gets DEADLINE_EXCEEDED (HTTP 504). connect-python
    reads the header but leaves enforcing it to the server."""
    if timeout_ms is None:
        return await call
    try:
        async with asyncio.timeout(max(0.0, timeout_ms) / 1000):
            return await call
    except TimeoutError:
        raise ConnectError(ConnectCode.DEADLINE_EXCEEDED, "deadline exceeded") from None


def _method_info(service: ServiceDescriptor, method: MethodDescriptor) -> MethodInfo[Any, Any]:
    return MethodInfo(
        name=method.name,
        service_name=service.full_name,
        input=message_factory.GetMessageClass(method.input_type),
        output=message_factory.GetMessageClass(method.output_type),
        idempotency_level=IDEMPOTENCY[method.GetOptions().idempotency_level],
    )


def _endpoint(
    guard: CallGuard, path: str, info: MethodInfo[Any, Any], method: MethodDescriptor, behavior: Any
) -> Any:
    # The servicers never use their gRPC context: None stands in for it.
    if method.client_streaming:
        raise ValueError(f"{path}: client streaming is not served over HTTP")
    if method.server_streaming:

        def stream(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
            return guard.stream(
                _call(guard, path, ctx), request, behavior(request, None), _refusal(ctx)
            )

        return Endpoint.server_stream(method=info, function=stream)

    async def unary(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        call = guard.unary(
            _call(guard, path, ctx), request, lambda: behavior(request, None), _refusal(ctx)
        )
        return await _within_deadline(call, ctx.timeout_ms())

    return Endpoint.unary(method=info, function=unary)


def endpoints_of(guard: CallGuard, servicers: Mapping[ServiceDescriptor, object]) -> dict[str, Any]:
    """An endpoint for each method of each service, at `/package.Service/Method`."""
    endpoints: dict[str, Any] = {}
    for service, servicer in servicers.items():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            behavior = getattr(servicer, method.name)
            endpoints[path] = _endpoint(
                guard, path, _method_info(service, method), method, behavior
            )
    return endpoints


class TolerantCodec:
    """A codec (one per request) whose decode yields `Undecodable` (with the parser's
    complaint) instead of raising, so that the guard answers it; kept in `undecodable`
    too, as streams take the message they passed in rather than what decode returns."""

    def __init__(self, codec: Any) -> None:
        self._codec = codec
        self.undecodable: Undecodable | None = None

    def name(self) -> str:
        name: str = self._codec.name()
        return name

    def encode(self, message: Message) -> bytes:
        encoded: bytes = self._codec.encode(message)
        return encoded

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            return self._codec.decode(data, message)
        except Exception as error:
            self.undecodable = Undecodable(str(error) or type(error).__name__)
            return self.undecodable


def _http_refusal(status: int, allow: str) -> DomainError:
    """What a request the Connect protocol refuses before any endpoint is told."""
    if status == HTTPStatus.UNSUPPORTED_MEDIA_TYPE:
        return invalid_request([FieldViolation("content-type", f"must be {CONTENT_TYPES}")])
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        return invalid_request([FieldViolation("method", f"must be {allow or 'POST'}")])
    raise ValueError(status)


class ConnectApp(ConnectASGIApplication[None]):
    """connect-python's ASGI application over Keyturn's endpoints (see the module's
    docstring for what it changes). It overrides three of the library's private methods,
    which is why connect-python is pinned to one version."""

    def __init__(self, endpoints: dict[str, Any], read_max_bytes: int) -> None:
        super().__init__(service=None, endpoints=lambda _: endpoints, read_max_bytes=read_max_bytes)
        self.paths = frozenset(endpoints)

    @property
    def path(self) -> str:
        return "/"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        verified = _client_verified.set(has_verified_client_cert(scope))
        try:
            await super().__call__(scope, receive, send)
        finally:
            _client_verified.reset(verified)

    async def _handle_unary_connect(
        self, http_method: Any, headers: Any, codec: Any, *rest: Any
    ) -> None:
        await super()._handle_unary_connect(http_method, headers, TolerantCodec(codec), *rest)

    async def _handle_stream(
        self, receive: Any, send: Any, protocol: Any, endpoint: Any, codec: Any, *rest: Any
    ) -> None:
        tolerant = TolerantCodec(codec)
        function = endpoint.function

        def given(request: Any, ctx: Any) -> Any:
            return function(tolerant.undecodable or request, ctx)

        if isinstance(endpoint, EndpointUnary | EndpointServerStream):
            endpoint = dataclasses.replace(cast(Any, endpoint), function=given)
        await super()._handle_stream(receive, send, protocol, endpoint, tolerant, *rest)

    async def _handle_error(self, exc: Exception, ctx: Any, send: Any) -> None:
        """Connect's refusals of a content type or an HTTP method, with a JSON body
        (Connect sends none) naming the fix; their status stays 415 or 405."""
        status = getattr(getattr(exc, "status", None), "value", None)
        if status not in (HTTPStatus.UNSUPPORTED_MEDIA_TYPE, HTTPStatus.METHOD_NOT_ALLOWED):
            await super()._handle_error(exc, ctx, send)
            return
        headers = [(k.lower(), v) for k, v in getattr(exc, "headers", [])]
        allow = dict(headers).get("allow", "")
        error = connect_error_of(_http_refusal(status, allow))
        body = _wire_json(error)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    *((k.encode(), v.encode()) for k, v in headers),
                ],
                "trailers": False,
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _wire_json(error: ConnectError) -> bytes:
    body: bytes = ConnectWireError.from_exception(error).to_json_bytes()
    return body
