"""The OpenAPI 3.1 description of the HTTP/JSON API, generated from the proto descriptors.

Over HTTP the services speak the Connect protocol: each unary RPC is
`POST /<full.service.Name>/<Method>` with the request message as proto3 JSON, answered
200 with the response message's JSON, or with Connect's error JSON and the HTTP status
of its code. Everything here is derived, so the document cannot drift from the API:
paths and schemas from the descriptors the server runs with, descriptions from the
proto comments (`proto_comments.json`), the bearer-token scope of each method from the
interceptor that enforces it, the statuses from the one error table `STATUS_OF`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.rpc import error_details_pb2
from grpc import StatusCode

from keyturn.errors.v1 import error_reason_pb2
from keyturn.fulfillment.v1 import catalog_pb2, fulfillment_pb2
from keyturn.licensing.v1 import licensing_pb2
from keyturn.server.domain.errors import Reason

from . import proto_comments
from .call_guard import required_scope
from .errors import ERROR_DOMAIN, STATUS_OF
from .openapi_schemas import REF, Schema, SchemaSet

SERVICES: tuple[ServiceDescriptor, ...] = (
    licensing_pb2.DESCRIPTOR.services_by_name["LicensingService"],
    fulfillment_pb2.DESCRIPTOR.services_by_name["FulfillmentService"],
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
)

# Connect's code for each gRPC status, and the HTTP status it travels with
# (the Connect protocol's table).
CONNECT_HTTP_STATUS: dict[str, int] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

# The reasons of the bearer-token check, which only methods that need a scope can give.
TOKEN_REASONS = frozenset(
    {Reason.MISSING_CREDENTIALS, Reason.INVALID_TOKEN, Reason.INSUFFICIENT_SCOPE}
)

# The google.rpc details a Keyturn error carries (`debug` shows them as JSON).
ERROR_DETAILS = (error_details_pb2.ErrorInfo.DESCRIPTOR, error_details_pb2.BadRequest.DESCRIPTOR)

BEARER = "bearerToken"
ERROR = "connect.Error"
END_STREAM = "connect.EndStream"
UNARY = "application/json"
STREAM = "application/connect+json"

ABOUT = """\
The Keyturn API over HTTP/1.1 and JSON, generated from its protobuf contract
(`proto/`): the same services, validation and errors as over gRPC.

**Calls** follow the [Connect protocol](https://connectrpc.com/docs/protocol/): every
RPC is `POST /<package>.<Service>/<Method>` with `Content-Type: application/json` and
the request message as its body; the answer is `200` with the response message.

    curl -sS -X POST -H 'Content-Type: application/json' \\
      -d '{"licenseKey": "KT-...", "productId": "acme-cad", "fingerprint": "..."}' \\
      http://HOST:PORT/keyturn.licensing.v1.LicensingService/ActivateSeat

**JSON** is the proto3 JSON mapping: field names in lowerCamelCase (the proto's
snake_case names are accepted too); 64-bit integers as decimal strings; enums by
value name; timestamps as RFC 3339 strings; durations as seconds with an `s`
(`"900s"`). Responses leave out fields at their default value (`0`, `""`,
`false`, an empty list, the first enum value), so read a missing field as its
default.

**Errors** are `{"code": "...", "message": "...", "details": [...]}` with the
HTTP status of the code. Every error carries a `google.rpc.ErrorInfo` detail whose
`reason` is a `keyturn.errors.v1.ErrorReason` value (branch on it, never on the
message); bad input also carries a `google.rpc.BadRequest` listing each field.

**Authentication**: FulfillmentService and CatalogService need
`Authorization: Bearer TOKEN`, an API token (`keyturn tokens create`) with the scope
each operation names. LicensingService calls carry their own credential (a license
key, identity token or lease) in the request.

**Streams**: WatchEntitlementEvents is server-streaming, in Connect's streaming
form (`application/connect+json`, enveloped messages); see that operation."""


def _connect_code(code: StatusCode) -> str:
    return "canceled" if code is StatusCode.CANCELLED else code.name.lower()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keyturn")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


def _reasons_by_status(reasons: list[Reason]) -> dict[int, dict[str, list[str]]]:
    """HTTP status -> Connect code -> reason names, in the enum's order."""
    grouped: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for reason in reasons:
        code = _connect_code(STATUS_OF[reason])
        grouped[CONNECT_HTTP_STATUS[code]][code].append(reason.name)
    return {status: dict(codes) for status, codes in sorted(grouped.items())}


def _error_responses(scoped: bool) -> dict[str, Any]:
    """One response per HTTP status a reason of this method may travel with, naming the
    reasons; other codes (deadline_exceeded, canceled, unknown) under `default`."""
    reasons = [r for r in Reason if scoped or r not in TOKEN_REASONS]
    content = {UNARY: {"schema": {"$ref": REF + ERROR}}}
    responses: dict[str, Any] = {}
    for status, codes in _reasons_by_status(reasons).items():
        said = "; ".join(
            f"`{code}`: {', '.join(f'`{name}`' for name in names)}" for code, names in codes.items()
        )
        responses[str(status)] = {
            "description": f"Error codes and ErrorInfo reasons: {said}.",
            "content": content,
        }
    responses["default"] = {
        "description": "Any other error (such as `deadline_exceeded` past `Connect-Timeout-Ms`,"
        " or `canceled`), as Connect's error JSON.",
        "content": content,
    }
    return responses


# Connect's answer to a body in another encoding than the server reads, before any call.
_UNSUPPORTED = {
    "description": f"The request's Content-Type is not `{UNARY}` (unary calls) or `{STREAM}` "
    "(streams), nor another encoding the server reads."
}


def _operation(service: ServiceDescriptor, method: MethodDescriptor, schemas: SchemaSet) -> Schema:
    comments = proto_comments.load()
    scope = required_scope(f"/{service.full_name}/{method.name}")
    request, response = schemas.message(method.input_type), schemas.message(method.output_type)
    operation: Schema = {
        "operationId": f"{service.name}_{method.name}",
        "summary": method.name,
        "description": comments.get(method.full_name, method.name),
        "tags": [service.full_name],
        "security": [{BEARER: [scope]}] if scope else [],
        "parameters": [
            {"$ref": "#/components/parameters/ConnectProtocolVersion"},
            {"$ref": "#/components/parameters/ConnectTimeoutMs"},
        ],
    }
    if scope:
        operation["description"] += f"\n\nNeeds a bearer token with the `{scope}` scope."
    if method.server_streaming:
        operation["description"] += (
            "\n\nServer-streaming, in Connect's streaming form: request and response are "
            f"`{STREAM}`, made of enveloped messages. Each envelope is a flags byte, a "
            "4-byte big-endian length and that many bytes of JSON. The request is one "
            f"envelope (flags 0) holding a `{method.input_type.full_name}`. The response "
            f"is a sequence of envelopes with flags 0, each a "
            f"`{method.output_type.full_name}`, ended by one with flags 2: the end-stream "
            "message, which carries the `error` when the stream failed. The HTTP status "
            "of a stream is 200 even then; the error codes and reasons are those the "
            "unary calls answer with."
        )
        operation["requestBody"] = {
            "required": True,
            "description": "One enveloped request message.",
            "content": {STREAM: {"schema": request}},
        }
        operation["responses"] = {
            "200": {
                "description": "Enveloped response messages, then the end-stream message.",
                "content": {STREAM: {"schema": {"anyOf": [response, {"$ref": REF + END_STREAM}]}}},
            },
            "415": _UNSUPPORTED,
        }
        return operation
    operation["requestBody"] = {"required": True, "content": {UNARY: {"schema": request}}}
    operation["responses"] = {
        "200": {"description": "The response message.", "content": {UNARY: {"schema": response}}},
        **_error_responses(scoped=scope is not None),
        "415": _UNSUPPORTED,
    }
    return operation


def _error_schemas(schemas: SchemaSet) -> dict[str, Schema]:
    """Connect's error JSON, with Keyturn's details described."""
    details = [schemas.message(detail) for detail in ERROR_DETAILS]
    reason = schemas.enum(error_reason_pb2.ErrorReason.DESCRIPTOR)
    info = schemas.schemas["google.rpc.ErrorInfo"]
    info["properties"]["reason"] = reason | {"description": "Why the call failed."}
    info["properties"]["domain"] = {"type": "string", "const": ERROR_DOMAIN}
    info["properties"]["metadata"]["description"] = (
        "What the reason's comment in `keyturn.errors.v1.ErrorReason` documents, as strings."
    )
    codes = "\n".join(f"- `{code}`: HTTP {status}" for code, status in CONNECT_HTTP_STATUS.items())
    return {
        ERROR: {
            "type": "object",
            "description": f"A failed call, as the Connect protocol answers it. Codes:\n\n{codes}",
            "required": ["code"],
            "properties": {
                "code": {"type": "string", "enum": list(CONNECT_HTTP_STATUS)},
                "message": {
                    "type": "string",
                    "description": "For people; clients branch on the ErrorInfo reason.",
                },
                "details": {"type": "array", "items": {"$ref": REF + "connect.ErrorDetail"}},
            },
        },
        "connect.ErrorDetail": {
            "type": "object",
            "description": "A google.rpc detail message.",
            "required": ["type", "value"],
            "properties": {
                "type": {
                    "type": "string",
                    "description": "Full name of the detail's message type.",
                    "examples": [d.full_name for d in ERROR_DETAILS],
                },
                "value": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "The detail message in the protobuf binary encoding.",
                },
                "debug": {"description": "The same detail as JSON (its schema follows `type`)."},
            },
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": detail.full_name}}},
                    "then": {"properties": {"debug": schema}},
                }
                for detail, schema in zip(ERROR_DETAILS, details, strict=True)
            ],
        },
        END_STREAM: {
            "type": "object",
            "description": "The last message of a stream.",
            "properties": {
                "error": {"$ref": REF + ERROR},
                "metadata": {
                    "type": "object",
                    "description": "Trailers: header name to its values.",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    }


def _components(schemas: SchemaSet) -> Schema:
    return {
        "schemas": dict(sorted(schemas.schemas.items())),
        "securitySchemes": {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API token made by `keyturn tokens create --scope S` "
                "(`catalog`, `fulfill` or `read`); each operation names the scope it needs.",
            }
        },
        "parameters": {
            "ConnectProtocolVersion": {
                "name": "Connect-Protocol-Version",
                "in": "header",
                "required": False,
                "description": "The Connect protocol version.",
                "schema": {"type": "string", "const": "1"},
            },
            "ConnectTimeoutMs": {
                "name": "Connect-Timeout-Ms",
                "in": "header",
                "required": False,
                "description": "The call's deadline in milliseconds; past it the call ends "
                "with `deadline_exceeded`.",
                "schema": {"type": "string", "pattern": "^[0-9]{1,10}$"},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the three services, as JSON-ready data."""
    comments = proto_comments.load()
    schemas = SchemaSet(comments)
    paths = {
        f"/{service.full_name}/{method.name}": {"post": _operation(service, method, schemas)}
        for service in SERVICES
        for method in service.methods
    }
    errors = _error_schemas(schemas)
    schemas.schemas.update(errors)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Keyturn API",
            "version": _version(),
            "description": ABOUT,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "The Keyturn server's HTTP port."}],
        "tags": [
            {"name": service.full_name, "description": comments.get(service.full_name, "")}
            for service in SERVICES
        ],
        "paths": paths,
        "components": _components(schemas),
    }
