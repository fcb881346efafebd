"""The OpenAPI document says what the HTTP/JSON API does: a path per RPC, each message's
fields under their JSON names and types, every error reason, valid OpenAPI 3.1.

The strongest check is empirical: messages that protobuf's own JSON printer writes
(`json_format.MessageToDict`, the mapping the Connect transport uses) must validate
against the document's schemas, and a request that sets two members of a oneof, or an
enum by a name it does not have, must not. (`redocly lint` runs in scripts/test.sh.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    json_format,
    message_factory,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from openapi_spec_validator import validate
from openapi_spec_validator.versions.shortcuts import get_spec_version

from keyturn.errors.v1 import error_reason_pb2
from keyturn.fulfillment.v1 import catalog_pb2 as cat
from keyturn.fulfillment.v1 import fulfillment_pb2 as ful
from keyturn.licensing.v1 import licensing_pb2 as lic
from keyturn.server.api import proto_comments
from keyturn.server.api.call_guard import required_scope
from keyturn.server.api.openapi import CONNECT_HTTP_STATUS, SERVICES, openapi_document
from keyturn.server.api.openapi_schemas import SchemaSet

Schema = dict[str, Any]
REASONS = list(error_reason_pb2.ErrorReason.keys())


@pytest.fixture(scope="module")
def document() -> Schema:
    return openapi_document()


def schema_of(document: Schema, name: str) -> Schema:
    schema: Schema = document["components"]["schemas"][name]
    return schema


def validator(document: Schema, name: str) -> jsonschema.Draft202012Validator:
    """Validates against one component, its references resolved inside the document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())


def as_json(message: Message) -> Any:
    return json.loads(json_format.MessageToJson(message))


def test_the_document_is_valid_openapi_3_1(document: Schema) -> None:
    assert document["openapi"] == "3.1.0"
    version = get_spec_version(document)
    assert (version.major, version.minor) == ("3", "1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_rpc_has_its_connect_path(document: Schema) -> None:
    declared = {
        f"/{service.full_name}/{method.name}": method
        for module in (lic, ful, cat)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    # 19, then GetUsageReport, SuspendEntitlement, ReinstateEntitlement, ListAuditEvents,
    # ListActivations, DeactivateSeat, RemoveNamedUser, ChangeNamedUserEmail, LookupCustomer
    assert len(declared) == 35
    assert set(document["paths"]) == set(declared)
    operation_ids = [path["post"]["operationId"] for path in document["paths"].values()]
    assert len(set(operation_ids)) == len(operation_ids)
    for path, method in declared.items():
        operation = document["paths"][path]["post"]
        media = "application/connect+json" if method.server_streaming else "application/json"
        (request,) = operation["requestBody"]["content"].values()
        assert set(operation["requestBody"]["content"]) == {media}
        assert request["schema"] == {"$ref": f"#/components/schemas/{method.input_type.full_name}"}
        answer = operation["responses"]["200"]["content"][media]["schema"]
        output = {"$ref": f"#/components/schemas/{method.output_type.full_name}"}
        assert answer == output or output in answer["anyOf"], path
        assert operation["description"].startswith(proto_comments.load()[method.full_name])


def test_each_method_asks_for_the_scope_the_interceptor_enforces(document: Schema) -> None:
    scheme = document["components"]["securitySchemes"]["bearerToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    scopes = {}
    for path, item in document["paths"].items():
        security = item["post"]["security"]
        scope = required_scope(path)
        assert security == ([{"bearerToken": [scope]}] if scope else []), path
        scopes[path.rsplit("/", 1)[1]] = scope
    assert scopes["ActivateSeat"] is None
    assert scopes["FulfillOrder"] == "fulfill"
    assert scopes["GetEntitlement"] == "read"
    assert scopes["PutSku"] == "catalog"


def _reachable(message: Any, seen: dict[str, Any]) -> None:
    if message.full_name in seen or message.full_name.startswith("google.protobuf."):
        return
    seen[message.full_name] = message
    for field in message.fields:
        if field.message_type is not None:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                entry = entry.fields_by_name["value"].message_type
                if entry is None:
                    continue
            _reachable(entry, seen)


def test_every_field_of_every_reachable_message_is_in_its_schema(document: Schema) -> None:
    messages: dict[str, Any] = {}
    for service in SERVICES:
        for method in service.methods:
            _reachable(method.input_type, messages)
            _reachable(method.output_type, messages)
    assert "keyturn.fulfillment.v1.CreateOperation" in messages  # reached through Sku
    comments = proto_comments.load()
    for name, message in messages.items():
        schema = schema_of(document, name)
        assert schema["type"] == "object"
        assert set(schema["properties"]) == {f.json_name for f in message.fields}, name
        for field in message.fields:
            comment = comments.get(f"{name}.{field.name}")
            if comment:
                assert schema["properties"][field.json_name]["description"].startswith(comment)


@pytest.mark.parametrize(
    ("message", "field", "expected"),
    [
        (
            "keyturn.fulfillment.v1.EntitlementEvent",
            "sequence",
            {"type": "string", "format": "int64"},
        ),
        ("keyturn.licensing.v1.Feature", "limit", {"type": "string", "format": "int64"}),
        (
            "keyturn.fulfillment.v1.Entitlement",
            "seatsInUse",
            {"type": "integer", "format": "int32"},
        ),
        ("keyturn.fulfillment.v1.Entitlement", "perpetual", {"type": "boolean"}),
        (
            "keyturn.fulfillment.v1.Entitlement",
            "createTime",
            {"type": "string", "format": "date-time"},
        ),
        ("keyturn.fulfillment.v1.Entitlement", "leaseDuration", {"type": "string"}),
        (
            "keyturn.fulfillment.v1.Entitlement",
            "status",
            {"$ref": "#/components/schemas/keyturn.fulfillment.v1.EntitlementStatus"},
        ),
        (
            "keyturn.fulfillment.v1.Entitlement",
            "features",
            {
                "type": "array",
                "items": {"$ref": "#/components/schemas/keyturn.fulfillment.v1.Feature"},
            },
        ),
        (
            "keyturn.fulfillment.v1.Entitlement",
            "externalReferences",
            {"type": "array", "items": {"type": "string"}},
        ),
        (
            "google.rpc.ErrorInfo",
            "metadata",
            {"type": "object", "additionalProperties": {"type": "string"}},
        ),
    ],
)
def test_field_kinds_follow_the_proto3_json_mapping(
    document: Schema, message: str, field: str, expected: Schema
) -> None:
    found = schema_of(document, message)["properties"][field]
    assert {key: found[key] for key in expected} == expected


def test_enums_are_their_value_names_each_described(document: Schema) -> None:
    schema = schema_of(document, "keyturn.fulfillment.v1.EntitlementStatus")
    assert schema["enum"] == list(ful.EntitlementStatus.keys())
    assert "- `ENTITLEMENT_STATUS_CANCELLED`: Cancelled by an order." in schema["description"]
    # The licensing package's enum of the same short name is its own component.
    other = schema_of(document, "keyturn.licensing.v1.EntitlementStatus")
    assert "- `ENTITLEMENT_STATUS_CANCELLED`: Cancelled." in other["description"]


def test_a_oneof_allows_at_most_one_member(document: Schema) -> None:
    schema = schema_of(document, "keyturn.licensing.v1.ActivateSeatRequest")
    assert "Oneof `credential` (What proves the right to a seat.)" in schema["description"]
    assert schema["dependentSchemas"]["licenseKey"] == {"properties": {"identityToken": False}}
    check = validator(document, "keyturn.licensing.v1.ActivateSeatRequest")
    request = lic.ActivateSeatRequest(license_key="KT-1", product_id="p", fingerprint="f" * 8)
    check.validate(as_json(request))
    both = as_json(request) | {"identityToken": "eyJ"}
    assert not check.is_valid(both)
    operation = schema_of(document, "keyturn.fulfillment.v1.Operation")
    assert len(operation["dependentSchemas"]) == 11
    # proto3 `optional` makes a oneof of one field: not a choice, nothing to exclude.
    assert "dependentSchemas" not in schema_of(document, "keyturn.fulfillment.v1.Feature")


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500)


def test_messages_as_protobuf_prints_them_validate(document: Schema) -> None:
    entitlement = ful.Entitlement(
        entitlement_id="ent_1",
        status=ful.ENTITLEMENT_STATUS_ACTIVE,
        seats=5,
        features=[cat.Feature(name="export", limit=2**40)],
        start_time=_ts(1_700_000_000),
        lease_duration=duration_pb2.Duration(seconds=900),
        grace_period=duration_pb2.Duration(seconds=1, nanos=5_000_000),
        license_model=cat.LICENSE_MODEL_NODE_LOCKED,
        external_references=["stripe:sub_1"],
        named_users=[ful.NamedUser(user_id="usr_1", email="a@b.example", redeem_time=_ts(9))],
    )
    event = ful.EntitlementEvent(sequence=2**53 + 1, entitlement=entitlement)
    printed = as_json(ful.ListEntitlementEventsResponse(events=[event]))
    assert printed["events"][0]["sequence"] == str(2**53 + 1)  # int64: a string
    assert printed["events"][0]["entitlement"]["leaseDuration"] == "900s"
    validator(document, "keyturn.fulfillment.v1.ListEntitlementEventsResponse").validate(printed)
    sku = cat.Sku(
        sku_id="STD-1Y",
        operations=[
            cat.Operation(create=cat.CreateOperation(edition_id="std", seats_per_unit=1)),
            cat.Operation(cancel=cat.CancelOperation()),
        ],
        update_time=_ts(1),
    )
    validator(document, "keyturn.fulfillment.v1.PutSkuRequest").validate(
        as_json(cat.PutSkuRequest(sku=sku))
    )
    wrong_enum = printed | {"events": [{"type": "ENTITLEMENT_EVENT_TYPE_EXPLODED"}]}
    assert not validator(document, "keyturn.fulfillment.v1.ListEntitlementEventsResponse").is_valid(
        wrong_enum
    )
    as_number = {"events": [{"sequence": 7}]}
    assert not validator(document, "keyturn.fulfillment.v1.ListEntitlementEventsResponse").is_valid(
        as_number
    )


def test_every_error_reason_is_listed(document: Schema) -> None:
    reasons = schema_of(document, "keyturn.errors.v1.ErrorReason")
    assert reasons["enum"] == REASONS
    info = schema_of(document, "google.rpc.ErrorInfo")["properties"]
    assert info["reason"]["$ref"] == "#/components/schemas/keyturn.errors.v1.ErrorReason"
    assert info["domain"]["const"] == "keyturn.dev"
    comments = proto_comments.load()
    for name in REASONS:
        first_line = comments[f"keyturn.errors.v1.ErrorReason.{name}"].split("\n")[0]
        assert f"- `{name}`: {first_line}" in reasons["description"]
    # A method that needs a token names every reason under the status it travels with.
    responses = document["paths"]["/keyturn.fulfillment.v1.FulfillmentService/FulfillOrder"][
        "post"
    ]["responses"]
    named = " ".join(r["description"] for r in responses.values())
    for name in REASONS:
        if name != "ERROR_REASON_UNSPECIFIED":
            assert f"`{name}`" in named, name
    assert "`SEATS_EXHAUSTED`" in responses["429"]["description"]
    assert "`ORDER_NOT_FOUND`" in responses["404"]["description"]
    assert "`MISSING_CREDENTIALS`" in responses["401"]["description"]


def test_each_status_is_the_connect_one_and_token_reasons_only_where_tokens_go(
    document: Schema,
) -> None:
    assert CONNECT_HTTP_STATUS["invalid_argument"] == 400
    assert CONNECT_HTTP_STATUS["unauthenticated"] == 401
    assert CONNECT_HTTP_STATUS["resource_exhausted"] == 429
    assert CONNECT_HTTP_STATUS["unavailable"] == 503
    activate = document["paths"]["/keyturn.licensing.v1.LicensingService/ActivateSeat"]["post"]
    assert set(activate["responses"]) == {
        "200", "400", "401", "403", "404", "409", "415", "429", "500", "501", "503", "default"
    }  # fmt: skip
    assert "`INVALID_LICENSE_KEY`" in activate["responses"]["401"]["description"]
    assert "`MISSING_CREDENTIALS`" not in activate["responses"]["401"]["description"]
    error = schema_of(document, "connect.Error")
    assert error["properties"]["code"]["enum"] == list(CONNECT_HTTP_STATUS)


def test_a_connect_error_validates(document: Schema) -> None:
    info = error_details_pb2.ErrorInfo(
        reason="SEATS_EXHAUSTED", domain="keyturn.dev", metadata={"seats": "5", "seat_limit": "5"}
    )
    error = {
        "code": "resource_exhausted",
        "message": "every seat is in use",
        "details": [
            {"type": "google.rpc.ErrorInfo", "value": "CgV4", "debug": as_json(info)},
        ],
    }
    check = validator(document, "connect.Error")
    check.validate(error)
    unknown = error | {"details": [error["details"][0] | {"debug": {"reason": "NO_SUCH"}}]}
    assert not check.is_valid(unknown)


def _pool_with_every_kind() -> Any:
    """A message whose fields are the kinds Keyturn's protos do not use (yet)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (timestamp_pb2, duration_pb2, struct_pb2, wrappers_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="kinds.proto",
        package="kinds",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto", "google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="Kinds")
    entry = message.nested_type.add(name="CountsEntry", options={"map_entry": True})
    F = descriptor_pb2.FieldDescriptorProto
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_UINT64, label=F.LABEL_OPTIONAL)
    fields = [
        ("raw_bytes", F.TYPE_BYTES, None),
        ("ratio", F.TYPE_DOUBLE, None),
        ("maybe_count", F.TYPE_MESSAGE, ".google.protobuf.Int32Value"),
        ("attributes", F.TYPE_MESSAGE, ".google.protobuf.Struct"),
        ("anything", F.TYPE_MESSAGE, ".google.protobuf.Value"),
    ]
    for number, (name, kind, type_name) in enumerate(fields, start=1):
        field = message.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    message.field.add(
        name="counts",
        number=9,
        type=F.TYPE_MESSAGE,
        label=F.LABEL_REPEATED,
        type_name=".kinds.Kinds.CountsEntry",
    )
    pool.Add(file)
    return pool.FindMessageTypeByName("kinds.Kinds")


def test_the_other_kinds_map_as_the_mapping_says() -> None:
    descriptor = _pool_with_every_kind()
    schemas = SchemaSet({})
    assert schemas.message(descriptor) == {"$ref": "#/components/schemas/kinds.Kinds"}
    properties = schemas.schemas["kinds.Kinds"]["properties"]
    assert properties["rawBytes"] == {"type": "string", "contentEncoding": "base64"}
    assert properties["ratio"]["type"] == "number"
    assert properties["maybeCount"] == {"type": ["integer", "null"], "format": "int32"}
    assert properties["attributes"] == {"type": "object", "additionalProperties": True}
    assert properties["anything"] == {}
    assert properties["counts"] == {
        "type": "object",
        "additionalProperties": {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    }
    assert "kinds.Kinds.CountsEntry" not in schemas.schemas  # a map is no message in JSON
    value = message_factory.GetMessageClass(descriptor)()
    value.raw_bytes = b"\x00\xff"
    value.counts["a"] = 2**63
    value.maybe_count.value = 0
    value.attributes.update({"k": [1, "two"]})
    printed = as_json(value)
    check = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/kinds.Kinds", "components": {"schemas": schemas.schemas}}
    )
    check.validate(printed)
    assert printed["counts"] == {"a": str(2**63)}


def test_timestamps_and_durations_as_printed_match_their_schemas(document: Schema) -> None:
    lease = lic.Lease(token="t")
    lease.expire_time.FromDatetime(datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    printed = as_json(lease)
    validator(document, "keyturn.licensing.v1.Lease").validate(printed)
    assert not validator(document, "keyturn.licensing.v1.Lease").is_valid(
        {"expireTime": "next tuesday"}
    )
    pattern = schema_of(document, "keyturn.fulfillment.v1.Entitlement")["properties"][
        "leaseDuration"
    ]
    for seconds in (timedelta(minutes=15), timedelta(seconds=1.5), timedelta(days=30)):
        duration = duration_pb2.Duration()
        duration.FromTimedelta(seconds)
        jsonschema.validate(json_format.MessageToDict(duration), pattern)


def keyturn(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, with no KEYTURN_* setting of the test run's around it."""
    command = [sys.executable, "-m", "keyturn.server.cli", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, env=env)


def test_keyturn_openapi_writes_json_or_yaml(tmp_path: Path, document: Schema) -> None:
    printed = keyturn("openapi")
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == document
    # (scripts/test.sh writes a JSON file for redocly: that path runs in CI.)
    as_yaml = tmp_path / "api.yaml"
    assert keyturn("openapi", "--output", str(as_yaml)).returncode == 0
    assert yaml.safe_load(as_yaml.read_text()) == document
    nowhere = keyturn("openapi", "--output", str(tmp_path / "missing" / "api.json"))
    assert nowhere.returncode == 1
    assert nowhere.stderr.startswith("keyturn: ")
    assert len(nowhere.stderr.splitlines()) == 1
    assert "Traceback" not in nowhere.stderr
