"""The HTTP server every connector shares, over real HTTP on loopback: routing by exact path
and by "/"-ended prefix, body limits, and a route that fails answered 500 (so the sending
system retries), never a 2xx."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from http import HTTPStatus

import pytest

from keyturn.client.connectors.webhook_server import (
    MAX_BODY,
    ConnectorServer,
    Reply,
    Request,
    json_reply,
    route_for,
)


def echo(request: Request) -> Reply:
    return json_reply(HTTPStatus.OK, {"path": request.path, "bytes": len(request.body)})


def broken(request: Request) -> Reply:
    raise RuntimeError("a bug")


@pytest.fixture
def server() -> Iterator[ConnectorServer]:
    running = ConnectorServer(("127.0.0.1", 0), {"/a": echo, "/orders/": echo, "/x": broken})
    running.start()
    yield running
    running.stop()


def post(server: ConnectorServer, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_routes_by_path_and_prefix() -> None:
    routes = {"/a": echo, "/orders/": broken, "/orders/shop/": echo}
    assert route_for(routes, "/a") is echo
    assert route_for(routes, "/a/b") is None
    assert route_for(routes, "/orders/web") is broken
    assert route_for(routes, "/orders/shop/x") is echo
    assert route_for(routes, "/orders/") is None


def test_deliveries_reach_their_route(server: ConnectorServer) -> None:
    assert post(server, "/a?x=1", b"abc") == (200, b'{"path": "/a", "bytes": 3}')
    assert post(server, "/orders/shop", b"") == (200, b'{"path": "/orders/shop", "bytes": 0}')
    assert post(server, "/b", b"")[0] == HTTPStatus.NOT_FOUND


def test_a_failing_route_is_a_server_error(server: ConnectorServer) -> None:
    assert post(server, "/x", b"{}") == (500, b'{"error": "internal error"}')


def test_oversized_and_malformed_lengths_are_refused(server: ConnectorServer) -> None:
    status, _ = post(server, "/a", b"", **{"Content-Length": str(MAX_BODY + 1)})
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert post(server, "/a", b"", **{"Content-Length": "1e3"})[0] == HTTPStatus.BAD_REQUEST
