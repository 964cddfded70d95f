"""An OCI image layout of imds-shim's image, made from the release's bundles, byte for byte the same
every time: one image index naming one image per architecture, each FROM scratch with only
/opt/imds-shim. make publish copies it to a registry with skopeo (scripts/make-publish).

    python3 scripts/oci-layout.py OUT TAG VERSION REVISION SOURCE BUNDLE.tar.gz...

Prints the index's digest. Standard library only. Why not an engine's build: a build stamps the
time it ran into each image's config, so two builds of the same bundles would push two digests.
Here every timestamp is the bundle's own (its entries' mtime, the commit's time), every file is
written in one order with fixed owners, and gzip stores no name or time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# From the tarball's name (imds-shim-VERSION-linux-MACHINE.tar.gz) to the OCI platform.
PLATFORMS = {
    "x86_64": {"architecture": "amd64", "os": "linux"},
    "aarch64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
}
ENTRYPOINT = "/opt/imds-shim/imds-shim"


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Blobs:
    """blobs/sha256/ of the layout: each blob written once, under its digest."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "blobs" / "sha256"
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, media_type: str, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.folder / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def layer_of(bundle: Path) -> tuple[bytes, int]:
    """The bundle's imds-shim/ as opt/imds-shim/ in an uncompressed layer, and its entries' time."""
    out = io.BytesIO()
    with (
        tarfile.open(bundle, "r:gz") as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as layer,
    ):
        members = source.getmembers()
        epoch = int(max(member.mtime for member in members))
        opt = tarfile.TarInfo("opt")
        opt.type, opt.mode, opt.mtime = tarfile.DIRTYPE, 0o755, epoch
        layer.addfile(opt)
        for member in members:
            if not member.name.startswith("imds-shim"):
                raise ValueError(f"{bundle}: {member.name} is outside imds-shim/")
            copied = tarfile.TarInfo(f"opt/{member.name}")
            copied.type, copied.mode, copied.mtime = member.type, member.mode, member.mtime
            copied.size, copied.linkname = member.size, member.linkname
            layer.addfile(copied, source.extractfile(member) if member.isfile() else None)
    return out.getvalue(), epoch


def image(blobs: Blobs, bundle: Path, labels: dict[str, str]) -> dict[str, Any]:
    """One architecture's image: its layer, config and manifest; the index's entry for it."""
    machine = bundle.name.rsplit("-linux-", 1)[1].removesuffix(".tar.gz")
    platform = PLATFORMS[machine]
    tar, epoch = layer_of(bundle)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as gz:
        gz.write(tar)
    layer = blobs.add(LAYER, compressed.getvalue())
    created = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = blobs.add(
        CONFIG,
        canonical(
            {
                **platform,
                "created": created,
                "config": {"Entrypoint": [ENTRYPOINT], "Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
                "history": [{"created": created, "created_by": "COPY imds-shim /opt/imds-shim"}],
            }
        ),
    )
    manifest = blobs.add(
        MANIFEST, canonical({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]})
    )
    return {**manifest, "platform": platform}


def main(argv: list[str]) -> int:
    if len(argv) < 7:
        print("usage: oci-layout.py OUT TAG VERSION REVISION SOURCE BUNDLE.tar.gz...", file=sys.stderr)
        return 2
    out, tag, version, revision, source = Path(argv[1]), *argv[2:6]
    labels = {
        "org.opencontainers.image.title": "imds-shim",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.description": "COPY --from=THIS /opt/imds-shim /opt/imds-shim",
        "io.github.imds-shim.signature": "SHA256SUMS.minisig",
    }
    blobs = Blobs(out)
    manifests = [image(blobs, Path(bundle), labels) for bundle in sorted(argv[6:])]
    index = blobs.add(
        INDEX,
        canonical(
            {
                "schemaVersion": 2,
                "mediaType": INDEX,
                "manifests": manifests,
                "annotations": {
                    key: value for key, value in labels.items() if key.startswith("org.opencontainers")
                },
            }
        ),
    )
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    top = {**index, "annotations": {"org.opencontainers.image.ref.name": tag}}
    (out / "index.json").write_bytes(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [top]}))
    print(index["digest"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
