"""The lifetime modes: how the command's credentials outlive the start.

Two process models, chosen by the mode:

- **exec** (the default, ``--refresh``, ``export``, ``credential-process``): the shim fetches,
  then *becomes* the command (``execve``): same PID, nothing of the shim left running.
- **supervised** (``--serve``, ``--expiry-signal``, ``--init``): the shim fetches in a short-lived
  forked child (so that ``requests`` never enters the resident process), starts the command as its
  own child, and then runs one loop (:mod:`shim.lifetime.supervisor`) until the command ends:
  it forwards signals, reaps orphans as PID 1, serves the credentials endpoint
  (:mod:`shim.lifetime.endpoint`), renews them in another forked child
  (:mod:`shim.lifetime.renewal`), answers ``imds-shim status`` (:mod:`shim.lifetime.status`),
  and exits with the command's status (128+N when signal N killed it).

The loop sleeps in one ``select`` on everything it waits for (signals through a signalfd,
sockets, the renewal child's pipe) with the time to its next due moment as the timeout: at rest
it does not wake up at all.

``--refresh`` (:mod:`.refresh`) is the exec model's way to renew: the command's SDK calls
``imds-shim credential-process`` back through a private config file.

May import: the shared modules (:mod:`shim.errors`, :mod:`shim.log`, :mod:`shim.runtime`,
:mod:`shim.execute`, :mod:`shim.credentials`, :mod:`shim.variables`), the resolved configuration
and exit statuses, and of :mod:`shim.imds` only the protocol's facts, the answer checks and,
inside a forked fetch child, the fetch; never the verbs or the simulator.
"""
