#!/usr/bin/env bash
# Regenerates the Python code of proto/ into clients/python/src (messages,
# gRPC stubs and their .pyi type stubs), and the proto comments that the OpenAPI
# document is described with (service/keyturn/server/api/proto_comments.json: the
# compiled modules lack them). Run from anywhere; needs the dev venv (grpcio-tools,
# mypy-protobuf and the server installed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out="$root/clients/python/src"
cd "$root/proto"
mapfile -t protos < <(find keyturn -name '*.proto' | sort)
# Remove what the last run made, so that a deleted proto leaves nothing behind.
find "$out/keyturn/errors" "$out/keyturn/fulfillment" "$out/keyturn/licensing" \
  \( -name '*_pb2*.py' -o -name '*_pb2*.pyi' \) -delete 2>/dev/null || true
PATH="$(dirname "$python"):$PATH" "$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --mypy_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  "${protos[@]}" 2> >(grep -v '^Writing mypy to' >&2)
# Regular packages below the PEP 420 namespace `keyturn` (no keyturn/__init__.py).
for proto in "${protos[@]}"; do
  dir="$(dirname "$proto")"
  while [ "$dir" != "keyturn" ]; do
    touch "$out/$dir/__init__.py"
    dir="$(dirname "$dir")"
  done
done
# The comments, from protoc's source info (see api/proto_comments.py).
descriptors="$(mktemp)"
trap 'rm -f "$descriptors"' EXIT
"$python" -m grpc_tools.protoc -I . --include_source_info \
  --descriptor_set_out="$descriptors" "${protos[@]}"
"$python" -m keyturn.server.api.proto_comments "$descriptors" \
  "$root/service/keyturn/server/api/proto_comments.json"
