# Two commands: `make demo` runs the main job end to end, `make test` passes the tests.
# Both bootstrap what they need (Debian packages, a venv outside the clone, Kafka jars).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV_FILE := .venv-path

.PHONY: help bootstrap demo test lint unit integration down clean

help:
	@echo "make demo   - start local Kafka + Ray and run the pipeline demo"
	@echo "make test   - lint, unit and integration tests against real Kafka/Ray/Prometheus"
	@echo "make down   - stop the local stack"

bootstrap:
	@bash deploy/local/bootstrap.sh > $(VENV_FILE)

demo: bootstrap
	@V=$$(cat $(VENV_FILE)); PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $$V/bin/vlm demo

test: bootstrap
	@bash deploy/local/run-tests.sh "$$(cat $(VENV_FILE))"

lint: bootstrap
	@V=$$(cat $(VENV_FILE)); $$V/bin/ruff check .

down: bootstrap
	@V=$$(cat $(VENV_FILE)); $$V/bin/vlm local down

clean: down
	rm -f $(VENV_FILE)
