"""Running a case: one call, then every check of the answer and of the database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from keyturn.server.api.errors import ERROR_DOMAIN

from .cases import DEFAULT, RPCS, STREAMING, Case, Code, Expected, Metadata
from .world import World
from support.http_json import HTTP_STATUS, HttpCallError, HttpFailure, post_json, stream_json
from support.rows import changed_tables, row_counts, table_digests
from support.rpc import RpcFailure, failure_of

# Every case runs over both transports: the same mistake gets the same answer.
TRANSPORTS = ("grpc", "http")


def _serialize(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def _metadata(w: World, case: Case) -> Metadata | None:
    auth = RPCS[case.rpc][1] if case.auth == DEFAULT else case.auth
    if auth is None or isinstance(auth, tuple):
        return auth
    return w.tokens(auth)


async def _call(w: World, case: Case) -> bytes:
    service, _ = RPCS[case.rpc]
    request = case.request(w) if callable(case.request) else case.request
    path = f"/{service}/{case.rpc}"
    if case.rpc not in STREAMING:
        method = w.channel.unary_unary(
            path, request_serializer=_serialize, response_deserializer=None
        )
        response: bytes = await method(request, metadata=_metadata(w, case), timeout=30)
        return response
    # A stream that wrongly starts sends the events there are: its first one is the answer.
    stream = w.channel.unary_stream(path, request_serializer=_serialize, response_deserializer=None)
    call = stream(request, metadata=_metadata(w, case), timeout=10)
    try:
        first = await call.read()
    finally:
        call.cancel()
    return first if isinstance(first, bytes) else b""  # not bytes: the stream ended


async def _call_http(w: World, case: Case) -> bytes:
    """The same call over HTTP/JSON: the request as JSON, or its raw bytes (those that
    are no message) as application/proto, the codec Connect has for them."""
    service, _ = RPCS[case.rpc]
    request = case.request(w) if callable(case.request) else case.request
    # HTTP trims a header's trailing blanks ("Bearer " arrives as "Bearer").
    headers = {key: value.strip() for key, value in _metadata(w, case) or ()}
    path = f"/{service}/{case.rpc}"
    if case.rpc in STREAMING:
        stream = stream_json(w.http, path, request, headers)
        try:
            async for first in stream:  # a stream that wrongly starts: its first event
                return repr(first).encode()
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        return b""
    try:
        json_format.MessageToJson(request) if isinstance(request, Message) else None
    except json_format.SerializeToJsonError:  # a value JSON cannot write (a 10^15 s duration)
        request = request.SerializeToString()
    if isinstance(request, bytes):
        return repr(
            await post_json(w.http, path, request, headers, content_type="application/proto")
        ).encode()
    return repr(await post_json(w.http, path, request, headers)).encode()


def _expected(w: World, value: Expected) -> str:
    return value(w) if callable(value) else value


def _answer_problems(w: World, case: Case, failure: RpcFailure) -> list[str]:
    got = f"{failure.code.name} {failure.reason or '(no ErrorInfo)'} {failure.fields} {failure.message!r}"
    problems: list[str] = []
    if failure.code is Code.INTERNAL:
        problems.append(f"INTERNAL for bad input: {got}")
    if (failure.code, failure.reason) != (case.code, case.reason):
        problems.append(f"expected {case.code.name} {case.reason}, got {got}")
    if failure.domain != ERROR_DOMAIN:
        problems.append(f"ErrorInfo domain is {failure.domain!r}, not {ERROR_DOMAIN!r}")
    missing = [f for f in case.fields if f not in failure.fields]
    if missing:
        problems.append(f"BadRequest lacks {missing}; it names {failure.fields}")
    if case.code is Code.INVALID_ARGUMENT and failure.fields:
        first = failure.metadata.get("field")
        if first != failure.fields[0]:
            problems.append(f"metadata field={first!r}, first violation {failure.fields[0]!r}")
    for key, expected in case.metadata.items():
        value = _expected(w, expected)
        if failure.metadata.get(key) != value:
            problems.append(f"metadata {key}={failure.metadata.get(key)!r}, expected {value!r}")
    if isinstance(failure, HttpFailure):
        status = 200 if case.rpc in STREAMING else HTTP_STATUS[case.code.name.lower()]
        if failure.status != status:
            problems.append(f"HTTP status {failure.status}, expected {status}: {failure.body}")
    return problems


async def run_case(world: World, case: Case, transport: str = "grpc") -> None:
    """Make the call; fail with every way its answer or the database is wrong."""
    store = world.app.store
    counts, digests = await row_counts(store), await table_digests(store)
    # A case that wrongly wrote an event must not make the stream cases fail as well.
    async with store.read() as tx:
        world.last_sequence = await tx.events.last_sequence()
    try:
        response = await (_call_http if transport == "http" else _call)(world, case)
    except grpc.aio.AioRpcError as error:
        problems = _answer_problems(world, case, failure_of(error))
    except HttpCallError as error:
        problems = _answer_problems(world, case, error.failure)
    else:
        problems = [
            f"expected {case.code.name} {case.reason}, but the call succeeded "
            f"({len(response)} bytes of response)"
        ]
    counts_after = await row_counts(store)
    written = changed_tables(counts, counts_after) or {
        table: "rows changed" for table in changed_tables(digests, await table_digests(store))
    }
    if written:
        problems.append(f"the call wrote: {written}")
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)


def refusal_test(cases: Sequence[Case]) -> Callable[[World, Case], Awaitable[None]]:
    """The test a module runs its cases with (assign it to a `test_` name)."""

    @pytest.mark.parametrize("transport", TRANSPORTS)
    @pytest.mark.parametrize("case", cases, ids=[case.id for case in cases])
    async def test_bad_input_is_refused_and_writes_nothing(
        world: World, case: Case, transport: str
    ) -> None:
        await run_case(world, case, transport)

    return test_bad_input_is_refused_and_writes_nothing
