"""Whether the machine itself says it is an EC2 instance: its DMI facts, read as cloud-init's
``ds-identify`` reads them, so that a verdict about IMDS rests on evidence, not on one timeout.

Nitro instances say ``Amazon EC2`` in ``sys_vendor``; Xen instances say ``Xen`` there, with
``amazon`` in ``bios_version`` and (readable by root only) a ``product_uuid`` starting ``ec2``.
Docker and Kubernetes mount sysfs read-only, so the world-readable files are there in containers
too. Read only once a connection to IMDS has failed: a healthy start never looks.
"""

from __future__ import annotations

import os

EC2, ANOTHER, UNKNOWN = "ec2", "another", "unknown"
FACTS = ("sys_vendor", "bios_version", "product_uuid")
MAX_FACT_BYTES = 256


def _fact(folder: str, name: str) -> str:
    try:
        with open(os.path.join(folder, name), "rb") as file:
            return file.read(MAX_FACT_BYTES).decode("ascii", "replace").strip()
    except OSError:
        return ""


class Machine:
    """What the DMI facts in ``folder`` say: :data:`EC2`, :data:`ANOTHER` vendor's, or
    :data:`UNKNOWN` (no DMI at all, as on some VMs); ``vendor`` as the machine names it."""

    def __init__(self, folder: str) -> None:
        vendor, bios, uuid = (_fact(folder, name) for name in FACTS)
        self.vendor = "".join(c if c.isprintable() else "?" for c in vendor)[:64]
        if vendor == "Amazon EC2" or "amazon" in bios.lower() or uuid.lower().startswith("ec2"):
            self.says = EC2
        elif vendor or bios:
            self.says = ANOTHER
        else:
            self.says = UNKNOWN

    @property
    def is_ec2(self) -> bool:
        return self.says == EC2

    def describe(self) -> str:
        """The evidence in words, for a verdict's message."""
        if self.says == EC2:
            return "this machine says it is an EC2 instance (DMI)"
        if self.says == ANOTHER:
            return f"this machine's DMI names {self.vendor or 'another vendor'}, not Amazon EC2"
        return "this machine shows no DMI facts"
