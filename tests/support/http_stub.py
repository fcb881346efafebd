"""A stub over Keyturn's HTTP/JSON port (Connect, JSON codec) with the call shape of a
generated gRPC async stub, `await stub.Method(request, metadata=...)`, built from the
service descriptor: a test written against the gRPC stubs runs unchanged over HTTP.

A refusal raises `HttpRpcError`, a `grpc.aio.AioRpcError` whose status details are the
bytes the Connect error carries, so that `pytest.raises(grpc.aio.AioRpcError)` catches it
and `support.rpc.failure_of` reads the same RpcFailure from it as from a gRPC refusal.
Before raising, the stub checks what only HTTP has: the status matches the code, and each
detail's JSON `debug` says what its bytes say.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Iterable

import grpc
import httpx
from google.protobuf import any_pb2, json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from support.http_json import HTTP_STATUS, HttpCallError, HttpFailure, post_json, stream_json
from support.rpc import RpcFailure, failure_of

Metadata = Iterable[tuple[str, str]]
TYPE_URL_PREFIX = "type.googleapis.com/"


class HttpRpcError(grpc.aio.AioRpcError):
    """An HTTP/JSON refusal as the gRPC stubs raise one; `failure` is what HTTP answered."""

    def __init__(self, failure: HttpFailure) -> None:
        error = json.loads(failure.body)
        status = status_pb2.Status(
            code=failure.code.value[0],
            message=failure.message,
            details=[
                any_pb2.Any(type_url=TYPE_URL_PREFIX + d["type"], value=_unpadded_b64(d["value"]))
                for d in error.get("details", [])
            ],
        )
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
        super().__init__(failure.code, grpc.aio.Metadata(), trailing, failure.message, None)
        self.failure = failure


def _unpadded_b64(value: str) -> bytes:
    """Connect's base64 (standard alphabet, padding left off)."""
    return base64.b64decode(value + "=" * (-len(value) % 4))


def refusal(failure: HttpFailure, streaming: bool) -> HttpRpcError:
    """The error to raise, once the HTTP status and the JSON `debug` agree with it."""
    error = HttpRpcError(failure)
    connect_code = "canceled" if failure.code is grpc.StatusCode.CANCELLED else failure.code.name
    status = 200 if streaming else HTTP_STATUS[connect_code.lower()]
    assert failure.status == status, (
        f"HTTP {failure.status} for {failure.code.name}: {failure.body}"
    )
    as_json = RpcFailure(
        **{f.name: getattr(failure, f.name) for f in dataclasses.fields(RpcFailure)}
    )
    assert failure_of(error) == as_json, (
        f"the details' debug differs from their value: {failure.body}"
    )
    return error


def headers_of(metadata: Metadata | None, timeout: float | None) -> dict[str, str]:
    """gRPC metadata as HTTP headers, and a deadline as Connect's timeout header."""
    headers = dict(metadata or ())
    if timeout is not None:
        headers["connect-timeout-ms"] = str(max(1, int(timeout * 1000)))
    return headers


class UnaryMethod:
    """One unary RPC: a call is awaited for the response message, as a gRPC call is."""

    def __init__(self, client: httpx.AsyncClient, path: str, response: type[Message]) -> None:
        self._client, self._path, self._response = client, path, response

    def __call__(
        self, request: Message, *, metadata: Metadata | None = None, timeout: float | None = None
    ) -> Awaitable[Message]:
        return self._answer(request, headers_of(metadata, timeout))

    async def _answer(self, request: Message, headers: dict[str, str]) -> Message:
        try:
            answer = await post_json(self._client, self._path, request, headers)
        except HttpCallError as error:
            raise refusal(error.failure, streaming=False) from None
        return json_format.ParseDict(answer, self._response())


class ServerStreamMethod:
    """One server-streaming RPC: a call is iterated with `async for` (no `read()`)."""

    def __init__(self, client: httpx.AsyncClient, path: str, response: type[Message]) -> None:
        self._client, self._path, self._response = client, path, response

    def __call__(
        self, request: Message, *, metadata: Metadata | None = None, timeout: float | None = None
    ) -> AsyncIterator[Message]:
        return self._messages(request, headers_of(metadata, timeout))

    async def _messages(self, request: Message, headers: dict[str, str]) -> AsyncIterator[Message]:
        stream = stream_json(self._client, self._path, request, headers)
        try:
            async for answer in stream:
                yield json_format.ParseDict(answer, self._response())
        except HttpCallError as error:
            raise refusal(error.failure, streaming=True) from None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


class HttpStub:
    """Every method of one service, as attributes named as the gRPC stub names them."""

    def __init__(self, client: httpx.AsyncClient, service: ServiceDescriptor) -> None:
        for method in service.methods:
            setattr(self, method.name, _method(client, service, method))


def _method(
    client: httpx.AsyncClient, service: ServiceDescriptor, method: MethodDescriptor
) -> UnaryMethod | ServerStreamMethod:
    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: client streaming over HTTP/JSON")
    path = f"/{service.full_name}/{method.name}"
    response = message_factory.GetMessageClass(method.output_type)
    if method.server_streaming:
        return ServerStreamMethod(client, path, response)
    return UnaryMethod(client, path, response)
