#!/usr/bin/env bash
# Sets up the development environment at the repo root: the Python venv
# (.venv, with keyturn-client and keyturn[dev] installed editable) and the buf
# CLI from package-lock.json (./node_modules/.bin/buf). Idempotent; run from
# anywhere. PYTHON picks the interpreter that creates the venv (default python3).
# With --for-tests it also installs the Debian packages the tests run
# (pgbouncer; faketime, which sets a server clock ahead in a test), with apt-get, when they are missing.
set -euo pipefail
for_tests=false
[ "${1:-}" = "--for-tests" ] && for_tests=true

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

python="${PYTHON:-python3}"
venv="$root/.venv"
min_version_check='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'

command -v "$python" >/dev/null 2>&1 \
  || die "'$python' not found; install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)"
if ! "$python" -c "$min_version_check"; then
  die "Python 3.11 or newer is required, but '$python' is $("$python" -c 'import platform; print(platform.python_version())'); set PYTHON=/path/to/python3.11"
fi

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$min_version_check" 2>/dev/null; then
  say "venv: reusing $venv ($("$venv/bin/python" --version 2>&1))"
else
  say "venv: creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv --clear "$venv" \
    || die "could not create the venv (Debian: apt-get install python3-venv)"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
say "pip: upgrading pip"
"$venv/bin/python" -m pip install --quiet --upgrade pip
say "pip: installing clients/python and .[dev] (editable)"
"$venv/bin/python" -m pip install --quiet -e clients/python -e ".[dev]"

command -v npm >/dev/null 2>&1 \
  || die "npm not found; it installs the buf CLI (Debian: apt-get install nodejs npm)"
say "npm: installing the buf CLI (npm ci)"
npm ci --no-audit --no-fund --loglevel=error
[ -x "$root/node_modules/.bin/buf" ] || die "npm ci did not install node_modules/.bin/buf"

if $for_tests; then
  missing=()
  for package in pgbouncer faketime; do
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
