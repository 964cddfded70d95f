"""The bundle's CycloneDX SBOM, from the build's own facts: bundle/build.sh runs it in the build root.

    python3 sbom.py BUNDLE PIP_REPORT LAUNCHER_SOURCE > BUNDLE/sbom.cdx.json

Every file in BUNDLE is traced to where it came from, and the SBOM lists those origins:

- a Debian package, through the root's dpkg file lists and status (the C library and loader in
  lib/, libpython, the extension modules and the standard library's .pyc in _internal/);
- a Python distribution that pip installed, through pip's ``--report`` and the distribution's
  RECORD (imds-shim itself, requests and the others);
- CPython, whose version the running interpreter reports (it is the one frozen);
- PyInstaller's bootloader (imds-shim-python) and the launcher (imds-shim).

A file that traces to none of them stops the build: the SBOM never leaves a shipped file out.
Timestamps come from SOURCE_DATE_EPOCH, so that two builds of one commit give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import sysconfig
import time
import uuid
import zipfile
from importlib.metadata import distribution
from pathlib import Path

DPKG = Path("/var/lib/dpkg")
# Made by the build itself, not copied from anywhere: the SBOM. (PyInstaller's base_library.zip
# is traced member by member below; the launcher and bootloader are components of their own.)
MADE_HERE = {"sbom.cdx.json"}


def dpkg_owners() -> dict[str, str]:
    """Every file a Debian package installed, by its resolved path, to the package's name."""
    owners: dict[str, str] = {}
    for listing in sorted((DPKG / "info").glob("*.list")):
        package = listing.stem.split(":")[0]
        for line in listing.read_text().splitlines():
            if line and os.path.isfile(line) and not os.path.islink(line):
                owners.setdefault(os.path.realpath(line), package)
    return owners


def dpkg_versions() -> dict[str, tuple[str, str, str]]:
    """Installed Debian packages: name to (version, architecture, source package)."""
    packages = {}
    for stanza in (DPKG / "status").read_text().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Status", "").endswith(" installed"):
            source = fields.get("Source", fields["Package"]).split(" ")[0]
            packages[fields["Package"]] = (fields["Version"], fields["Architecture"], source)
    return packages


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SIGNATURE = "SHA256SUMS.minisig"  # what scripts/sign-sums writes beside SHA256SUMS
STATIC_LIBC = "musl-dev"  # the package whose libc.a bundle/build.sh links the launcher with


def main(bundle: Path, pip_report: Path, launcher_source: Path) -> None:
    owners = dpkg_owners()
    installed = {
        item["metadata"]["name"]: item["metadata"]["version"]
        for item in json.loads(pip_report.read_text())["install"]
    }
    # Where each installed distribution's files live, relative to site-packages, and whose they are.
    site = Path(sysconfig.get_paths()["purelib"])  # run by the build venv's python: its site-packages
    by_record = {}
    for name in installed:
        for file in distribution(name).files or []:
            by_record[str(file)] = name
    stdlib = Path(sysconfig.get_paths()["stdlib"])  # in a venv, "platstdlib" is the venv's
    dynload = Path(sysconfig.get_config_var("DESTSHARED"))  # the extension modules
    lib_dirs = [Path("/usr/lib") / sysconfig.get_config_var("MULTIARCH"), Path("/usr/lib")]

    debs: set[str] = set()
    pythons: set[str] = set()
    unknown: list[str] = []

    def trace_module(relative: str) -> bool:
        """A module file (.pyc) as bundled, to its source: site-packages first, then stdlib."""
        source = relative[: -len(".pyc")] + ".py" if relative.endswith(".pyc") else relative
        for candidate in (source, relative, source[: -len(".py")] + "/__init__.py"):
            if candidate in by_record and (site / candidate).exists():
                pythons.add(by_record[candidate])
                return True
        for candidate in (stdlib / source, stdlib / relative):
            if str(candidate.resolve()) in owners:
                debs.add(owners[str(candidate.resolve())])
                return True
        return False

    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        relative = path.relative_to(bundle).as_posix()
        if relative in MADE_HERE or relative in ("imds-shim", "imds-shim-python"):
            continue
        inside = relative.split("/", 1)[1] if "/" in relative else relative
        if path.name.endswith(".zip"):  # PyInstaller's base_library.zip: stdlib start-up modules
            with zipfile.ZipFile(path) as archive:
                unknown += [f"{relative}:{m}" for m in archive.namelist() if not trace_module(m)]
            continue
        if trace_module(inside):
            continue
        # A shared library: by its name in the library folders (PyInstaller and build.sh copy
        # them by name), or an extension module in lib-dynload.
        candidates = [d / path.name for d in lib_dirs] + [dynload / path.name]
        owner = next((owners[str(c.resolve())] for c in candidates if str(c.resolve()) in owners), None)
        if owner is None and ".dist-info/" in relative:
            folder = relative.split("/")[1]
            owner_name = next((n for f, n in by_record.items() if f.startswith(folder + "/")), None)
            if owner_name:
                pythons.add(owner_name)
                continue
        if owner is None:
            unknown.append(relative)
        else:
            debs.add(owner)
    if unknown:
        sys.exit(f"sbom: cannot tell where these bundled files come from: {', '.join(unknown[:20])}")

    versions = dpkg_versions()
    distro = "debian-" + Path("/etc/debian_version").read_text().strip().split(".")[0]
    # The launcher carries musl's libc.a inside it: a scanner must know of that C library too.
    debs.add(STATIC_LIBC)
    glibc_first = sorted(debs, key=lambda name: (name != "libc6", name))
    components = []
    for name in glibc_first:
        version, arch, source = versions[name]
        component = {
            "type": "library",
            "bom-ref": f"deb:{name}",
            "name": name,
            "version": version,
            "purl": f"pkg:deb/debian/{name}@{version}?arch={arch}&distro={distro}",
        }
        if source != name:
            component["properties"] = [{"name": "debian:source", "value": source}]
        components.append(component)
    components.append(
        {
            "type": "framework",
            "bom-ref": "cpython",
            "name": "cpython",
            "version": platform.python_version(),
            "purl": f"pkg:generic/cpython@{platform.python_version()}",
            "description": "The Python interpreter frozen into the bundle (from Debian's libpython).",
        }
    )
    for name in sorted(pythons, key=str.lower):
        version = installed[name]
        components.append(
            {
                "type": "library",
                "bom-ref": f"pypi:{name}",
                "name": name,
                "version": version,
                "purl": f"pkg:pypi/{name.lower()}@{version}",
            }
        )
    bootloader = installed.get("pyinstaller") or installed["PyInstaller"]
    own_version = installed["imds-shim"]
    components += [
        {
            "type": "application",
            "bom-ref": "pyinstaller-bootloader",
            "name": "pyinstaller-bootloader",
            "version": bootloader,
            "purl": f"pkg:pypi/pyinstaller@{bootloader}",
            "description": "PyInstaller's bootloader, shipped as imds-shim-python.",
            "hashes": [{"alg": "SHA-256", "content": sha256(bundle / "imds-shim-python")}],
        },
        {
            "type": "application",
            "bom-ref": "imds-shim-launcher",
            "name": "imds-shim-launcher",
            "version": own_version,
            "purl": f"pkg:generic/imds-shim-launcher@{own_version}",
            "description": f"The static entrypoint imds-shim, from {launcher_source.name}, "
            f"linked with musl {versions[STATIC_LIBC][0]} (Debian {STATIC_LIBC}).",
            "hashes": [{"alg": "SHA-256", "content": sha256(bundle / "imds-shim")}],
        },
    ]
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    machine = platform.machine()
    serial_name = f"imds-shim/{own_version}/{machine}/{epoch}"
    sbom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        # The same build gives the same serial number: reproducible, yet unique per release.
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, serial_name)}",
        "version": 1,
        "metadata": {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
            "tools": {"components": [{"type": "application", "name": "imds-shim bundle/sbom.py"}]},
            "component": {
                "type": "application",
                "bom-ref": "imds-shim-bundle",
                "name": "imds-shim",
                "version": own_version,
                "purl": f"pkg:generic/imds-shim@{own_version}?arch={machine}",
                "description": "The self-contained imds-shim for images without Python.",
                # Published beside the bundle: SHA256SUMS lists its hash, and the minisign
                # signature of SHA256SUMS says who made it (README, "Verifying a release").
                "externalReferences": [
                    {"type": "distribution", "url": "SHA256SUMS", "comment": "the release's SHA-256 sums"},
                    {"type": "other", "url": SIGNATURE, "comment": "minisign signature of SHA256SUMS"},
                ],
            },
        },
        "components": components,
        "dependencies": [
            {"ref": "imds-shim-bundle", "dependsOn": [c["bom-ref"] for c in components]},
        ],
    }
    json.dump(sbom, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: sbom.py BUNDLE PIP_REPORT LAUNCHER_SOURCE > BUNDLE/sbom.cdx.json")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
