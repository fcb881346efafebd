"""The little of HTTP the console needs, over ASGI: a request with its form and cookies
read, and an answer with the headers every console page carries.

Small enough not to need a web framework: the console has a dozen routes, no file uploads,
and forms of a few fields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_FORM_BYTES = 64 * 1024  # a console form is a few fields
# Nothing is loaded from anywhere but the console itself, no page may be framed, and
# forms post back to it only.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class FormTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    form: dict[str, str]
    cookies: dict[str, str]
    secure: bool  # came over TLS

    def field(self, name: str) -> str:
        return self.form.get(name, "").strip()


def _first(values: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in values.items() if v}


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


async def read_request(scope: Scope, receive: Receive) -> Request:
    """The request; a urlencoded body is read as its form (FormTooLarge past the limit)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    body = b""
    if scope["method"] == "POST":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_FORM_BYTES:
                raise FormTooLarge()
            more = message.get("more_body", False)
    form: dict[str, str] = {}
    if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        form = _first(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
    query = _first(parse_qs(scope.get("query_string", b"").decode("latin-1")))
    return Request(
        method=scope["method"],
        path=scope["path"],
        headers=headers,
        query=query,
        form=form,
        cookies=_cookies(headers.get("cookie", "")),
        secure=scope.get("scheme") == "https",
    )


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = b"text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        headers = [
            (b"content-type", self.content_type),
            *SECURITY_HEADERS,
            *self.headers,
            *extra,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def redirect(location: str) -> Response:
    """303 See Other: after a POST, the browser GETs `location`."""
    return Response(303, headers=[(b"location", location.encode())])
