# Shared by scripts/setup.sh and scripts/serve.sh (sourced, not run): messages,
# the Python version check and making a venv. Python 3.11+ is the one rule both
# scripts hold the interpreter to.
# shellcheck shell=bash

say() { printf '==> %s\n' "$*"; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

min_version_check='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'

# ensure_venv PYTHON VENV: VENV holds a venv of Python 3.11+ (made with PYTHON if
# it does not); prints whether it was reused or created.
ensure_venv() {
  local python="$1" venv="$2"
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
}
