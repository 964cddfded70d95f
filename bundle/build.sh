#!/bin/sh
# Build the self-contained imds-shim into OUT/imds-shim: PyInstaller's one-folder mode, plus the
# dynamic loader and C library it runs on, so that the folder needs nothing from the image.
#
#   OUT/imds-shim/imds-shim            the launcher (bundle/launcher.c, static): the entrypoint
#   OUT/imds-shim/imds-shim-python     PyInstaller's bootloader, started by the launcher
#   OUT/imds-shim/_internal/           CPython, the shim, requests, tenacity, their .dist-info
#   OUT/imds-shim/lib/                 ld.so and the C library it needs (glibc), libgcc_s
#   OUT/imds-shim/sbom.cdx.json        CycloneDX SBOM of all of it (bundle/sbom.py)
#
# Run it in a Debian trixie root with python3-venv, libpython3.13, binutils, gcc and libc6-dev:
# `make bundle` runs it in such a root by chroot (under qemu-user for another architecture).
# SOURCE_DATE_EPOCH (make bundle: the commit's time) makes two builds give the same bytes.
#
#   IMDS_SHIM  what pip installs: this source tree by default, or e.g. "imds-shim" from wheels
#   PIP_ARGS   extra pip arguments, e.g. "--no-index --find-links /src/wheels" to build offline
set -eu
usage="usage: bundle/build.sh OUT | bundle/build.sh --download DIR"
if [ $# -eq 0 ] || [ "$1" = -h ] || [ "$1" = --help ] || { [ "$1" = --download ] && [ $# -ne 2 ]; }; then
    echo "$usage" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The same bytes from the same sources: hash seeds fixed, no .pyc timestamps of the moment.
export PYTHONHASHSEED=0 SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"

# pip runs from Debian's own wheel, into a venv made without one, and compiles nothing it installs:
# under qemu-user every Python start and every compiled file costs many times its native price,
# and PyInstaller compiles what it bundles itself.
pip="python3 $(ls /usr/share/python-wheels/pip-*.whl | sort -V | tail -n 1)/pip"
pip="$pip --quiet --disable-pip-version-check --no-cache-dir"

if [ "$1" = --download ]; then
    # pip too: the end-to-end tests' images upgrade theirs from these wheels.
    $pip download ${PIP_ARGS:-} -d "$2" pip -r "$here/requirements.txt" "${IMDS_SHIM:-$here/..}"
    exit 0
fi

out=$1
python3 -m venv --without-pip "$work/venv"
# pip's report names every distribution installed, with its version: the SBOM's Python half.
$pip --python "$work/venv/bin/python" install --no-compile ${PIP_ARGS:-} --report "$work/pip-report.json" \
    -r "$here/requirements.txt" "${IMDS_SHIM:-$here/..}"
"$work/venv/bin/pyinstaller" --noconfirm --log-level WARN --distpath "$out" \
    --workpath "$work/build" "$here/imds-shim.spec"
bundle=$out/imds-shim

# The loader and the C library the frozen Python needs, kept out of _internal: the bootloader
# would put that folder on LD_LIBRARY_PATH, and an image's own loader must never meet this libc.
# Found by asking the loader (ldd) what every bundled binary needs and PyInstaller left out, so the
# list follows the glibc of the root. Plus libgcc_s: glibc dlopens it for pthread_cancel.
loader=$(readelf -l "$bundle/imds-shim-python" | sed -n 's|.*interpreter: \(.*\)]|\1|p')
mkdir -p "$bundle/lib"
cp -L "$loader" "$bundle/lib/"
find "$bundle/imds-shim-python" "$bundle/_internal" -type f \( -name 'imds-shim-python' -o -name '*.so*' \) \
    -exec ldd {} + 2>/dev/null | sed -n 's|.* => \(/[^ ]*\) (0x.*|\1|p' | sort -u |
    while read -r library; do
        name=$(basename "$library")
        if [ ! -e "$bundle/_internal/$name" ] && [ ! -e "$bundle/lib/$name" ]; then
            cp -L "$library" "$bundle/lib/"
        fi
    done
cp -L "$(gcc -print-file-name=libgcc_s.so.1)" "$bundle/lib/"
# Static with musl, not glibc: 680 KB with glibc's static libc, 30 KB with musl's, for a program
# that only sets a few variables and execs. It never loads anything, so the two C libraries meet
# nowhere.
musl-gcc -static -Os -s -Wall -Wextra -Werror -DLOADER="\"$(basename "$loader")\"" \
    -o "$bundle/imds-shim" "$here/launcher.c"

# A smoke run through the simulator, with one failed answer, so that the retry path's lazy
# imports (tenacity) are exercised too: a module the analysis missed fails the build here.
"$bundle/imds-shim" simulate --fail-first 1 -- "$bundle/imds-shim" -- true
"$bundle/imds-shim" simulate -- "$bundle/imds-shim" --serve -- true

# Last, so that it also sees anything the smoke runs left behind.
"$work/venv/bin/python" "$here/sbom.py" "$bundle" "$work/pip-report.json" "$here/launcher.c" >"$work/sbom.cdx.json"
mv "$work/sbom.cdx.json" "$bundle/sbom.cdx.json"
