"""Whatever ``LANG`` or ``LC_ALL`` an image sets, imds-shim starts, fetches and writes UTF-8, and
the command gets the locale variables as they were: for the pip-installed shim and the bundle
(which carries no codec beyond ASCII, UTF-8, Latin-1 and IDNA, and runs Python in UTF-8 mode)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import clean_env, made_once, missing, probe_command, run_shim

from shim.simulator.server import Simulator

pytestmark = pytest.mark.behaviour

# name: (the locale's source, its charset); CJK and Latin, UTF-8 and legacy.
LOCALES = {
    "ja_JP.eucJP": ("ja_JP", "EUC-JP"),
    "zh_CN.GB18030": ("zh_CN", "GB18030"),
    "ko_KR.eucKR": ("ko_KR", "EUC-KR"),
    "zh_TW.Big5": ("zh_TW", "BIG5"),
    "de_DE.ISO-8859-15": ("de_DE", "ISO-8859-15"),
    "fr_FR.UTF-8": ("fr_FR", "UTF-8"),
}
# Compiled with localedef for the installed cases: each takes half a second, but GB18030 takes
# 8 s and fr_FR.UTF-8 1.5 s, so those two are tried not installed only.
COMPILED = ("ja_JP.eucJP", "ko_KR.eucKR", "zh_TW.Big5", "de_DE.ISO-8859-15")
CASES = [
    (name, installed) for name in LOCALES for installed in (True, False) if name in COMPILED or not installed
]


@pytest.fixture(scope="session")
def installed_locales(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COMPILED, made once per run with localedef into a folder of their own (LOCPATH): installed,
    for the C library of whoever runs (glibc reads LOCPATH; the bundle's glibc too)."""
    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/ja_JP").exists():
        missing("localedef and the locale sources are needed (Debian package locales)")

    def make(folder: Path) -> None:
        folder.mkdir()
        for name in COMPILED:
            source, charset = LOCALES[name]
            subprocess.run(
                ["localedef", "-i", source, "-f", charset, str(folder / name)],
                check=True,
                capture_output=True,
            )

    return made_once(tmp_path_factory, "locales", make)


@pytest.mark.parametrize(
    ("locale_name", "installed"),
    CASES,
    ids=[f"{name}-{'installed' if installed else 'not-installed'}" for name, installed in CASES],
)
def test_any_locale_fetches_and_passes_the_locale_on(
    sim: Simulator, installed_locales: Path, locale_name: str, installed: bool
) -> None:
    """Under LANG and LC_ALL of any locale: the command runs with credentials and the very same
    locale variables; nothing is added to its environment."""
    locale_path = str(installed_locales if installed else installed_locales / "none")
    env = clean_env(
        AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url, LANG=locale_name, LC_ALL=locale_name, LOCPATH=locale_path
    )
    result = run_shim(["--", *probe_command()], env=env)
    assert result.returncode == 0, result.stderr
    child = result.probe()["env"]
    assert child["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert (child["LANG"], child["LC_ALL"], child["LOCPATH"]) == (locale_name, locale_name, locale_path)
    assert not {"PYTHONUTF8", "PYTHONIOENCODING"} & set(child)


@pytest.mark.parametrize("locale_name", ["ja_JP.eucJP", "de_DE.ISO-8859-15"])
def test_doctor_and_export_write_utf8_under_a_legacy_locale(
    sim: Simulator, installed_locales: Path, locale_name: str
) -> None:
    """The masked key's "…" has no place in ISO-8859-15: doctor writes UTF-8, like the log lines."""
    env = clean_env(
        AWS_EC2_METADATA_SERVICE_ENDPOINT=sim.url,
        LANG=locale_name,
        LC_ALL=locale_name,
        LOCPATH=str(installed_locales),
    )
    report = run_shim(["doctor"], env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "ASIA…" in report.stdout  # decoded as UTF-8 by the test
    exported = run_shim(["export", "--format", "json"], env=env)
    assert exported.returncode == 0, exported.stderr
    assert '"AWS_ACCESS_KEY_ID": "ASIA' in exported.stdout
