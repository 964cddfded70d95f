# Two commands for newcomers: `make demo` and `make test`. Both make their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test

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
	$(BIN)/python -m pytest
