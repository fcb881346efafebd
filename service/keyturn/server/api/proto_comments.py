"""The comments of proto/, by full name, for documents generated from the descriptors.

The compiled `_pb2` modules carry the descriptors but not the comments (protoc drops
source info from them), and the server image ships neither proto/ nor protoc. So
scripts/generate.sh reads the comments once, from protoc's source info, into
`proto_comments.json` beside this module (committed, checked for freshness in CI like
the generated code); the server loads that file. Keys are full names: a message or
enum (`keyturn.licensing.v1.Lease`), a field or oneof (`...Lease.token`), an enum
value under its enum (`...EntitlementStatus.ENTITLEMENT_STATUS_TRIAL`), a service and
a method (`...LicensingService.ActivateSeat`).

Run as `python -m keyturn.server.api.proto_comments DESCRIPTOR_SET OUTPUT`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

RESOURCE = "proto_comments.json"

# Field numbers of descriptor.proto, as source-info paths spell them.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

Path_ = tuple[int, ...]


def _message_paths(
    message: descriptor_pb2.DescriptorProto, path: Path_, name: str
) -> Iterator[tuple[Path_, str]]:
    yield path, name
    for i, field in enumerate(message.field):
        yield (*path, MESSAGE_FIELD, i), f"{name}.{field.name}"
    for i, oneof in enumerate(message.oneof_decl):
        yield (*path, MESSAGE_ONEOF, i), f"{name}.{oneof.name}"
    for i, nested in enumerate(message.nested_type):
        yield from _message_paths(nested, (*path, MESSAGE_NESTED, i), f"{name}.{nested.name}")
    for i, enum in enumerate(message.enum_type):
        yield from _enum_paths(enum, (*path, MESSAGE_ENUM, i), f"{name}.{enum.name}")


def _enum_paths(
    enum: descriptor_pb2.EnumDescriptorProto, path: Path_, name: str
) -> Iterator[tuple[Path_, str]]:
    yield path, name
    for i, value in enumerate(enum.value):
        yield (*path, ENUM_VALUE, i), f"{name}.{value.name}"


def _file_paths(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[Path_, str]]:
    prefix = f"{file.package}." if file.package else ""
    for i, message in enumerate(file.message_type):
        yield from _message_paths(message, (FILE_MESSAGE, i), prefix + message.name)
    for i, enum in enumerate(file.enum_type):
        yield from _enum_paths(enum, (FILE_ENUM, i), prefix + enum.name)
    for i, service in enumerate(file.service):
        yield (FILE_SERVICE, i), prefix + service.name
        for j, method in enumerate(service.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), f"{prefix}{service.name}.{method.name}"


def _text(comment: str) -> str:
    """`// A line.` comes as ` A line.\\n`: drop the one space after `//`, keep the lines."""
    lines = [line.removeprefix(" ").rstrip() for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def extract(files: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Each commented element's leading comment (and trailing one, after a blank line)."""
    comments: dict[str, str] = {}
    for file in files.file:
        names = dict(_file_paths(file))
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            parts = [_text(c) for c in (location.leading_comments, location.trailing_comments)]
            text = "\n\n".join(part for part in parts if part)
            if name is not None and text:
                comments[name] = text
    return dict(sorted(comments.items()))


def dumps(comments: dict[str, str]) -> str:
    return json.dumps(comments, indent=2, ensure_ascii=False) + "\n"


@cache
def load() -> dict[str, str]:
    """The committed comments (scripts/generate.sh writes them)."""
    text = resources.files("keyturn.server.api").joinpath(RESOURCE).read_text(encoding="utf-8")
    loaded: dict[str, str] = json.loads(text)
    return loaded


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m keyturn.server.api.proto_comments SET OUTPUT", file=sys.stderr)
        return 2
    files = descriptor_pb2.FileDescriptorSet.FromString(Path(argv[0]).read_bytes())
    Path(argv[1]).write_text(dumps(extract(files)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
