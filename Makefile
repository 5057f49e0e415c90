# Developer entry points. Needs only python3 (3.11+), Java 17+, mvn and Debian's
# PostgreSQL 15 server binaries; see deploy/README.md.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BIN := $(VENV)/bin

.PHONY: venv up down demo test bench faults lint test-versions validate-deploy

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

# The unit tests on each of Python 3.12 and 3.13 found (pyenv or PATH; a missing one is skipped),
# each in its own venv under the stack's folder (EVENTQ_STACK_DIR, default .eventq)/venvs; no stack.
# Fails unless .venv, where `make test` runs the whole suite, is on 3.11. See .ci/python-versions.
test-versions: venv
	.ci/python-versions

# The Kubernetes manifests (deploy/kubernetes): rendered with kustomize, checked by kubeconform
# against the Kubernetes and KEDA schemas, and by eventq's own policy checks. Needs only Go:
# the tools and schemas come from the Go module proxy, cached under the stack's folder.
validate-deploy:
	bash deploy/kubernetes/validate.sh
