"""AIP-158 paging: page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import TypeVar

from keyturn.server.domain.errors import FieldViolation, invalid_request

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    size: int
    after: str


def page_request(page_size: int, page_token: str, scope: str) -> PageRequest:
    """Check the paging fields; `scope` ties a token to the query that issued it."""
    if page_size < 0:
        raise invalid_request([FieldViolation("page_size", "must not be negative")])
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return PageRequest(size, "")
    try:
        data = json.loads(base64.urlsafe_b64decode(page_token.encode() + b"=="))
        if not isinstance(data, dict) or data.get("s") != scope:
            raise ValueError("token of another query")
        after = data["a"]
        if not isinstance(after, str) or len(after) > 256 or not after.isprintable():
            raise ValueError("not a cursor this server makes")
        return PageRequest(size, after)
    except (ValueError, KeyError, binascii.Error, UnicodeError) as exc:
        raise invalid_request(
            [FieldViolation("page_token", "is not a token returned by this list call")]
        ) from exc


NUMBER_CURSOR = re.compile(r"[0-9]{1,18}", re.ASCII)


def number_after(page: PageRequest) -> int | None:
    """The cursor of a page of a list keyed by a number (a sequence, a row id); None on
    the first page. A token whose cursor is no such number is INVALID_REQUEST."""
    if not page.after:
        return None
    if not NUMBER_CURSOR.fullmatch(page.after):
        raise invalid_request(
            [FieldViolation("page_token", "is not a token returned by this list call")]
        )
    return int(page.after)


def next_page_token(last_key: str | None, scope: str) -> str:
    if last_key is None:
        return ""
    raw = json.dumps({"s": scope, "a": last_key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def page_of(items: list[T], size: int) -> tuple[list[T], bool]:
    """Split a fetch of size+1 items into the page and whether more follow."""
    return items[:size], len(items) > size
