"""Calls over Keyturn's HTTP/JSON port as any HTTP client makes them (httpx, no Connect
library): POST a JSON body, read a JSON answer or a Connect error body; for the change
stream, Connect's enveloped streaming (`application/connect+json`).

`HttpFailure` carries what `support.rpc.RpcFailure` carries for gRPC (the gRPC code of
the Connect code, the ErrorInfo read from each detail's `debug`, the BadRequest
fields), so that one check reads both transports' answers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
from google.protobuf import json_format
from google.protobuf.message import Message

from support.rpc import RpcFailure

# Connect's codes and the HTTP statuses its unary errors are answered with.
HTTP_STATUS = {
    "canceled": 499,
    "invalid_argument": 400,
    "failed_precondition": 400,
    "out_of_range": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "aborted": 409,
    "resource_exhausted": 429,
    "unimplemented": 501,
    "internal": 500,
    "unknown": 500,
    "unavailable": 503,
}
END_STREAM = 0x02


def grpc_code(connect_code: str) -> grpc.StatusCode:
    return grpc.StatusCode["CANCELLED" if connect_code == "canceled" else connect_code.upper()]


@dataclass(frozen=True)
class HttpFailure(RpcFailure):
    status: int = 0  # the HTTP status (200 for an error that ends a stream)
    body: str = ""


def failure_of_json(error: Mapping[str, Any], status: int) -> HttpFailure:
    """The failure a Connect error body describes."""
    reason, domain, metadata, fields = "", "", {}, []
    retry_delay: float | None = None
    for detail in error.get("details", []):
        debug = detail.get("debug", {})
        if detail.get("type") == "google.rpc.ErrorInfo":
            reason, domain = debug.get("reason", ""), debug.get("domain", "")
            metadata = dict(debug.get("metadata", {}))
        elif detail.get("type") == "google.rpc.BadRequest":
            fields = [v.get("field", "") for v in debug.get("fieldViolations", [])]
        elif detail.get("type") == "google.rpc.RetryInfo":
            retry_delay = float(str(debug.get("retryDelay", "0s")).removesuffix("s"))
    code = error.get("code", "unknown")
    return HttpFailure(
        grpc_code(code), reason, domain, metadata, fields, error.get("message", ""),
        retry_delay, status, json.dumps(error),
    )  # fmt: skip


class HttpCallError(Exception):
    def __init__(self, failure: HttpFailure) -> None:
        super().__init__(
            f"{failure.status} {failure.code.name} {failure.reason}: {failure.message}"
        )
        self.failure = failure


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def path_of(service: str, method: str) -> str:
    return f"/{service}/{method}"


async def post_json(
    client: httpx.AsyncClient,
    path: str,
    body: bytes | str | Mapping[str, Any] | Message,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """The JSON answer of a unary call; HttpCallError with the failure otherwise."""
    if isinstance(body, Message):
        body = json_format.MessageToJson(body)
    content = body if isinstance(body, bytes | str) else json.dumps(body)
    response = await client.post(
        path, content=content, headers={"content-type": content_type, **(headers or {})}
    )
    answer = response.json()
    if response.status_code != 200:
        raise HttpCallError(failure_of_json(answer, response.status_code))
    assert isinstance(answer, dict)
    return answer


def envelope(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


async def stream_json(
    client: httpx.AsyncClient,
    path: str,
    body: bytes | Mapping[str, Any] | Message,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Each message of a server stream as it arrives; HttpCallError when the stream ends
    with an error (Connect's end-of-stream envelope, JSON whatever the codec). Bytes are
    sent as they are, with the proto codec; their answers come as {"proto": bytes}."""
    codec = "proto" if isinstance(body, bytes) else "json"
    if isinstance(body, Message):
        data = json_format.MessageToJson(body).encode()
    else:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.stream(
        "POST", path, content=envelope(data),
        headers={"content-type": f"application/connect+{codec}", **(headers or {})},
    ) as response:  # fmt: skip
        if response.status_code != 200:
            await response.aread()
            raise HttpCallError(failure_of_json(response.json(), response.status_code))
        buffer = b""
        async for chunk in response.aiter_bytes():
            buffer += chunk
            while len(buffer) >= 5:
                flags, length = struct.unpack(">BI", buffer[:5])
                if len(buffer) < 5 + length:
                    break
                payload, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if not flags & END_STREAM and codec == "proto":
                    yield {"proto": payload}
                    continue
                message = json.loads(payload)
                if flags & END_STREAM:
                    if "error" in message:
                        raise HttpCallError(failure_of_json(message["error"], 200))
                    return
                yield message
