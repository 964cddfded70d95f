# Two commands for newcomers: `make demo` and `make test`. Both make their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench bundle test-bundle

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
# With a bundle in dist/ (make bundle), its rows are measured in the same run.
BUNDLE_TARBALL = $(lastword $(sort $(wildcard dist/imds-shim-*-linux-*.tar.gz)))
bench:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet . boto3
	$(if $(BUNDLE_TARBALL),rm -rf build/bench-bundle && mkdir -p build/bench-bundle \
		&& tar -xzf $(BUNDLE_TARBALL) -C build/bench-bundle)
	.venv-bench/bin/python bench/run.py \
		$(if $(BUNDLE_TARBALL),--other bundle=build/bench-bundle/imds-shim/imds-shim) $(BENCH_ARGS)

# The self-contained imds-shim for images without Python (see README, "In an image without Python").
# Needs root and debootstrap; builds in a Debian bullseye root so that it runs on glibc >= 2.31.
bundle:
	PYTHON=$(PYTHON) scripts/make-bundle

# The behaviour suites once more, against the bundle instead of the pip-installed shim.
BUNDLE_SUITES := tests/test_exec.py tests/test_imds.py tests/test_verbs.py tests/test_step_aside.py \
	tests/test_redaction.py tests/test_cli.py tests/test_bad_input.py tests/test_third_party.py \
	tests/test_bundle.py tests/e2e/test_netns.py
test-bundle: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	tarball=$$(PYTHON=$(BIN)/python scripts/make-bundle) && rm -rf build/under-test \
	&& mkdir -p build/under-test && tar -xzf "$$tarball" -C build/under-test \
	&& SHIM_UNDER_TEST=build/under-test/imds-shim/imds-shim BUNDLE_TARBALL="$$tarball" \
		$(BIN)/python -m pytest $(BUNDLE_SUITES) $(PYTEST_ARGS)
