#!/usr/bin/env bash
# Lint, then run the whole suite against a private local stack (own state dir and ports),
# stopping by PID whatever it started. Usage: run-tests.sh VENV
set -uo pipefail
venv="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export PATH="$venv/bin:$PATH"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# A private stack so tests never touch a developer's running demo.
export VLM_STATE_DIR="${VLM_TEST_STATE_DIR:-${TMPDIR:-/tmp}/vlm-stream-test-$$}"
export VLM_KAFKA_PORT="${VLM_KAFKA_PORT:-39092}" VLM_KAFKA_CONTROLLER_PORT="${VLM_KAFKA_CONTROLLER_PORT:-39093}"
export VLM_RAY_PORT="${VLM_RAY_PORT:-36379}" VLM_RAY_METRICS_PORT="${VLM_RAY_METRICS_PORT:-38080}"
export VLM_PROMETHEUS_PORT="${VLM_PROMETHEUS_PORT:-39090}" VLM_INGEST_METRICS_PORT="${VLM_INGEST_METRICS_PORT:-39100}"
export VLM_VIEW_PORT="${VLM_VIEW_PORT:-39000}" VLM_LABELSTUDIO_PORT="${VLM_LABELSTUDIO_PORT:-39091}"

echo "== ruff"
ruff check . || exit 1

echo "== import-linter (vlm_core imports no services, Ray, Kafka client, typer or rich; no cycles)"
lint-imports || exit 1

echo "== mypy (strict) on vlm_core"
mypy || exit 1

echo "== deployment tools (helm, hadolint)"
tools="$(bash deploy/local/install-tools.sh "$venv/bin/python")" || exit 1
export PATH="$tools:$PATH"

echo "== starting test stack in $VLM_STATE_DIR"
cleanup() { echo "== stopping test stack"; vlm local down >/dev/null 2>&1 || true; rm -rf "$VLM_STATE_DIR"; }
trap cleanup EXIT
vlm local up || exit 1

echo "== pytest"
python -m pytest -ra -q --durations=25 "${PYTEST_ARGS[@]:-tests}"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; rc=1; fi
exit $rc
