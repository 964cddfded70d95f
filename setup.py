"""The build's version (scripts/version.py), stamped into the shim/__init__.py that a wheel or an
sdist carries: the installed shim reads a literal at start-up, never its package metadata or git.
Everything else about the package is in pyproject.toml."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("imds_shim_build_version", HERE / "scripts" / "version.py")
assert _spec is not None
assert _spec.loader is not None
_version = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_version)
VERSION = _version.build_version(HERE)
VERSION_LINE = re.compile(r'^__version__ = ".*"$', re.MULTILINE)


def stamp(init: Path) -> None:
    """Write VERSION into a copy of shim/__init__.py (a new file: sdist hard-links the original)."""
    text, count = VERSION_LINE.subn(f'__version__ = "{VERSION}"', init.read_text(encoding="utf-8"))
    if count != 1:
        raise RuntimeError(f"{init}: expected one __version__ line, found {count}")
    init.unlink()
    init.write_text(text, encoding="utf-8")


class StampedBuildPy(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install runs the tree itself: it says "unbuilt"
            stamp(Path(self.build_lib) / "shim" / "__init__.py")


class StampedSdist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        stamp(Path(base_dir) / "shim" / "__init__.py")


setup(version=VERSION, cmdclass={"build_py": StampedBuildPy, "sdist": StampedSdist})
