"""``--on-interruption SIGNAL``: watch IMDS for the instance's end, and tell the command once.

EC2 announces a Spot interruption two minutes ahead (``spot/instance-action``), Auto Scaling its
taking the instance away (``autoscaling/target-lifecycle-state`` turns ``Terminated``), and a Spot
instance at elevated risk (``events/recommendations/rebalance``). Every period the watch asks for
the three; the announcements the user listed (``--interruption-events``: spot and asg unless told)
make it send SIGNAL to the command, once, after the drain delay. The others are logged once and
shown by ``status``; scheduled maintenance (days ahead) is only shown, never acted on.

It runs on the supervisor's loop and never makes the loop wait: one kept-alive connection,
non-blocking, with the period's requests written at once (pipelined) and their answers read as
they come, so a poll costs one wakeup for the timer and one for the answers; an answer that has
not come whole within :data:`POLL_TIMEOUT` ends the connection, and that poll counts as a
failure. No ``requests`` here: the resident process stays as small as without the watch. The
IMDSv2 token is asked for once and reused for its lifetime (a 401 gets a new one); where IMDS
refuses tokens, IMDSv1 is used, as the fetch does, unless ``--no-imds-v1``.

Every answer goes through :mod:`shim.imds.answers`: size-capped here, shaped there.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.parse

from shim.command_line.values import signal_name
from shim.credentials import format_duration, format_time
from shim.imds.answers import (
    MAX_NOTICE_BYTES,
    Notice,
    parse_lifecycle_state,
    parse_rebalance,
    parse_scheduled_events,
    parse_spot_action,
    parse_token,
)
from shim.imds.protocol import (
    LIFECYCLE_STATE_PATH,
    REBALANCE_PATH,
    SCHEDULED_EVENTS_PATH,
    SPOT_ACTION_PATH,
    TOKEN_HEADER,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
)
from shim.lifetime.store import jitter
from shim.lifetime.supervisor import Service, Supervisor
from shim.log import log

TYPE_CHECKING = False  # no typing import at run time
if TYPE_CHECKING:
    from collections.abc import Callable

    from shim.command_line.config import Config
    from shim.lifetime.standing import Standing

TOKEN_TTL = 21600  # IMDS's longest: one token for six hours of polls
TOKEN_MARGIN = 60.0  # asked for anew this long before it runs out
POLL_TIMEOUT = 2.0  # the most one poll's answers may take, however slowly they trickle
# The answers are read this long after the requests went, all at once, rather than as each
# segment comes: a poll then wakes the supervisor twice (to ask, to read), whatever the server's
# writes. IMDS answers in about a millisecond; a slower one is then read as it comes.
COLLECT_DELAY = 0.05
MAX_HEAD_BYTES = 8 * 1024
# Scheduled maintenance comes days ahead: asked for at the first poll and then every so many.
MAINTENANCE_EVERY = 60
MAINTENANCE_SHOWN = 5
WATCHED = {SPOT_ACTION_PATH: "spot", LIFECYCLE_STATE_PATH: "asg", REBALANCE_PATH: "rebalance"}
REFUSED_TOKEN = (403, 404, 405)  # IMDS (or a proxy before it) will not do IMDSv2: IMDSv1, as the fetch


class Broken(Exception):
    """The connection gave something that is not HTTP this watch can read: it is closed."""


class InterruptionWatch(Service):
    """Polls IMDS every ``config.interruption_poll`` seconds; signals the command once."""

    def __init__(
        self,
        config: Config,
        standing: Standing,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = jitter,
    ) -> None:
        assert config.on_interruption is not None
        parts = urllib.parse.urlsplit(config.endpoint)
        self.address = (parts.hostname or "", parts.port or 80)
        self.host_header = parts.netloc
        self.config, self.standing, self.clock, self.wall = config, standing, clock, wall
        self.signum, self.period = config.on_interruption, config.interruption_poll
        self.supervisor: Supervisor | None = None
        self.sock: socket.socket | None = None
        self.connecting = False
        self.buffer = b""
        self.pending: list[str] = []  # the paths whose answers are due, in order
        self.close_after = False  # IMDS said Connection: close
        self.answered_here = 0  # answers on this connection: one closed after some is no failure
        self.unanswered: list[tuple[str, str]] = []  # what a closed connection left, to send again
        self.reused = False  # the connection served an earlier poll (IMDS may have closed it since)
        self.watching = False  # the socket is registered with the supervisor's selector
        self.collect_at: float | None = None
        self.poll_ends: float | None = None  # a poll is under way until its answers came, or then
        self.polls = 0
        # The first check at a random moment of the first period: a host that starts 100
        # containers at once does not poll in lockstep.
        self.next_poll = clock() + self.period * rng()
        self.token: str | None = None
        self.token_until = 0.0
        self.token_is_new = False  # issued for this very poll
        self.version = 2
        self.said: dict[str, str] = {}  # what was logged of each announcement, so it is said once
        self.signal_at: float | None = None
        self.done = False  # the signal was sent (or the command is gone): nothing left to watch
        standing.watch_signal = signal_name(self.signum)

    def attach(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def tick(self) -> float | None:
        if self.done or self.supervisor is None:
            return None
        now = self.clock()
        if self.collect_at is not None and now >= self.collect_at:
            self._collect()  # may announce the end, and set the signal's moment: now, or after the drain
        if self.signal_at is not None:
            if now >= self.signal_at:
                self._send_signal()
                return None
            return self.signal_at - now
        if self.poll_ends is not None:
            if now < self.poll_ends:
                return min(self.poll_ends, self.collect_at or self.poll_ends) - now
            self._failed("IMDS did not answer in time")
        if now >= self.next_poll:
            self._start_poll(now)
            if self.poll_ends is not None:
                return (self.collect_at or self.poll_ends) - now
            return max(self.next_poll - now, 0.0)
        return self.next_poll - now

    def close(self) -> None:
        self._disconnect()
        self.done = True

    # -- one poll ------------------------------------------------------------------------------

    def _start_poll(self, now: float, token_is_new: bool = False) -> None:
        self.token_is_new = token_is_new
        self.next_poll = now + self.period
        self.poll_ends = now + POLL_TIMEOUT
        self.polls += 1
        if self.sock is None and not self._connect():
            return
        if not self.connecting:
            self._send_requests()

    def _requests(self) -> list[tuple[str, str]]:
        """This poll's requests, (method, path): the token first when one is needed."""
        if self.version == 2 and (self.token is None or self.clock() >= self.token_until):
            return [("PUT", TOKEN_PATH)]
        paths = list(WATCHED)
        if self.polls % MAINTENANCE_EVERY == 1:
            paths.append(SCHEDULED_EVENTS_PATH)
        return [("GET", path) for path in paths]

    def _send_requests(self) -> None:
        """Write this poll's requests at once (or, on a new connection, those a closed one left)."""
        assert self.sock is not None
        requests = self.unanswered or self._requests()
        self.unanswered, self.answered_here = [], 0
        data = b"".join(self._request(method, path) for method, path in requests)
        try:
            sent = self.sock.send(data)  # a few hundred bytes: the socket's buffer takes them all
        except OSError as error:
            if self.reused:  # IMDS closed the idle connection: once more, on a new one
                self._disconnect()
                self.unanswered = requests
                if self._connect() and not self.connecting:
                    self._send_requests()
                return
            self._failed(f"the connection to IMDS failed ({error.strerror or 'send'})")
            return
        if sent != len(data):
            self._failed("the connection to IMDS took only part of the request")
            return
        self.pending = [path for _, path in requests]
        self._unwatch()
        self.collect_at = self.clock() + COLLECT_DELAY

    def _collect(self) -> None:
        """The moment to read this poll's answers: what has come is read; the rest, as it comes."""
        self.collect_at = None
        if self.sock is None:
            return
        self._on_readable()
        if self.pending and self.sock is not None and not self.watching:
            self._watch(self._on_readable)

    def _request(self, method: str, path: str) -> bytes:
        headers = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", "Connection: keep-alive"]
        if method == "PUT":
            headers += [f"{TOKEN_TTL_HEADER}: {TOKEN_TTL}", "Content-Length: 0"]
        elif self.version == 2 and self.token is not None:
            headers.append(f"{TOKEN_HEADER}: {self.token}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode()

    def _connect(self) -> bool:
        assert self.supervisor is not None
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._failed(f"IMDS is out of reach ({os.strerror(code)})")
            return False
        self.sock, self.buffer, self.connecting = sock, b"", code == errno.EINPROGRESS
        self.reused = False
        if self.connecting:
            self._watch(self._on_connected, writable=True)
        return True

    def _on_connected(self) -> None:
        assert self.sock is not None
        assert self.supervisor is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._failed(f"IMDS is out of reach ({os.strerror(code)})")
            return
        self.connecting = False
        self._unwatch()
        self._send_requests()

    def _on_readable(self) -> None:
        assert self.sock is not None
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self._closed_by_imds()
            return
        except OSError as error:
            self._failed(f"the connection to IMDS broke ({error.strerror or 'recv'})")
            return
        if not chunk:
            self._closed_by_imds()
            return
        self.buffer += chunk
        try:
            while self.pending and (answer := self._next_answer()) is not None:
                path, (status, body) = self.pending.pop(0), answer
                self.answered_here += 1
                self._answered(path, status, body or b"")
                if body is None and self.sock is not None:  # oversized: the rest cannot be read
                    raise Broken(f"IMDS answered GET {path} with a body larger than {MAX_NOTICE_BYTES} bytes")
        except Broken as error:
            self._failed(str(error))
            return
        if not self.pending and self.poll_ends is not None and self.sock is not None:
            self._poll_done()

    def _closed_by_imds(self) -> None:
        """End of file: after some answers (IMDS, or a proxy before it, that answers a request or
        a few a connection), the rest goes again on a new one; before any, the check failed."""
        if not self.pending:
            self._disconnect()
            return
        if not self.answered_here and not self.reused:
            self._failed("IMDS closed the connection without answering")
            return
        left = [("PUT" if path == TOKEN_PATH else "GET", path) for path in self.pending]
        self._disconnect()
        self.unanswered = left
        if self._connect() and not self.connecting:
            self._send_requests()

    def _next_answer(self) -> tuple[int, bytes | None] | None:
        """The next whole answer in the buffer (status, body), or None until it has come. A body
        over :data:`MAX_NOTICE_BYTES` is None at once: nothing after it can be read."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise Broken("IMDS answered with headers larger than any of its own")
            return None
        lines = self.buffer[:head_end].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            raise Broken("IMDS answered with something that is not HTTP")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or b"transfer-encoding" in headers:
            raise Broken("IMDS answered without a Content-Length")
        if int(length) > MAX_NOTICE_BYTES:
            return int(status_line[1]), None
        end = head_end + 4 + int(length)
        if len(self.buffer) < end:
            return None
        body, self.buffer = self.buffer[head_end + 4 : end], self.buffer[end:]
        if headers.get(b"connection", b"").lower() == b"close":
            self.close_after = True
        return int(status_line[1]), body

    def _poll_done(self) -> None:
        """Every answer of the poll has come."""
        self.poll_ends, self.reused = None, True
        if self.close_after:
            self._disconnect()

    # -- what the answers say ------------------------------------------------------------------

    def _answered(self, path: str, status: int, body: bytes) -> None:
        if status in (200, 404) and self.standing.watch_failures:
            log.info(
                f"--on-interruption: IMDS answers again, after {self.standing.watch_failures} failed checks",
                failures=self.standing.watch_failures,
            )
            self.standing.watch_failures = 0
        if path == TOKEN_PATH:
            self._token_answer(status, body)
            return
        if status == 401 and self.version == 2 and not self.token_is_new:
            # The token ran out early: a new one, at once (the rest of this poll's answers are
            # dropped with the connection). A token refused as soon as it was issued is a failure.
            self.token, self.poll_ends = None, None
            self._disconnect()
            self.next_poll = self.clock()
            return
        if status not in (200, 404):
            raise Broken(f"IMDS answered {status} to GET {path}")
        if path == SCHEDULED_EVENTS_PATH:
            self._maintenance(body if status == 200 else b"[]")
            return
        notice = None
        if status == 200:
            parse = {SPOT_ACTION_PATH: parse_spot_action, LIFECYCLE_STATE_PATH: parse_lifecycle_state}
            notice = parse.get(path, parse_rebalance)(body)
        if notice is not None:
            self._announced(notice)

    def _token_answer(self, status: int, body: bytes) -> None:
        if status == 200:
            try:
                self.token = parse_token(body)
            except Exception:  # a Transient: garbled, asked for again next time
                raise Broken("IMDS answered the token request with a malformed token") from None
            self.token_until = self.clock() + TOKEN_TTL - TOKEN_MARGIN
        elif status in REFUSED_TOKEN and not self.config.no_imds_v1:
            self.version = 1
        else:
            raise Broken(f"IMDS answered {status} to the IMDSv2 token request")
        self.poll_ends = None
        self.polls -= 1  # the poll proper comes now
        self._start_poll(self.clock(), token_is_new=True)

    def _maintenance(self, body: bytes) -> None:
        try:
            events = parse_scheduled_events(body)
        except Exception:  # a Transient: not a list; asked for again at the next round
            return
        if len(events) > MAINTENANCE_SHOWN:  # status's answer has a size limit of its own
            events = [*events[:MAINTENANCE_SHOWN], f"and {len(events) - MAINTENANCE_SHOWN} more"]
        if events != self.standing.maintenance:
            for event in events:
                log.info(f"--on-interruption: scheduled maintenance: {event} (shown, never acted on)")
        self.standing.maintenance = events

    def _announced(self, notice: Notice) -> None:
        """An announcement: said once; acted on (once) if it is of a kind the user listed."""
        text = f"{notice.what}{self._when(notice)}"
        acted = notice.ends and notice.kind in self.config.interruption_events
        stable = f"{notice.what}{'' if notice.at is None else ' at ' + format_time(notice.at)}"
        if self.said.get(notice.kind) != stable:
            self.said[notice.kind] = stable
            self.standing.notices = [*self.said.values()]
            if not acted:
                why = (
                    f"--interruption-events {','.join(self.config.interruption_events)}"
                    if notice.ends
                    else "it announces no end"
                )
                log.warning(f"--on-interruption: {text}; not acted on ({why})", event=notice.kind)
        if not acted or self.standing.draining is not None:
            return
        self.standing.draining = notice.what
        self.standing.ends_at = None if notice.at is None else notice.at.timestamp()
        delay = self.config.drain_delay
        then = f"draining for {format_duration(delay)}, then sending" if delay else "sending"
        log.warning(
            f"--on-interruption: the instance's end is announced: {text}; {then} {signal_name(self.signum)}",
            event=notice.kind,
            signal=self.signum,
        )
        self.signal_at = self.clock() + delay
        self.poll_ends = None
        self._disconnect()

    def _when(self, notice: Notice) -> str:
        return (
            "" if notice.at is None else f" at {format_time(notice.at)} ({self._left(notice.at.timestamp())})"
        )

    def _left(self, moment: float) -> str:
        left = moment - self.wall()
        return f"in {format_duration(left)}" if left > 0 else f"{format_duration(-left)} ago"

    def _send_signal(self) -> None:
        assert self.supervisor is not None
        self.done, self.signal_at = True, None
        if not self.supervisor.signal_command(self.signum):
            return
        self.standing.signal_sent_at = self.wall()
        ends_at, what = self.standing.ends_at, self.standing.draining
        left = None if ends_at is None else ends_at - self.wall()
        leaves = f", {format_duration(left)} before it" if left is not None and left > 0 else ""
        log.warning(
            f"--on-interruption: sent {signal_name(self.signum)} to the command ({what}){leaves}",
            signal=self.signum,
            left=None if left is None else round(left, 1),
        )

    # -- failures ------------------------------------------------------------------------------

    def _failed(self, why: str) -> None:
        """This poll gave nothing: said once per outage, counted for status; the next comes as due."""
        self._disconnect()
        self.poll_ends = None
        if not self.standing.watch_failures:
            log.warning(f"--on-interruption: {why}; no signal sent, still watching", why=why)
        self.standing.watch_failures += 1

    def _disconnect(self) -> None:
        if self.sock is not None:
            self._unwatch()
            self.sock.close()
        self.sock, self.buffer, self.pending, self.connecting = None, b"", [], False
        self.close_after, self.unanswered, self.collect_at = False, [], None

    def _watch(self, handler: Callable[[], None], writable: bool = False) -> None:
        assert self.supervisor is not None
        assert self.sock is not None
        self._unwatch()
        self.supervisor.watch(self.sock.fileno(), handler, writable)
        self.watching = True

    def _unwatch(self) -> None:
        if self.watching and self.sock is not None and self.supervisor is not None:
            self.supervisor.unwatch(self.sock.fileno())
        self.watching = False
