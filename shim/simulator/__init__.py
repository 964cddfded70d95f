"""``imds-shim simulate``: an IMDS look-alike on loopback, for demos and tests.

Owns the server and the verb (:mod:`.server`) and its options (:mod:`.knobs`: the table
``--help`` is made from, and the typed ``Knobs``).

May import: :mod:`shim.errors`, :mod:`shim.log`, :mod:`shim.runtime`, :mod:`shim.execute`,
:mod:`shim.command_line` and :mod:`shim.imds.protocol` (the paths it serves); never the client,
so that what it serves is checked by the real client, not shared with it.
"""
