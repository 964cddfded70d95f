"""Versions that say what a build is (scripts/version.py): the release commit builds X.Y.Z, every
other commit a dev version naming it, with or without tags; a tag on the wrong commit, a shallow
clone and a tree with no history are errors that say so. Each case is a small git repository of
its own, with the real script in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import build_version

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "version.py"
DEV = re.compile(r"(\d+)\.(\d+)\.(\d+)\.dev(\d+)\+g([0-9a-f]{12})(\.dirty)?")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_SYSTEM": os.devnull,
}


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **GIT_ENV),
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def version(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(repo / "scripts" / "version.py")], capture_output=True, text=True, timeout=60
    )


def version_of(repo: Path) -> str:
    completed = version(repo)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    return completed.stdout.strip()


def commit(repo: Path, message: str, changelog_heading: str | None = None) -> str:
    """A commit that changes a file; with a heading, one that adds it to CHANGELOG.md (a release)."""
    if changelog_heading:
        changelog = repo / "CHANGELOG.md"
        text = changelog.read_text()
        changelog.write_text(
            text.replace("## [Unreleased]\n", f"## [Unreleased]\n\n{changelog_heading}\n- x\n")
        )
    with (repo / "work.txt").open("a") as work:
        work.write(message + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project with the real version script, released as 1.4.0 and then two more commits."""
    repo = tmp_path / "project"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "version.py")
    (repo / "CHANGELOG.md").write_text("# Changelog\n\n## [Unreleased]\n\n## [1.3.9] - 2026-01-01\n- x\n")
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "start")
    commit(repo, "release 1.4.0", "## [1.4.0] - 2026-12-01")
    return repo


def test_the_release_commit_builds_the_release_and_later_commits_do_not(repo: Path) -> None:
    assert version_of(repo) == "1.4.0"
    first = commit(repo, "fix one")
    assert version_of(repo) == f"1.4.1.dev1+g{first[:12]}"
    second = commit(repo, "fix two")
    assert version_of(repo) == f"1.4.1.dev2+g{second[:12]}"


def test_two_commits_at_the_same_distance_from_the_release_differ(repo: Path) -> None:
    """Two branches, each one commit after the release: same N, different versions."""
    release = git(repo, "rev-parse", "HEAD")
    commit(repo, "on main")
    on_main = version_of(repo)
    git(repo, "checkout", "-q", "-b", "other", release)
    commit(repo, "on other")
    on_other = version_of(repo)
    assert on_main != on_other
    assert DEV.fullmatch(on_main)
    assert DEV.fullmatch(on_other)


def test_a_clone_without_tags_agrees_with_one_with_them(repo: Path, tmp_path: Path) -> None:
    git(repo, "tag", "v1.4.0")
    commit(repo, "after")
    tagged = version_of(repo)
    plain = tmp_path / "plain"
    git(tmp_path, "clone", "-q", "--no-tags", f"file://{repo}", str(plain))
    assert git(plain, "tag") == ""
    assert version_of(plain) == tagged
    git(plain, "checkout", "-q", "HEAD~1")
    git(repo, "checkout", "-q", "v1.4.0")
    assert version_of(plain) == version_of(repo) == "1.4.0"


def test_a_release_tag_on_another_commit_is_an_error(repo: Path) -> None:
    commit(repo, "after")
    git(repo, "tag", "v1.4.0")
    completed = version(repo)
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.startswith("version: tag v1.4.0 is on a commit that builds 1.4.1.dev1+g")
    assert 'goes on the commit that adds "## [1.4.0] - DATE" to CHANGELOG.md' in completed.stderr


def test_uncommitted_changes_are_never_the_release(repo: Path) -> None:
    (repo / "work.txt").write_text("changed\n")
    head = git(repo, "rev-parse", "HEAD")
    assert version_of(repo) == f"1.4.1.dev0+g{head[:12]}.dirty"
    changelog = repo / "CHANGELOG.md"  # a release heading being written is not a release yet
    changelog.write_text(
        changelog.read_text().replace("## [Unreleased]\n", "## [Unreleased]\n\n## [1.5.0] - 2026-12-09\n")
    )
    assert version_of(repo) == f"1.4.1.dev0+g{head[:12]}.dirty"
    git(repo, "checkout", "--", "CHANGELOG.md")
    (repo / "untracked.txt").write_text("new\n")  # an untracked file is not in the build
    git(repo, "checkout", "--", "work.txt")
    assert version_of(repo) == "1.4.0"


def test_a_shallow_clone_counts_from_the_release_or_says_how_to_get_the_history(
    repo: Path, tmp_path: Path
) -> None:
    """Deep enough to hold the release: the same version as a full clone. Not: an error."""
    commit(repo, "after")
    commit(repo, "after that")
    full = version_of(repo)
    deep_enough, too_shallow = tmp_path / "deep-enough", tmp_path / "too-shallow"
    git(tmp_path, "clone", "-q", "--depth", "4", f"file://{repo}", str(deep_enough))
    assert version_of(deep_enough) == full
    git(tmp_path, "clone", "-q", "--depth", "2", f"file://{repo}", str(too_shallow))
    completed = version(too_shallow)
    assert completed.returncode == 1
    assert completed.stderr == (
        "version: this shallow clone's history stops before the last release, so it cannot count the "
        "commits since: git fetch --unshallow (or clone with full history; in GitHub Actions, "
        "fetch-depth: 0)\n"
    )


def test_an_sdist_says_its_pkg_info_and_a_bare_tree_is_an_error(tmp_path: Path) -> None:
    tree = tmp_path / "imds_shim-1.4.1.dev3+gabc"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, tree / "scripts" / "version.py")
    completed = version(tree)
    assert completed.returncode == 1
    assert "has neither git history nor an sdist's PKG-INFO" in completed.stderr
    (tree / "PKG-INFO").write_text("Metadata-Version: 2.4\nName: imds-shim\nVersion: 1.4.1.dev3+gabc\n")
    assert version_of(tree) == "1.4.1.dev3+gabc"


def test_image_tags_hold_the_same_version(repo: Path) -> None:
    commit(repo, "after")
    completed = subprocess.run(
        [sys.executable, str(repo / "scripts" / "version.py"), "--image-tag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.stdout.strip() == version_of(repo).replace("+", "-")
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", completed.stdout.strip())


def test_this_checkout_builds_a_version_that_names_it() -> None:
    """This repository: its release, or a dev version naming HEAD; never the unbuilt placeholder."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    found = DEV.fullmatch(build_version())
    assert found is None or found[5] == head[:12]
    assert found is not None or re.fullmatch(r"\d+\.\d+\.\d+", build_version())
