"""``requests`` (and its ``urllib3``), imported without the parts imds-shim never uses but would pay for.

Import both from here, never directly: an ``import urllib3`` before this module would load urllib3
without the stand-ins below.

Every import here is paid at every container start, so three are kept out while requests loads:

- **The character-set detector.** requests imports charset_normalizer (or chardet) at import time,
  about 15 ms, only to guess the encoding behind ``Response.text``. imds-shim decodes IMDS
  answers itself. requests >= 2.32 treats a missing detector as "none available" (and warns; the
  warning is silenced here).
- **importlib.metadata.** urllib3 imports ``importlib.metadata.version`` at import time, only to
  check h2's version should HTTP/2 ever be switched on. The real module pulls in inspect, ast,
  zipfile and pathlib: about 20 ms. While requests loads, a stand-in offers a ``version`` that
  imports the real one when called; the stand-in is gone from ``sys.modules`` afterwards, so any
  later ``import importlib.metadata`` gets the real module.
- **certifi.** requests imports ``certifi.where()`` unconditionally, for the CA bundle of https
  requests it would verify. IMDS speaks plain HTTP, and ``https://`` endpoints are refused up
  front, so a stand-in that names no file takes its place: the self-contained bundle ships no TLS
  stack at all (no ``ssl``, OpenSSL or certifi), and on CPython 3.13 the real certifi imports
  ``importlib.resources``, which pulls in inspect and pathlib: about 35 ms.

The stand-ins leave ``sys.modules`` once requests has loaded, so any later import gets the real
module. Should a version of requests or urllib3 insist on what was kept out, the import is retried
the ordinary way, so this can only cost time, never break.
"""

from __future__ import annotations

import sys
import types
import warnings

DETECTORS = ("charset_normalizer", "chardet")
METADATA = "importlib.metadata"
CERTIFI = "certifi"


def _version(distribution_name: str) -> str:
    """importlib.metadata.version, imported only when it is called."""
    import importlib

    real: str = importlib.import_module(METADATA).version(distribution_name)
    return real


def _stand_ins() -> dict[str, types.ModuleType | None]:
    """What to put in ``sys.modules`` while requests loads: None makes ``import name`` fail at once."""
    kept_out: dict[str, types.ModuleType | None] = {
        name: None for name in DETECTORS if name not in sys.modules
    }
    if METADATA not in sys.modules:
        metadata = types.ModuleType(METADATA, "Stand-in while requests loads; see shim.imds.lean_requests.")
        metadata.version = _version  # type: ignore[attr-defined]
        kept_out[METADATA] = metadata
    if sys.modules.get(CERTIFI) is None:  # not loaded, or marked absent
        certifi = types.ModuleType(
            CERTIFI, "No CA bundle: IMDS speaks plain HTTP; see shim.imds.lean_requests."
        )
        certifi.where = lambda: ""  # type: ignore[attr-defined]
        kept_out[CERTIFI] = certifi
    return kept_out


def _import_requests_leanly() -> None:
    kept_out = _stand_ins()
    sys.modules.update(kept_out)  # type: ignore[arg-type]  # None: `import name` fails at once
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import requests  # noqa: F401
    except Exception:  # an ImportError, or an OSError from a CA bundle that names no file
        for name in [m for m in sys.modules if m.split(".")[0] in ("requests", "urllib3")]:
            del sys.modules[name]
    finally:
        for name, stand_in in kept_out.items():
            if sys.modules.get(name, stand_in) is stand_in:
                sys.modules.pop(name, None)


if "requests" not in sys.modules:
    _import_requests_leanly()

import requests  # noqa: E402 - the import above has already done the work
import urllib3  # noqa: E402 - imported by requests, under the same stand-ins

__all__ = ["requests", "urllib3"]
