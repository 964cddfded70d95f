"""The version a build of this tree is, as a PEP 440 string; standard library only.

    python3 scripts/version.py         prints it (make, the build scripts, the release workflow)
    setup.py                           stamps it into the wheel's and the sdist's shim/__init__.py

The version is a function of the commit alone, so a clone with tags and one without agree:

- The release commit, the one that adds the heading ``## [X.Y.Z] - DATE`` to CHANGELOG.md, builds
  ``X.Y.Z``. A tag ``vX.Y.Z`` is a check, not a source: a tag on any other commit is an error.
- Any later commit builds ``X.Y.(Z+1).devN+gSHA``: N commits after the release, at commit SHA
  (12 hex digits). It sorts before the next release and names the commit it was built from.
- Uncommitted changes to tracked files add ``.dirty`` (and make even the release commit a dev
  build): no commit can reproduce those bytes.
- An sdist, which has no git history, carries its version in PKG-INFO.

A shallow clone whose history stops before the release cannot count the commits since, and a
tree with neither history nor PKG-INFO cannot name its commit: both are errors that say so,
never a guess.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE_HEADING = re.compile(r"^## \[(\d+)\.(\d+)\.(\d+)\] - \d{4}-\d{2}-\d{2}$", re.MULTILINE)


class VersionError(Exception):
    """This tree cannot say which build it is; the message says why and what to do."""


def _git(root: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False, timeout=60
    )
    if completed.returncode != 0:
        raise VersionError(f"git {' '.join(args)}: {completed.stderr.strip()}")
    return completed.stdout.strip()


def _is_git_checkout(root: Path) -> bool:
    """Whether root is the top of a git work tree (an unpacked sdist inside another checkout is not)."""
    try:
        return Path(_git(root, "rev-parse", "--show-toplevel")).resolve() == root.resolve()
    except (VersionError, OSError):
        return False


def latest_release(changelog: str) -> tuple[int, int, int] | None:
    """The newest released version in CHANGELOG.md's text: its first dated heading."""
    found = RELEASE_HEADING.search(changelog)
    return (int(found[1]), int(found[2]), int(found[3])) if found else None


def _from_pkg_info(root: Path) -> str:
    pkg_info = root / "PKG-INFO"
    if pkg_info.is_file():
        for line in pkg_info.read_text(encoding="utf-8").splitlines():
            if line.startswith("Version: "):
                return line[len("Version: ") :]
    raise VersionError(
        f"{root} has neither git history nor an sdist's PKG-INFO, so no build of it can say which commit "
        "it is: build from a git clone (git clone, not a downloaded archive) or from the release's sdist"
    )


def build_version(root: Path = ROOT) -> str:
    """The version a build of the tree at root is (see the module's docstring)."""
    if not _is_git_checkout(root):
        return _from_pkg_info(root)
    # The committed CHANGELOG: a heading being written is not a release until its commit.
    release = latest_release(_git(root, "show", "HEAD:CHANGELOG.md"))
    head = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no") != ""
    if release is None:
        released_at, next_release = None, "0.0.1"
    else:
        major, minor, patch = release
        heading = f"## [{major}.{minor}.{patch}] - "
        # The commit that added the heading: its count of the string went from 0 to 1.
        released_at = _git(root, "log", "-1", "--format=%H", "-S", heading, "--", "CHANGELOG.md") or None
        next_release = f"{major}.{minor}.{patch + 1}"
    # In a shallow clone, git takes the oldest commit it has for the one that added the heading.
    if released_at is None or released_at in _shallow_boundary(root):  # noqa: SIM102 (the costly check second)
        if _git(root, "rev-parse", "--is-shallow-repository") == "true":
            raise VersionError(
                "this shallow clone's history stops before the last release, so it cannot count the commits "
                "since: git fetch --unshallow (or clone with full history; in GitHub Actions, fetch-depth: 0)"
            )
    if release is not None and released_at == head and not dirty:
        version = ".".join(map(str, release))
    else:
        since = _git(root, "rev-list", "--count", f"{released_at}..HEAD" if released_at else "HEAD")
        version = f"{next_release}.dev{since}+g{head[:12]}{'.dirty' if dirty else ''}"
    _check_tags(root, version)
    return version


def _shallow_boundary(root: Path) -> set[str]:
    """The commits a shallow clone has without their parents (none in a full clone)."""
    shallow = Path(_git(root, "rev-parse", "--path-format=absolute", "--git-path", "shallow"))
    return set(shallow.read_text().split()) if shallow.is_file() else set()


def _check_tags(root: Path, version: str) -> None:
    """A release tag at HEAD must name the version this commit builds."""
    for tag in _git(root, "tag", "--points-at", "HEAD", "--list", "v[0-9]*").split():
        if tag != f"v{version}":
            raise VersionError(
                f"tag {tag} is on a commit that builds {version}: a release tag goes on the commit that adds "
                f'"## [{tag[1:]}] - DATE" to CHANGELOG.md (docs/releasing.md)'
            )


def image_tag(version: str) -> str:
    """The version as an image tag: the same string, with '-' for '+' (a tag cannot hold '+')."""
    return version.replace("+", "-")


def main(argv: list[str]) -> int:
    try:
        version = build_version()
    except VersionError as error:
        print(f"version: {error}", file=sys.stderr)
        return 1
    print(image_tag(version) if argv[1:] == ["--image-tag"] else version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
