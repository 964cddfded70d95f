# Two commands for newcomers: `make demo` and `make test`. Both make their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Install imds-shim and run the whole flow against the built-in IMDS simulator (no EC2 needed).
demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet .
	$(BIN)/imds-shim simulate -- $(BIN)/imds-shim -v -- sh -c 'env | grep "^AWS_" | sort'

# Install the test dependencies and run the whole suite (lint and type checks included).
test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Start-up benchmark, side by side (see README, "Performance"). BENCH_ARGS=--rounds 3 for a smoke run.
bench:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet . boto3
	.venv-bench/bin/python bench/run.py $(BENCH_ARGS)
