# Developer entry points. Needs only python3 (3.11+), Java 17+, mvn and Debian's
# PostgreSQL 15 server binaries; see deploy/README.md.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: venv up down demo test bench faults lint

venv: $(STAMP)

# Reinstall only when the package metadata changed since the last install.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,otlp]'
	touch $@

up: venv
	$(BIN)/eventq dev up

down: venv
	$(BIN)/eventq dev down

# The span file goes to the stack's own folder (EVENTQ_STACK_DIR), like the rest of its state.
# `eventq demo` (eventq_dev/, installed with the dev extra) declares its own schema source,
# eventq_dev.demo.schemas: the runtime's registry holds only eventq.ping.v1.
demo: up
	$(BIN)/eventq --log-console demo --trace-file "$${EVENTQ_STACK_DIR:-.eventq}/demo-spans.jsonl"

test: up
	$(BIN)/python -m pytest

bench: up
	$(BIN)/python benchmarks/run.py

# The whole fault matrix (F1-F8 and the outbox rows O1-O4, 20,000 events each, ~13 min) on services of its own;
# the report goes to docs/faults-results.md. SEED=N repeats a run.
faults: venv
	$(BIN)/python -m tests.faults --report docs/faults-results.md $(if $(SEED),--seed $(SEED))

# ruff, then mypy in strict mode over eventq and tests (options in setup.cfg [mypy]);
# seconds, and no stack: .ci/run runs it before the tests.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
