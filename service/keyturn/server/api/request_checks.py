"""Checks every request gets before its servicer: it decodes, and holds no NUL characters.

Both would otherwise fail deep down (an UNKNOWN from the deserializer, a
database that refuses NUL bytes) instead of as INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from keyturn.server.domain.errors import FieldViolation, invalid_request

# Credentials are judged by their own parsers, which refuse NUL like any other
# malformed key, so that every bad key gets the same answer.
CREDENTIAL_FIELDS = frozenset({"license_key", "identity_token", "lease_token", "invitation_code"})


class Undecodable:
    """Stands in for a request whose bytes are not a message of the method's type;
    `problem` says what is wrong with them, where the decoder said (JSON's parser does)."""

    def __init__(self, problem: str = "") -> None:
        self.problem = problem


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that yields Undecodable instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Undecodable()

    return parse


def _nul_fields(message: Message, prefix: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        if field.name in CREDENTIAL_FIELDS:
            continue
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if repeated else path
            if field.type == FieldDescriptor.TYPE_STRING and "\x00" in item:
                found.append(FieldViolation(where, "must not contain NUL characters"))
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                found += _nul_fields(item, f"{where}.")
    return found


def check_request(request: Any) -> None:
    """Raise INVALID_REQUEST for an undecodable request or a string with NUL in it."""
    if isinstance(request, Undecodable):
        problem = "is not a valid protobuf message for this method"
        if request.problem:
            problem = f"is not a valid message for this method: {request.problem}"
        raise invalid_request([FieldViolation("request", problem)])
    if isinstance(request, Message):
        found = _nul_fields(request, "")
        if found:
            raise invalid_request(found)
