# Sourced by scripts/make-bundle, make-image and make-release, from the project's top folder: the
# facts every build script needs, said once.

# The version being built (scripts/version.py: X.Y.Z on a release commit, else X.Y.Z+1.devN+gSHA).
imds_shim_version() {
    "${PYTHON:-python3}" scripts/version.py
}

# The same, as an image tag can hold it ('-' for '+').
imds_shim_image_tag() {
    "${PYTHON:-python3}" scripts/version.py --image-tag
}

# An architecture as Debian names it (amd64, arm64), from either naming; fails for any other.
debian_arch() {
    case "$1" in
        amd64 | x86_64) echo amd64 ;;
        arm64 | aarch64) echo arm64 ;;
        *) return 1 ;;
    esac
}

# An architecture as the kernel and the tarballs name it (x86_64, aarch64).
machine_name() {
    case "$(debian_arch "$1")" in
        amd64) echo x86_64 ;;
        arm64) echo aarch64 ;;
    esac
}

# This machine's, from uname: not every Linux has dpkg.
native_arch=$(debian_arch "$(uname -m)")

# The CPU qemu-user emulates for another architecture's programs (it reads QEMU_CPU; an exported
# one wins). Its default, "max", implements arm64 pointer authentication by computing the QARMA
# cipher at every signed return, and trixie builds everything with branch protection: CPython 3.13
# in the arm64 root started in 2.0 s, and in 0.6 s without it (the builds and the emulated suites
# with it). Without pointer authentication those instructions are the NOPs every ARMv8.0 CPU runs,
# so only the emulator's speed changes, never what is built or tested.
emulated_cpu() {
    echo "${QEMU_CPU:-max,pauth=off}"
}

# The commit's time, for reproducible builds (https://reproducible-builds.org/docs/source-date-epoch/);
# an exported SOURCE_DATE_EPOCH wins, and a tree without git history builds at the epoch.
source_date_epoch() {
    echo "${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
}

# The commit being built (with -dirty when the tree has uncommitted changes), for OCI labels.
source_revision() {
    local revision
    revision=$(git rev-parse HEAD 2>/dev/null) || { echo unknown; return; }
    if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        revision=$revision-dirty
    fi
    echo "$revision"
}

# Where the sources live: IMDS_SHIM_SOURCE_URL if set, else the clone's origin, else this folder.
source_url() {
    echo "${IMDS_SHIM_SOURCE_URL:-$(git remote get-url origin 2>/dev/null || echo "file://$PWD")}"
}
