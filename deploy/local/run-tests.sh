#!/usr/bin/env bash
# Lint, then run the whole suite against a private local stack (own state dir and ports),
# stopping by PID whatever it started. Usage: run-tests.sh VENV
set -uo pipefail
venv="$1"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export PATH="$venv/bin:$PATH"
# The venv is shared by every clone of one dependency set, and each bootstrap points its
# editable install at its own clone: this checkout's code comes first for the tests, the
# stack and Ray's workers, whichever clone bootstrapped last.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# A private stack so tests never touch a developer's running demo.
export VLM_STATE_DIR="${VLM_TEST_STATE_DIR:-${TMPDIR:-/tmp}/vlm-stream-test-$$}"
# Every fixed port lies between Ray's worker ports (10002-19999) and Linux's ephemeral range
# (32768-60999): a client's source port can never hold a port a broker restarts on.
# The three-broker fault cluster adds 1000 (and 100 a node), the SASL_SSL broker 2000.
export VLM_KAFKA_PORT="${VLM_TEST_KAFKA_PORT:-21092}" VLM_KAFKA_CONTROLLER_PORT="${VLM_TEST_KAFKA_CONTROLLER_PORT:-21093}"
export VLM_RAY_PORT="${VLM_TEST_RAY_PORT:-21379}" VLM_RAY_METRICS_PORT="${VLM_TEST_RAY_METRICS_PORT:-21080}"
export VLM_PROMETHEUS_PORT="${VLM_TEST_PROMETHEUS_PORT:-21090}" VLM_INGEST_METRICS_PORT="${VLM_TEST_INGEST_METRICS_PORT:-21100}"
export VLM_VIEW_PORT="${VLM_TEST_VIEW_PORT:-21000}" VLM_LABELSTUDIO_PORT="${VLM_TEST_LABELSTUDIO_PORT:-21091}"

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
report="${TMPDIR:-/tmp}/vlm-stream-pytest-$$.log"
cleanup() { echo "== stopping test stack"; vlm local down >/dev/null 2>&1 || true; rm -rf "$VLM_STATE_DIR" "$report"; }
trap cleanup EXIT
vlm local up || exit 1

echo "== pytest"
python -m pytest -ra -q --durations=25 "${PYTEST_ARGS[@]:-tests}" 2>&1 | tee "$report"
rc=${PIPESTATUS[0]}
# A failure's captured logs can be long; repeat the verdicts so they end the output.
if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then
    echo "== failed or errored (from the summary above)"
    grep -E '^(FAILED|ERROR) ' "$report" | cut -c1-400
    tail -n 1 "$report"
fi
if [ $rc -eq 5 ]; then echo "pytest collected no tests: failing"; rc=1; fi
exit $rc
