"""The IMDS client: everything between "fetch" and a checked answer.

Owns the protocol facts (:mod:`.protocol`: addresses, paths, headers, the hop-limit text), the
client (:mod:`.client`: token, IMDSv1 fallback, classification, diagnoses), the one boundary every
IMDS byte passes (:mod:`.answers`), the retry policy (:mod:`.try_first` without tenacity, then
:mod:`.tenacity_policy`, with :mod:`.backoff`'s figures), the machine's own word on being EC2
(:mod:`.machine`), time (:mod:`.deadline`, :mod:`.time_limit`), the lean ``requests``
import (:mod:`.lean_requests`) and the fetch sequence (:mod:`.fetch`: role, credentials, region,
account).

May import: :mod:`shim.errors`, :mod:`shim.log`, :mod:`shim.credentials`, :mod:`shim.variables`
and :mod:`shim.command_line`'s ``config`` and ``values``; never the lifetime modes, the simulator
or the verbs. This ``__init__`` imports nothing, so that importing :mod:`.protocol` (as the
command line does) never brings ``requests`` in: only :mod:`.client` does, and only when it
fetches.
"""
