"""``python -m shim`` behaves exactly like the ``imds-shim`` console script."""

from shim.cli import run

run()
