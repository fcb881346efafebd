#!/usr/bin/env bash
# Sets up the development environment at the repo root (the server alone, without
# these tools, is scripts/serve.sh's): the Python venv
# (.venv, with keyturn-client and keyturn[dev] installed editable), the buf
# and Redocly (OpenAPI lint) CLIs from package-lock.json (./node_modules/.bin), and
# the TypeScript SDK's packages from its own lock (clients/typescript: npm ci, whose
# `prepare` compiles it with tsc into clients/typescript/dist).
# Idempotent; run from anywhere. PYTHON picks the interpreter that creates the venv (default python3).
# With --for-tests it also installs the Debian packages the tests run
# (pgbouncer; faketime, which sets a server clock ahead in a test; curl, which runs the
# README's HTTP walk-through; chromium and chromium-driver, the headless browser the
# console's tests drive with selenium), with apt-get, when they are missing.
set -euo pipefail
for_tests=false
[ "${1:-}" = "--for-tests" ] && for_tests=true

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=scripts/lib/venv.sh
source "$root/scripts/lib/venv.sh"

venv="$root/.venv"
ensure_venv "${PYTHON:-python3}" "$venv"

export PIP_DISABLE_PIP_VERSION_CHECK=1
say "pip: upgrading pip"
"$venv/bin/python" -m pip install --quiet --upgrade pip
say "pip: installing clients/python and .[dev] (editable)"
"$venv/bin/python" -m pip install --quiet -e clients/python -e ".[dev]"

command -v npm >/dev/null 2>&1 \
  || die "npm not found; it installs the buf CLI (Debian: apt-get install nodejs npm)"
say "npm: installing the buf and redocly CLIs (npm ci)"
npm ci --no-audit --no-fund --loglevel=error
for tool in buf redocly; do
  [ -x "$root/node_modules/.bin/$tool" ] || die "npm ci did not install node_modules/.bin/$tool"
done
say "npm: installing and compiling the TypeScript SDK (clients/typescript: npm ci)"
(cd "$root/clients/typescript" && npm ci --no-audit --no-fund --loglevel=error)
[ -f "$root/clients/typescript/dist/src/index.js" ] \
  || die "npm ci in clients/typescript did not compile dist/src/index.js"

if $for_tests; then
  missing=()
  for package in pgbouncer faketime curl chromium chromium-driver; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 \
      || die "the tests need the Debian packages: ${missing[*]} (no apt-get here)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    say "apt-get: installing ${missing[*]} (for the tests)"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
      || { $sudo apt-get update -q >/dev/null && \
           $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
      || die "apt-get could not install ${missing[*]}"
  fi
fi

say "setup done: $("$venv/bin/python" --version 2>&1), buf $("$root/node_modules/.bin/buf" --version)"
