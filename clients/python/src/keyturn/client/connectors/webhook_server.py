"""The HTTP side every order connector shares: a small threaded server whose routes
turn one delivery into one answer, and the answer to a FulfillOrder outcome.

What a delivery is answered decides whether the sending system retries, so the
rule is the same for every connector: 2xx only once FulfillOrder succeeded (or
replayed); a refusal by Keyturn (an unmapped product, a SKU the catalog lacks, a
target not found) is an error the system shows and retries, so that once the
map or the catalog is fixed the next retry fulfils the order; Keyturn
unreachable or busy is 503, retried too. Nothing is acknowledged that was not done.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc

from keyturn.fulfillment.v1 import fulfillment_pb2 as ful

from ..errors import KeyturnError

log = logging.getLogger("keyturn.connect")
MAX_BODY = 1 << 20
# Failures that pass: the system's retry will find Keyturn reachable, idle or unlocked.
TEMPORARY = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

Fulfil = Callable[[ful.FulfillOrderRequest], ful.FulfillOrderResponse]


@dataclass(frozen=True)
class Request:
    """One delivery as it arrived: the raw body, for signatures computed over it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Message
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


Route = Callable[[Request], Reply]


def json_reply(status: HTTPStatus, body: Mapping[str, Any]) -> Reply:
    return Reply(status, json.dumps(body).encode())


@dataclass(frozen=True)
class Ignored:
    """A delivery that needs no order (answered 2xx: nothing to retry), and why."""

    reason: str


@dataclass(frozen=True)
class Fulfilled:
    response: ful.FulfillOrderResponse


@dataclass(frozen=True)
class Refused:
    """Keyturn did not fulfil the order; `temporary` when a retry may succeed as it is."""

    reason: str
    message: str
    temporary: bool

    @property
    def status(self) -> HTTPStatus:
        return HTTPStatus.SERVICE_UNAVAILABLE if self.temporary else HTTPStatus.UNPROCESSABLE_ENTITY


def fulfil_order(fulfil: Fulfil, order: ful.FulfillOrderRequest) -> Fulfilled | Refused:
    """FulfillOrder, with its failure sorted into temporary or a refusal."""
    try:
        return Fulfilled(fulfil(order))
    except KeyturnError as exc:
        log.error("order %s/%s refused: %s", order.source, order.order_id, exc)
        return Refused(exc.reason or exc.code.name, exc.message, exc.code in TEMPORARY)


def order_reply(
    order: ful.FulfillOrderRequest, outcome: Fulfilled | Refused, **about: str
) -> Reply:
    """The JSON answer for one order: 200 with what it did, else 422 or 503 with why."""
    body: dict[str, Any] = {**about, "order_id": order.order_id}
    if isinstance(outcome, Refused):
        return json_reply(
            outcome.status, {**body, "reason": outcome.reason, "error": outcome.message}
        )
    response = outcome.response
    entitlements = [e.entitlement_id for e in response.entitlements]
    return json_reply(
        HTTPStatus.OK, {**body, "replayed": response.replayed, "entitlements": entitlements}
    )


class ConnectorServer:
    """A threaded HTTP server: POST to a route's path calls it. A route keyed by a
    path ending in "/" takes every path under it (the handler reads the rest)."""

    def __init__(self, listen: tuple[str, int], routes: Mapping[str, Route]) -> None:
        self._http = ThreadingHTTPServer(listen, _handler(dict(routes)))
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self._http.serve_forever()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join()


def route_for(routes: Mapping[str, Route], path: str) -> Route | None:
    """The route of `path`: its own, else that of the longest "/"-ended prefix strictly
    above it (a prefix route needs something after the "/")."""
    if path in routes and not path.endswith("/"):
        return routes[path]
    prefixes = [p for p in routes if p.endswith("/") and path.startswith(p) and path != p]
    return routes[max(prefixes, key=len)] if prefixes else None


def _handler(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            route = route_for(routes, parts.path)
            if route is None:
                self._answer(json_reply(HTTPStatus.NOT_FOUND, {"error": "no such endpoint"}))
                return
            length_text = self.headers.get("Content-Length") or "0"
            if not length_text.isascii() or not length_text.isdigit():
                self._answer(json_reply(HTTPStatus.BAD_REQUEST, {"error": "bad Content-Length"}))
                return
            length = int(length_text)
            if length > MAX_BODY:
                self._answer(
                    json_reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "too large"})
                )
                return
            body = self.rfile.read(length)
            request = Request("POST", parts.path, parse_qs(parts.query), self.headers, body)
            try:
                reply = route(request)
            except Exception:  # a bug in a route must not look like a done delivery
                log.exception("connector route %s failed", parts.path)
                reply = json_reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
            self._answer(reply)

        def _answer(self, reply: Reply) -> None:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler
