#!/usr/bin/env bash
# Every check that CI runs, in order, stopping at the first failure:
# setup, buf lint, generated code up to date, ruff, ruff format, mypy,
# hadolint, redocly lint of the OpenAPI document, pytest. Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -k leases -x
# pytest runs in KEYTURN_TEST_PROCESSES processes (pytest-xdist, default 2: most
# tests wait on servers and databases, so two share two cores well; 0: in this
# process, as plain pytest does).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="$root/.venv"
step() { printf '\n===== %s =====\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

step "setup"
bash scripts/setup.sh --for-tests

step "buf lint"
./node_modules/.bin/buf lint || fail "buf lint"

step "generated code is up to date (scripts/generate.sh)"
bash scripts/generate.sh || fail "scripts/generate.sh"
generated=(clients/python/src clients/typescript/src/gen service/keyturn/server/api/proto_comments.json)
changes="$(git status --porcelain -- "${generated[@]}")"
if [ -n "$changes" ]; then
  printf '%s\n' "$changes"
  git --no-pager diff -- "${generated[@]}"
  fail "generated code (${generated[*]}) differs from proto/: run scripts/generate.sh and commit the result"
fi
echo "generated code is up to date"

step "ruff check"
"$venv/bin/ruff" check . || fail "ruff check"

step "ruff format --check"
"$venv/bin/ruff" format --check . || fail "ruff format --check (run: .venv/bin/ruff format .)"

step "mypy"
"$venv/bin/mypy" || fail "mypy"

step "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile || fail "hadolint Dockerfile"

step "redocly lint of the OpenAPI document (keyturn openapi)"
openapi="$(mktemp --suffix=.json)"
"$venv/bin/keyturn" openapi --output "$openapi" || fail "keyturn openapi"
REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
  ./node_modules/.bin/redocly lint --config redocly.yaml --format=summary "$openapi" \
  || fail "redocly lint (rules: redocly.yaml)"
rm -f "$openapi"

step "pytest"
rc=0
processes="${KEYTURN_TEST_PROCESSES:-2}"
"$venv/bin/pytest" -n "$processes" --dist loadfile "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  fail "pytest collected no tests (exit code 5); a run that tests nothing is a failure"
elif [ "$rc" -ne 0 ]; then
  fail "pytest (exit code $rc)"
fi

step "all checks passed"
