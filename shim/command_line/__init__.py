"""The command line: what a user can say, and what it means.

Owns the option table (:mod:`.config`: flags, ``IMDS_SHIM_*`` twins, SDK variables, defaults,
verbs, formats; ``Settings`` and the resolved ``Config``), the parser (:mod:`.parse`: argv to verb,
options and command, precedence, ``--help``), what a well-formed value is (:mod:`.values`) and the
shim's own exit statuses (:mod:`.exit_codes`). :func:`shim.cli.main` turns its errors into exit
codes.

May import: :mod:`shim.errors`, :mod:`shim.log` and :mod:`shim.imds.protocol` (the endpoint
addresses); nothing that fetches, supervises or serves.
"""
