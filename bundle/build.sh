#!/bin/sh
# Build the self-contained imds-shim into OUT/imds-shim (PyInstaller one-folder mode).
#
# Run it where the bundle's glibc floor is: a Debian bullseye root (glibc 2.31, python3 3.9) with
# python3-venv and binutils. `make bundle` runs it in such a root by chroot; the builder stage of
# examples/any-image/Dockerfile runs it as it is.
#
#   bundle/build.sh OUT                 build (needs PyPI, or PIP_ARGS pointing at wheels)
#   bundle/build.sh --download DIR      fetch into DIR the wheels an offline build needs
#
#   IMDS_SHIM  what pip installs: this source tree by default, or e.g. "imds-shim" from wheels
#   PIP_ARGS   extra pip arguments, e.g. "--no-index --find-links /src/wheels" to build offline
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
pip="$work/venv/bin/pip --quiet --disable-pip-version-check --no-cache-dir"
# The venv's own pip is bullseye's 20.3, which predates the metadata current wheels carry.
$pip install ${PIP_ARGS:-} --upgrade pip

if [ "$1" = --download ]; then
    $pip download ${PIP_ARGS:-} -d "$2" pip -r "$here/requirements.txt" "${IMDS_SHIM:-$here/..}"
    exit 0
fi

out=$1
$pip install ${PIP_ARGS:-} -r "$here/requirements.txt" "${IMDS_SHIM:-$here/..}"
"$work/venv/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$out" \
    --workpath "$work/build" "$here/imds-shim.spec"
# A smoke run through the simulator, with one failed answer, so that the retry path's lazy
# imports (tenacity) are exercised too: a module the analysis missed fails the build here.
"$out/imds-shim/imds-shim" simulate --fail-first 1 -- "$out/imds-shim/imds-shim" -- true
