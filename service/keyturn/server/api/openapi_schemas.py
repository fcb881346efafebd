"""JSON Schemas of proto messages as the proto3 JSON mapping writes them.

What a message looks like over HTTP/JSON follows from its descriptor alone, so the
schemas are derived from the descriptors the server runs with, never written by hand:
field names in lowerCamelCase, 64-bit integers as decimal strings, enums by value
name, bytes in base64, repeated fields as arrays, maps as objects, and the well-known
types in their own JSON forms (a Timestamp is an RFC 3339 string, a Duration `"900s"`).
Each message and enum becomes one component named by its full proto name (two
packages both have a `Feature`); descriptions are the proto comments.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    OneofDescriptor,
)

Schema = dict[str, Any]

REF = "#/components/schemas/"

_F = FieldDescriptor
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
SCALARS: dict[int, Schema] = {
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    _F.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    _F.TYPE_INT64: _INT64,
    _F.TYPE_SINT64: _INT64,
    _F.TYPE_SFIXED64: _INT64,
    _F.TYPE_UINT64: _UINT64,
    _F.TYPE_FIXED64: _UINT64,
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WRAPPED = {
    "DoubleValue": _F.TYPE_DOUBLE,
    "FloatValue": _F.TYPE_FLOAT,
    "Int64Value": _F.TYPE_INT64,
    "UInt64Value": _F.TYPE_UINT64,
    "Int32Value": _F.TYPE_INT32,
    "UInt32Value": _F.TYPE_UINT32,
    "BoolValue": _F.TYPE_BOOL,
    "StringValue": _F.TYPE_STRING,
    "BytesValue": _F.TYPE_BYTES,
}

# The well-known types have JSON forms of their own, not that of their fields.
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "examples": ["900s"],
    },
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    **{
        f"google.protobuf.{name}": {"type": [SCALARS[kind]["type"], "null"]}
        | {k: v for k, v in SCALARS[kind].items() if k != "type"}
        for name, kind in _WRAPPED.items()
    },
}
WELL_KNOWN_ENUMS: dict[str, Schema] = {"google.protobuf.NullValue": {"type": "null"}}


class SchemaSet:
    """The component schemas that the messages added so far reach, each added once."""

    def __init__(self, comments: dict[str, str]) -> None:
        self._comments = comments
        self.schemas: dict[str, Schema] = {}

    def ref(self, name: str) -> Schema:
        return {"$ref": REF + name}

    def message(self, message: Descriptor) -> Schema:
        """A reference to `message`'s schema (its JSON form, for a well-known type)."""
        if message.full_name in WELL_KNOWN:
            return dict(WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placed first: messages may recurse
            self.schemas[message.full_name] = self._message_schema(message)
        return self.ref(message.full_name)

    def enum(self, enum: EnumDescriptor) -> Schema:
        if enum.full_name in WELL_KNOWN_ENUMS:
            return dict(WELL_KNOWN_ENUMS[enum.full_name])
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = self._enum_schema(enum)
        return self.ref(enum.full_name)

    def _described(self, schema: Schema, *texts: str | None) -> Schema:
        text = "\n\n".join(t for t in texts if t)
        return {"description": text, **schema} if text else schema

    def _enum_schema(self, enum: EnumDescriptor) -> Schema:
        listed = [
            f"- `{value.name}`: {' '.join(self._comments.get(f'{enum.full_name}.{value.name}', '').split())}".rstrip(
                ": "
            )
            for value in enum.values
        ]
        return self._described(
            {"type": "string", "enum": [value.name for value in enum.values]},
            self._comments.get(enum.full_name),
            "\n".join(listed),
        )

    def _message_schema(self, message: Descriptor) -> Schema:
        oneofs = _real_oneofs(message)
        properties = {
            field.json_name: self._field(message, field, oneofs) for field in message.fields
        }
        schema: Schema = {"type": "object", "properties": properties}
        exclusive = {
            field.json_name: _none_of(f.json_name for f in oneof.fields if f is not field)
            for oneof in oneofs
            for field in oneof.fields
            if len(oneof.fields) > 1
        }
        if exclusive:
            schema["dependentSchemas"] = exclusive
        return self._described(
            schema,
            self._comments.get(message.full_name),
            *(self._oneof_note(message, oneof) for oneof in oneofs),
        )

    def _oneof_note(self, message: Descriptor, oneof: OneofDescriptor) -> str:
        members = ", ".join(f"`{field.json_name}`" for field in oneof.fields)
        about = " ".join(self._comments.get(f"{message.full_name}.{oneof.name}", "").split())
        return f"Oneof `{oneof.name}`{f' ({about})' if about else ''}: at most one of {members}."

    def _field(
        self, message: Descriptor, field: FieldDescriptor, oneofs: list[OneofDescriptor]
    ) -> Schema:
        comment = self._comments.get(f"{message.full_name}.{field.name}")
        oneof = field.containing_oneof
        note = None
        if oneof is not None and oneof in oneofs:
            note = f"Member of oneof `{oneof.name}`: set at most one of its fields."
        return self._described(self._value(field), comment, note)

    def _value(self, field: FieldDescriptor) -> Schema:
        entry = _map_entry(field)
        if entry is not None:
            return {
                "type": "object",
                "additionalProperties": self._single(entry.fields_by_name["value"]),
            }
        single = self._single(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single(self, field: FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(SCALARS[field.type])


def _map_entry(field: FieldDescriptor) -> Descriptor | None:
    """The key-value message of a map field (a map is an object in JSON, not a list)."""
    entry = field.message_type
    if field.is_repeated and entry is not None and entry.GetOptions().map_entry:
        return entry
    return None


def _real_oneofs(message: Descriptor) -> list[OneofDescriptor]:
    """The message's oneofs less those protoc makes for proto3 `optional` fields (one
    each, a field that may be absent, not a choice)."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    synthetic = {field.oneof_index for field in proto.field if field.proto3_optional}
    return [oneof for oneof in message.oneofs if oneof.index not in synthetic]


def _none_of(names: Iterable[str]) -> Schema:
    """Present together with none of `names` (the other members of a oneof)."""
    return {"properties": dict.fromkeys(names, False)}
