"""``requests``, imported without the character-set detector it loads eagerly.

requests imports charset_normalizer (or chardet) at import time, about 15 ms at every container
start, only to guess the encoding behind ``Response.text``. imds-shim decodes IMDS answers itself
and never asks for that guess. requests >= 2.32 treats a missing detector as "none available"
(and warns; the warning is silenced here). Should a version insist on one, the import is retried
the ordinary way, so this can only cost time, never break.

The self-contained bundle also ships no TLS stack (no ``ssl``, OpenSSL or certifi): IMDS speaks
plain HTTP, and ``https://`` endpoints are refused up front. requests copes with a missing
``ssl`` on its own but imports ``certifi.where()`` unconditionally, for the CA bundle of https
requests it would verify; where certifi is absent, a stand-in that names no file takes its place.
"""

from __future__ import annotations

import sys
import types
import warnings

DETECTORS = ("charset_normalizer", "chardet")


def _stand_in_for_certifi() -> None:
    try:
        import certifi  # noqa: F401 - requests imports it next anyway
    except ImportError:
        stand_in = types.ModuleType("certifi", "No CA bundle: this build has no TLS stack.")
        stand_in.where = lambda: ""  # type: ignore[attr-defined]
        sys.modules["certifi"] = stand_in


def _import_without_detectors() -> None:
    blocked = [name for name in DETECTORS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` now fails at once
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import requests  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "requests" or m.startswith("requests.")]:
            del sys.modules[name]
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


if "requests" not in sys.modules:
    _stand_in_for_certifi()
    _import_without_detectors()

import requests  # noqa: E402 - the import above has already done the work

__all__ = ["requests"]
