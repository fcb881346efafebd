"""Rendering console pages: Jinja2 templates (templates/, autoescaped), the context every
page gets (who is signed in, what they may do, the form's CSRF token, the notice), and the
HTTP status of a refusal.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import fields
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import grpc
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from keyturn.server.domain.catalog import Operation
from keyturn.server.domain.errors import DomainError

from ..errors import STATUS_OF
from . import csrf
from .roles import Permission, permissions_of
from .session import SessionCodec
from .web import Response

if TYPE_CHECKING:
    from .routes import Visit

TEMPLATES = Path(__file__).parent / "templates"
# A refusal's page answers with the HTTP status Connect gives its code.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def http_status_of(error: DomainError) -> int:
    return HTTP_STATUS.get(STATUS_OF[error.reason], 500)


def operation(op: Operation) -> str:
    """A SKU operation as one line: its name and its fields (every kind the same way, so a
    new kind shows without a change here)."""
    shown = []
    for item in fields(op):
        value = getattr(op, item.name)
        if isinstance(value, tuple):
            value = "[" + ", ".join(getattr(v, "name", str(v)) for v in value) + "]"
        elif isinstance(value, Enum):
            value = value.value
        shown.append(f"{item.name}={value}")
    return f"{op.name}({', '.join(shown)})"


def details(value: dict[str, Any]) -> str:
    """An audit record's details as one line: each key and its value as JSON."""
    return ", ".join(
        f"{key}={json.dumps(item, default=str)}" for key, item in sorted(value.items())
    )


def when(value: datetime | None) -> str:
    """A time as staff read it: UTC, to the second."""
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


class Pages:
    def __init__(self, codec: SessionCodec) -> None:
        self._codec = codec
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["when"] = when
        self._env.filters["operation"] = operation
        self._env.filters["details"] = details
        self._env.filters["path"] = lambda value: quote(str(value), safe="")

    def render(self, visit: Visit, template: str, *, status: int = 200, **context: Any) -> Response:
        scopes = visit.token.scopes if visit.token is not None else frozenset()
        page = self._env.get_template(template).render(
            token=visit.token,
            may=permissions_of(scopes),
            Permission=Permission,
            csrf_field=csrf.FIELD,
            csrf_token=self._codec.csrf_token(visit.session),
            notice=visit.notice,
            **context,
        )
        return Response(status, page.encode())

    def error(self, visit: Visit, status: int, message: str) -> Response:
        return self.render(visit, "error.html.j2", status=status, message=message)

    def unexpected(self, visit: Visit, error: Exception, log: logging.Logger) -> Response:
        """A bug: the page names the log line that holds the details, and no more."""
        error_id = secrets.token_hex(6)
        log.error("console unexpected error %s", error_id, exc_info=error)
        return self.error(visit, 500, f"Something went wrong on the server (error {error_id}).")
