#!/bin/sh
# Build the self-contained imds-shim into OUT/imds-shim: PyInstaller's one-folder mode, plus the
# dynamic loader and C library it runs on, so that the folder needs nothing from the image.
#
#   OUT/imds-shim/imds-shim            the launcher (bundle/launcher.c, static): the entrypoint
#   OUT/imds-shim/imds-shim-python     PyInstaller's bootloader, started by the launcher
#   OUT/imds-shim/_internal/           Python 3.9, the shim, requests, tenacity
#   OUT/imds-shim/lib/                 ld.so, libc and friends (glibc 2.31), libgcc_s, NSS
#
# Run it in a Debian bullseye root with python3-venv, libpython3.9, binutils, gcc and libc6-dev:
# `make bundle` runs it in such a root by chroot (under qemu-user for another architecture).
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

# The loader and C library the frozen Python was built against, kept out of _internal: the
# bootloader would put that folder on LD_LIBRARY_PATH, and an image's own loader must never meet
# this libc. libgcc_s: glibc loads it for pthread_cancel. NSS: host names in --endpoint.
loader=$(readelf -l "$out/imds-shim/imds-shim-python" | sed -n 's|.*interpreter: \(.*\)]|\1|p')
multiarch=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH"))')
mkdir -p "$out/imds-shim/lib"
for library in "$loader" libc.so.6 libpthread.so.0 libdl.so.2 libm.so.6 libutil.so.1 librt.so.1 \
        libgcc_s.so.1 libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    cp -L "/lib/$multiarch/$(basename "$library")" "$out/imds-shim/lib/"
done
gcc -static -Os -s -Wall -Wextra -Werror -DLOADER="\"$(basename "$loader")\"" \
    -o "$out/imds-shim/imds-shim" "$here/launcher.c"
# A smoke run through the simulator, with one failed answer, so that the retry path's lazy
# imports (tenacity) are exercised too: a module the analysis missed fails the build here.
"$out/imds-shim/imds-shim" simulate --fail-first 1 -- "$out/imds-shim/imds-shim" -- true
"$out/imds-shim/imds-shim" simulate -- "$out/imds-shim/imds-shim" --serve -- true
