"""The exit statuses imds-shim gives of its own, each defined here once.

Otherwise the status is the command's: imds-shim execs it, or (supervised) exits with it.
``bundle/launcher.c`` keeps a copy of :data:`SHIM_FAILED` (it fails before Python starts), and
``tests/test_bundle.py`` checks that the two agree. ``--help``'s list comes from :data:`MEANINGS`;
docs/exit-codes.md is the page that explains each (tests/test_docs.py holds it to these).
"""

SHIM_FAILED = 125  # the default; --error-exit-code / IMDS_SHIM_ERROR_EXIT_CODE change it
COMMAND_NOT_EXECUTABLE = 126
COMMAND_NOT_FOUND = 127
SIGNAL_BASE = 128  # 128 + N: interrupted by signal N, as a shell reports it

MEANINGS = (
    (str(SHIM_FAILED), "the shim failed (--error-exit-code changes it)"),
    (str(COMMAND_NOT_EXECUTABLE), "the command is not executable"),
    (str(COMMAND_NOT_FOUND), "the command was not found"),
    (f"{SIGNAL_BASE}+N", "interrupted by signal N before the command started (supervised: or killed by it)"),
)
