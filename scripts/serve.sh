#!/usr/bin/env bash
# Quick start: set up the environment, then run the server on the embedded
# SQLite database (./keyturn.db) with the example catalog loaded.
# Extra arguments go to `keyturn serve` (e.g. --listen 0.0.0.0:50051).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
keyturn migrate
keyturn catalog apply examples/catalog.yaml
exec keyturn serve "$@"
