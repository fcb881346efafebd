#!/usr/bin/env bash
# Quick start, with nothing but Python 3.11+: installs the server's runtime (the
# service and the client, editable; no npm, no development tools) into its own
# venv, .venv-serve, then runs the server on the embedded SQLite database
# (./keyturn.db) with the example catalog loaded. The installation is done again
# only when a pyproject.toml or the venv's Python changed (a stamp in the venv
# holds their hash); code changes need none, the install being editable.
# Extra arguments go to `keyturn serve` (e.g. --listen 0.0.0.0:50051).
# --install-only: install (or find it up to date) and stop.
# PYTHON picks the interpreter that creates the venv (default python3);
# KEYTURN_SERVE_VENV another folder for it. The development environment, with
# the tools that test and lint, is scripts/setup.sh's (.venv).
set -euo pipefail
install_only=false
if [ "${1:-}" = "--install-only" ]; then
  install_only=true
  shift
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib/venv.sh
source "$root/scripts/lib/venv.sh"

venv="${KEYTURN_SERVE_VENV:-$root/.venv-serve}"
stamp="$venv/.keyturn-runtime"
ensure_venv "${PYTHON:-python3}" "$venv"

# What the installation depends on: both projects' metadata and the interpreter.
wanted="$(cat pyproject.toml clients/python/pyproject.toml <("$venv/bin/python" -VV) \
  | "$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  say "runtime: up to date in $venv (nothing to install)"
else
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  say "pip: installing the runtime into $venv: clients/python and . (editable, no dev tools)"
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --quiet -e clients/python -e .
  printf '%s\n' "$wanted" >"$stamp"
fi

$install_only && exit 0

"$venv/bin/keyturn" migrate
"$venv/bin/keyturn" catalog apply examples/catalog.yaml
exec "$venv/bin/keyturn" serve "$@"
