"""The layout of the HTTP port (KEYTURN_HTTP_LISTEN), decided once (README "HTTP/JSON",
docs/design.md):

- `/keyturn.licensing.v1.LicensingService/<Method>`, and the same for
  FulfillmentService and CatalogService: every RPC, Connect protocol (POST, JSON);
- `GET /healthz`: the readiness gRPC health reports (200 SERVING, 503 NOT_SERVING);
- `/openapi.json`: reserved for the OpenAPI description of these routes;
- `/console/`: the operations console (api/console/), when the server mounts it;
- `/stripe/webhook`: reserved for the Stripe webhook, should it move onto this port.

Metrics stay off this port, on KEYTURN_METRICS_LISTEN: this one may face the internet,
the metrics are for the operator's scraper only. Anything else is a JSON 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from .connect_app import ConnectApp
from .console.routes import ConsoleApp

HEALTH_PATH = "/healthz"
OPENAPI_PATH = "/openapi.json"
# Taken, so that no route lands there before what it is kept for.
RESERVED_PREFIXES = ("/stripe/webhook",)
CONSOLE_PREFIX = "/console"  # the console's pages, /console/...

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


async def _send_json(send: Send, status: int, body: object, extra: list[Any]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class HttpPort:
    """The ASGI application of the port: Connect routes, health, and the rest refused.

    `serving` says whether health reports SERVING; `worker_id`, when set, goes out in
    a `keyturn-worker` header on every answer, as the gRPC trailer does."""

    def __init__(
        self,
        connect: ConnectApp,
        serving: Callable[[], bool],
        *,
        max_body_bytes: int,
        worker_id: str = "",
        console: ConsoleApp | None = None,
    ) -> None:
        self._connect = connect
        self._console = console
        self._max_body = max_body_bytes
        self._serving = serving
        self._worker = [(b"keyturn-worker", worker_id.encode())] if worker_id else []
        # GET documents by path: OPENAPI_PATH (mounted by the server).
        self._documents: dict[str, Callable[[], dict[str, Any]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: not served
            return
        path: str = scope["path"]
        if path in self._connect.paths:
            await self._connect(scope, self._bounded(receive), self._with_worker(send))
        elif path == HEALTH_PATH:
            serving = self._serving()
            status = "SERVING" if serving else "NOT_SERVING"
            await _send_json(send, 200 if serving else 503, {"status": status}, self._worker)
        elif self._console is not None and (
            path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")
        ):
            await self._console(scope, receive, send, self._worker)
        elif path in self._documents and scope["method"] in ("GET", "HEAD"):
            await _send_json(send, 200, self._documents[path](), self._worker)
        else:
            what = (
                "is reserved and not served yet"
                if path.startswith(RESERVED_PREFIXES)
                else "is no route here: RPCs are POST /<package>.<Service>/<Method>"
            )
            body = {"code": "not_found", "message": f"{path[:200]} {what}"}
            await _send_json(send, 404, body, self._worker)

    def mount(self, path: str, document: Callable[[], dict[str, Any]]) -> None:
        """Serve `document()` as JSON at GET `path` (the OpenAPI description)."""
        self._documents[path] = document

    def _bounded(self, receive: Receive) -> Receive:
        """`receive`, refusing a body past the request limit as it arrives: connect-python
        reads a whole body before it compares its size."""
        received = 0

        async def receiving() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self._max_body:
                raise ConnectError(
                    Code.RESOURCE_EXHAUSTED,
                    f"request body is larger than KEYTURN_MAX_REQUEST_BYTES ({self._max_body})",
                )
            return message

        return receiving

    def _with_worker(self, send: Send) -> Send:
        if not self._worker:
            return send

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._worker]}
            await send(message)

        return sending
