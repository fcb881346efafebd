#!/usr/bin/env bash
# Regenerates the Python code of proto/ into clients/python/src (messages,
# gRPC stubs and their .pyi type stubs), the TypeScript messages and service
# descriptors of the SDK into clients/typescript/src/gen (buf with the local
# protoc-gen-es: clients/typescript/buf.gen.yaml), and the proto comments that the
# OpenAPI document is described with (service/keyturn/server/api/proto_comments.json:
# the compiled modules lack them). Run from anywhere; needs what scripts/setup.sh
# installs (the dev venv with grpcio-tools, mypy-protobuf and the server; buf and
# protoc-gen-es in node_modules).
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
# The TypeScript SDK's code, by the protoc-gen-es of its own node_modules (its
# package-lock pins it); the template's `clean` removes what the last run made.
cd "$root"
plugin="$root/clients/typescript/node_modules/.bin/protoc-gen-es"
[ -x "$plugin" ] || { echo "generate.sh: $plugin missing: run scripts/setup.sh" >&2; exit 1; }
"$root/node_modules/.bin/buf" generate --template clients/typescript/buf.gen.yaml
