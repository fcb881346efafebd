"""The error contract to the letter: `error_reason.proto`, `Reason`, `STATUS_OF`, factories.

Each ErrorReason value's comment in `proto/keyturn/errors/v1/error_reason.proto`
starts with the status code it travels with and ends with `Metadata: ...`, the
ErrorInfo metadata keys it carries. The server builds every error through one
factory per reason in `domain/errors.py`, named after it, whose parameters are
those keys. These tests read the comments from protoc's source info (not from a
copy of them) and hold the enum, the table of statuses and every factory to them.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from keyturn.errors.v1 import error_reason_pb2
from keyturn.server.api.errors import STATUS_OF
from keyturn.server.domain import errors
from keyturn.server.domain.errors import DomainError, FieldViolation, Reason

Code = grpc.StatusCode

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
ERROR_PROTO = "keyturn/errors/v1/error_reason.proto"
SERVER = ROOT / "service" / "keyturn" / "server"

# Source-info paths: a file's enum_type is field 5, an enum's value field 2.
ENUM_TYPE, ENUM_VALUE = 5, 2


def _documented_comments(tmp: Path) -> dict[str, str]:
    """Each ErrorReason value's leading comment, as protoc reads it."""
    out = tmp / "error_reason.binpb"
    args = ["protoc", f"-I{PROTO_ROOT}", "--include_source_info", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, ERROR_PROTO]) == 0
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    (enum_index,) = [i for i, e in enumerate(file.enum_type) if e.name == "ErrorReason"]
    values = file.enum_type[enum_index].value
    comments: dict[str, str] = {}
    for location in file.source_code_info.location:
        path = list(location.path)
        if len(path) == 4 and path[:3] == [ENUM_TYPE, enum_index, ENUM_VALUE]:
            comments[values[path[3]].name] = " ".join(location.leading_comments.split())
    return comments


@pytest.fixture(scope="module")
def comments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    found = _documented_comments(tmp_path_factory.mktemp("proto"))
    assert set(found) == set(error_reason_pb2.ErrorReason.keys())
    return {name: text for name, text in found.items() if name != "ERROR_REASON_UNSPECIFIED"}


def documented_status(comment: str) -> str:
    """`UNAVAILABLE. The database ...` -> `UNAVAILABLE`."""
    return comment.split(".", 1)[0]


def documented_keys(comment: str) -> set[str]:
    """The keys named after `Metadata:`, leaving out what parentheses say about them
    (`limit` (`pool_timeout`, ...) names one key)."""
    if "Metadata:" not in comment:
        return set()
    assert comment.count("Metadata:") == 1, comment
    listed = comment.split("Metadata:", 1)[1]
    while re.search(r"\([^()]*\)", listed):
        listed = re.sub(r"\([^()]*\)", "", listed)
    return set(re.findall(r"`([a-z_]+)`", listed))


def test_documented_keys_are_read_as_meant() -> None:
    assert documented_keys("UNAVAILABLE. Busy. Metadata: `limit` (`a`, `b` or `c`).") == {"limit"}
    assert documented_keys("NOT_FOUND. None. Metadata: `x` or `y`, `line` (the (index)).") == {
        "x",
        "y",
        "line",
    }
    assert documented_keys("UNAUTHENTICATED. No metadata here, `field` is prose.") == set()


def test_error_reasons_match_the_proto_enum_and_have_a_status() -> None:
    in_proto = set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    in_domain = {reason.name for reason in Reason}
    assert in_domain == in_proto, (
        f"only in the proto: {sorted(in_proto - in_domain)}; "
        f"only in the server: {sorted(in_domain - in_proto)}"
    )
    assert all(reason.value == reason.name for reason in Reason)
    assert set(STATUS_OF) == set(Reason), f"no status for {sorted(set(Reason) - set(STATUS_OF))}"
    for name in in_proto:
        assert STATUS_OF[Reason[name]] is not Code.OK


def test_each_reason_travels_with_the_status_its_comment_names(comments: dict[str, str]) -> None:
    differ = {
        name: (documented_status(text), STATUS_OF[Reason[name]].name)
        for name, text in comments.items()
        if documented_status(text) != STATUS_OF[Reason[name]].name
    }
    assert not differ, f"reason: (documented, STATUS_OF): {differ}"


def factory_of(reason: Reason) -> Callable[..., DomainError] | None:
    found = getattr(errors, reason.name.lower(), None)
    return found if inspect.isfunction(found) else None


def test_every_reason_has_a_factory() -> None:
    missing = [f"{r.name} (domain/errors.{r.name.lower()})" for r in Reason if not factory_of(r)]
    assert not missing, f"no factory for {missing}"


def _sample(annotation: object) -> object:
    """A value of a factory parameter's type (the type without None, for an optional)."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Sequence:
        return [FieldViolation("lines[0].quantity", "must be 1 to 100000")]
    samples: dict[object, object] = {
        str: "sample",
        int: 7,
        datetime: datetime(2030, 1, 2, tzinfo=UTC),
    }
    return samples[annotation]


def _built_with_every_argument(factory: Callable[..., DomainError]) -> DomainError:
    hints = typing.get_type_hints(factory)
    arguments = {name: _sample(hints[name]) for name in inspect.signature(factory).parameters}
    return factory(**arguments)


# The one reason whose metadata is derived, not passed: `field` is the first violation's.
DERIVED = {Reason.INVALID_REQUEST: {"violations"}}


@pytest.mark.parametrize("reason", list(Reason), ids=[r.name for r in Reason])
def test_factory_sends_the_documented_metadata(comments: dict[str, str], reason: Reason) -> None:
    factory = factory_of(reason)
    assert factory is not None, f"no factory domain/errors.{reason.name.lower()}"
    documented = documented_keys(comments[reason.name])
    parameters = set(inspect.signature(factory).parameters)
    assert parameters == DERIVED.get(reason, documented), (
        f"{factory.__name__} takes {sorted(parameters)}; the proto documents {sorted(documented)}"
    )
    error = _built_with_every_argument(factory)
    assert error.reason is reason
    assert set(error.metadata) == documented
    assert all(isinstance(value, str) and value for value in error.metadata.values())
    assert error.message


def test_optional_keys_are_left_out_when_not_given() -> None:
    assert set(errors.sku_not_found("STD").metadata) == {"sku_id"}
    assert set(errors.entitlement_cancelled("ent_1").metadata) == {"entitlement_id"}
    assert errors.entitlement_not_found(external_reference="stripe:x", line=2).metadata == {
        "external_reference": "stripe:x",
        "line": "2",
    }
    assert errors.entitlement_not_found("ent_1").metadata == {"entitlement_id": "ent_1"}


def _inline_constructions(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name | ast.Attribute)
        and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "DomainError"
    ]


def test_errors_are_built_only_by_their_factories() -> None:
    """A DomainError built inline would escape the metadata check above."""
    factories = SERVER / "domain" / "errors.py"
    inline = {
        f"{path.relative_to(SERVER)}:{line}"
        for path in sorted(SERVER.rglob("*.py"))
        if path != factories
        for line in _inline_constructions(path)
    }
    assert not inline, f"DomainError built outside domain/errors.py: {sorted(inline)}"
    assert _inline_constructions(factories), "the factories build them"
