"""The IMDS client: IMDSv2 first, the SDKs' fallbacks, retries under a deadline, and diagnoses.

One ``requests.Session`` (keep-alive, ``trust_env=False`` so no proxy or ``.netrc`` is ever used,
no cookies kept), redirects never followed or even read, every body capped at 64 KiB and never
decompressed, an explicit (connect, read) timeout on every call, both capped by the remaining
deadline. Failures are classified by what the network did:

- refused, no route, or (where the machine does not say it is EC2) no TCP answer: not on EC2, or
  firewalled; one retry, then :class:`ImdsUnreachable`, in about a second;
- no answer on a machine whose DMI facts say EC2 (:mod:`shim.imds.machine`): congestion, since
  every container on a host shares one allowance of link-local packets and what is over it is
  dropped silently; retried with jittered backoff until the deadline;
- token PUT connected but silent: the IMDSv2 hop-limit symptom, but a storm loses some answers too,
  and the hop limit loses every one. So it is blamed only once three token answers in a row never
  came while IMDS answered a probe each time in between; then IMDSv1 with a warning, or
  :class:`HopLimitExceeded` with the fix when IMDSv1 is refused or disabled;
- 5xx, 429, garbled bodies, silent GETs: a busy IMDS, retried with backoff until the deadline;
- a body over 64 KiB: no IMDS answer is that large, so it fails at once.

Socket timeouts bound each read, not a whole answer: a server that sends one byte every half
second would keep a reader waiting for hours. So every answer also runs under a time limit of its
own (connecting, then four times ``--timeout``), never past the overall deadline, enforced by an interval
timer: the one way to interrupt a read that keeps making progress, in headers and body alike.

Every answer goes through :mod:`shim.imds.answers` before anything uses it. The token and every
response body stay inside this module: exceptions and log lines carry only methods, paths, status
codes and timings.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import random
import socket
import struct
import time
from typing import Callable, TypeVar

from shim import __version__
from shim.command_line.config import Config
from shim.errors import (
    ConnectFailed,
    CredentialsUnavailable,
    HopLimitExceeded,
    ImdsGaveUp,
    ImdsRefused,
    ImdsUnreachable,
    ImdsUnusable,
    NoAnswer,
    Throttled,
    Transient,
    UsageError,
)
from shim.imds.answers import parse_retry_after, parse_token
from shim.imds.backoff import CONGESTED_BACKOFF_BASE, full_jitter
from shim.imds.deadline import Deadline
from shim.imds.lean_requests import requests, urllib3
from shim.imds.machine import Machine
from shim.imds.protocol import (
    HOP_LIMIT_CAUSE,
    TOKEN_HEADER,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
    hop_limit_fix,
)
from shim.imds.time_limit import Overdue, time_limit
from shim.imds.try_first import with_retries
from shim.log import log

# The shim lives for seconds; a short-lived token is worth less to anyone who might see it.
TOKEN_TTL_SECONDS = 60
MAX_BODY_BYTES = 64 * 1024
# An answer's own limit fires this much after the socket timeouts would, so that a silent answer
# (the hop-limit symptom) is still told apart from a slow one.
TIME_LIMIT_MARGIN = 0.05
USER_AGENT = f"imds-shim/{__version__}"
# Token answers lost in a row, with a probe answered after each but the first, before the hop
# limit is blamed: a storm loses one or two now and then, the hop limit every one (issue 41).
HOP_LIMIT_TOKEN_TRIES = 3
HOP_LIMIT_PROBES = HOP_LIMIT_TOKEN_TRIES - 1
# Once congestion is seen, a try waits longer, so that TCP's own retransmissions (a SYN again
# after 1 s, a lost answer again after 0.2, 0.6, 1.4 s) do the retrying on the connection there
# is, rather than a new connection with its handshake and close on top: every packet counts.
CONGESTED_CONNECT_TIMEOUT = 2.0
CONGESTED_READ_TIMEOUT = 3.0
# Closing with a reset: one packet, where FIN, ACK, FIN, ACK are four, and no TIME_WAIT. Every
# answer has been read by then; what IMDS might still send is not wanted.
RESET_ON_CLOSE = (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
ALLOWANCE_ADVICE = (
    "every container on the host shares IMDS's allowance of 1,024 packets per second per network "
    "interface (docs/troubleshooting.md, 'Many containers at once')"
)

T = TypeVar("T")
V1_STATUSES = (403, 404, 405)  # the token PUT answers these where IMDSv2 is not available


class ReadTimedOut(NoAnswer):
    """Connected, sent the request, and no answer came within the read timeout."""


class TokenUnanswered(Exception):
    """The token PUT timed out after connecting: not retried, it is the hop-limit symptom."""


class ImdsSession(requests.Session):
    """A session that never consults the environment (proxies, ``.netrc``, CA bundles), keeps no
    cookies, asks for answers as they are (no compression), and never looks at a redirect.

    ``allow_redirects=False`` alone is not enough: requests still works out where a redirect
    would go, and to free the connection it reads the redirect's whole body, decompressed, past
    any cap (a 200 MiB body took 427 MB, a gzip bomb 1.4 GB), and it parses the ``Location``
    header, whose errors would blame the user's endpoint. A redirect here has no target: its
    status is the whole answer.
    """

    def get_redirect_target(self, response: requests.Response) -> None:
        return None

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        # IMDS requests carry no query and no body. Said as empty strings rather than requests'
        # empty dicts, they skip an isinstance check against a runtime Protocol, which makes
        # typing import inspect (with ast, dis and tokenize: about 10 ms a start on Python 3.12+).
        request.params, request.data = "", ""
        return super().prepare_request(request)


class ImdsAdapter(requests.adapters.HTTPAdapter):
    """Connections that close with a reset (:data:`RESET_ON_CLOSE`)."""

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        options = urllib3.connection.HTTPConnection.default_socket_options
        kwargs["socket_options"] = [*options, RESET_ON_CLOSE]
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


def new_session() -> requests.Session:
    session = ImdsSession()
    session.mount("http://", ImdsAdapter())
    session.trust_env = False
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept-Encoding"] = "identity"
    # Cookies an answer sets are not sent back (IMDS sets none; a stand-in could track us).
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


class ImdsClient:
    """Talks to one IMDS endpoint for the lifetime of one shim run."""

    def __init__(
        self,
        config: Config,
        deadline: Deadline,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.deadline = deadline
        self.session = session or new_session()
        self.sleep, self.rng = sleep, rng
        self.token: str | None = None
        self.version: int | None = None  # 2 with a token, 1 after a fallback, None before the PUT
        self.hop_limit_suspected = False
        self.fallback_warning: str | None = None
        self.requests_sent = 0
        self._machine: Machine | None = None
        # The evidence for the hop limit, against congestion (see _token_answers_never_come).
        self.tokens_unanswered = self.probes_answered = 0
        self.congestion_seen = False

    def machine(self) -> Machine:
        """The machine's own word on being EC2, read once, and only when IMDS has not answered."""
        if self._machine is None:
            self._machine = Machine(self.config.dmi_dir)
        return self._machine

    def close(self) -> None:
        self.session.close()

    # -- one HTTP exchange ---------------------------------------------------------------------

    def send(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, float | None]:
        """One request; returns (status, body, Retry-After) or raises a classified failure."""
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise ImdsGaveUp(self._past_deadline(method, path))
        connect, read = self.config.connect_timeout, self.config.timeout
        if self.congestion_seen:
            connect, read = max(connect, CONGESTED_CONNECT_TIMEOUT), max(read, CONGESTED_READ_TIMEOUT)
        timeout = (min(connect, remaining), min(read, remaining))
        limit = min(self.config.answer_limit, remaining)
        started = time.monotonic()
        self.requests_sent += 1
        status = "-"
        try:
            with time_limit(limit + TIME_LIMIT_MARGIN):
                response = self.session.request(
                    method,
                    self.config.endpoint + path,
                    headers=headers,
                    timeout=timeout,
                    stream=True,
                    allow_redirects=False,
                )
                status = str(response.status_code)
                body = _read_capped(response, method, path)
            return response.status_code, body, parse_retry_after(response.headers.get("Retry-After"))
        except Overdue:
            status = "too slow"
            if self.deadline.remaining() <= 0:
                raise ImdsGaveUp(self._past_deadline(method, path)) from None
            raise Transient(f"the answer to {method} {path} took longer than {limit:g} s") from None
        except requests.exceptions.ConnectTimeout:
            status = "connect timeout"
            detail = f"no TCP answer within {timeout[0]:g} s"
            if not self.machine().is_ec2:
                raise ConnectFailed(detail) from None
            self.congestion_seen = True  # a SYN dropped on an EC2 instance
            raise NoAnswer(detail, connected=False, on_ec2=True) from None
        except requests.exceptions.ReadTimeout:
            status = "read timeout"
            # A token answer lost is evidence for the hop limit, weighed in obtain_token; any
            # other lost answer is congestion.
            self.congestion_seen |= path != TOKEN_PATH
            detail = f"no answer to {method} {path} within {timeout[1]:g} s"
            raise ReadTimedOut(detail, connected=True, on_ec2=self.machine().is_ec2) from None
        except requests.exceptions.ConnectionError as error:
            if _never_connected(error):
                status = "connection failed"
                raise ConnectFailed("the connection was refused or there is no route") from None
            status = "connection broken"
            raise Transient(f"the connection broke during {method} {path}") from None
        except (requests.exceptions.InvalidURL, urllib3.exceptions.LocationParseError, UnicodeError):
            # The endpoint passed validation but requests cannot use it: the user's to fix.
            status = "unusable URL"
            raise UsageError(f"the IMDS endpoint {self.config.endpoint!r} is not a usable URL") from None
        except (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
        ):
            # Not HTTP as it should be (Content-Length: 5, 6, a broken status line): an IMDS fault.
            status = "malformed"
            raise Transient(f"the answer to {method} {path} was not well-formed HTTP") from None
        finally:
            if log.enabled("debug"):
                elapsed = (time.monotonic() - started) * 1000
                log.debug(f"{method} {path} -> {status} in {elapsed:.1f} ms")

    def _past_deadline(self, method: str, path: str) -> str:
        return f"gave up on IMDS after the {self.deadline.seconds:g} s deadline ({method} {path})"

    # -- IMDSv2 token --------------------------------------------------------------------------

    def _put_token(self) -> str | None:
        """One token PUT: the token, or None where IMDS says IMDSv2 is not available."""
        try:
            status, body, retry_after = self.send(
                "PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(TOKEN_TTL_SECONDS)}
            )
        except ReadTimedOut:
            raise TokenUnanswered from None
        if status == 200:
            return parse_token(body)
        if status in V1_STATUSES:
            return None
        if status == 429 or status >= 500:
            raise _busy(status, "the token request", retry_after)
        if 300 <= status < 400:
            raise ImdsRefused(
                f"IMDS answered a redirect ({status}) to the IMDSv2 token request "
                f"(PUT {TOKEN_PATH}); not followed"
            )
        if status == 400:
            raise ImdsRefused(
                f"IMDS answered 400 to the IMDSv2 token request (PUT {TOKEN_PATH}): the request "
                "arrived changed; something between here and IMDS (a proxy?) rewrites it"
            )
        raise ImdsRefused(f"IMDS answered {status} to the IMDSv2 token request (PUT {TOKEN_PATH})")

    def obtain_token(self) -> None:
        """Get a token, or settle on IMDSv1 where that is allowed and IMDSv2 is not to be had."""
        allow_v1 = not self.config.no_imds_v1
        while True:
            try:
                token = self._with_retries(self._put_token, self.config.attempts)
                break
            except TokenUnanswered:
                verdict = self._token_answers_never_come()
                if verdict == "again":
                    continue
                if verdict == "hop limit":
                    self._blame_the_hop_limit(allow_v1)
                    return
                # Token answers lost while IMDS was congested: IMDSv1 where it is allowed (as the
                # SDKs fall back), else more token tries until the deadline.
                if allow_v1:
                    self.fallback_warning = (
                        f"no IMDSv2 token: {self.tokens_unanswered} token requests went unanswered "
                        "while IMDS was congested; fell back to IMDSv1"
                    )
                    self._use_v1()
                    return
            except ConnectFailed as error:
                raise self._verdict(error) from None
            except Transient as error:
                if not allow_v1:
                    if isinstance(error, NoAnswer) and error.on_ec2:
                        raise self._verdict(error) from None
                    raise ImdsGaveUp(f"no IMDSv2 token: {error}, and IMDSv1 is disabled") from None
                if self.deadline.remaining() < self.config.timeout:
                    raise self._verdict(error) from None
                self.fallback_warning = f"no IMDSv2 token ({error}); fell back to IMDSv1"
                self._use_v1()
                return
        if token is None:
            if not allow_v1:
                raise ImdsRefused(
                    "IMDS does not offer IMDSv2 tokens here (it refused the token request) and "
                    "IMDSv1 is disabled (--no-imds-v1 / AWS_EC2_METADATA_V1_DISABLED)"
                )
            log.info("IMDS does not offer IMDSv2 tokens here; using IMDSv1")
            self._use_v1()
            return
        self.token, self.version = token, 2

    def _token_answers_never_come(self) -> str:
        """A token PUT connected and got no answer: "again" (try another), "hop limit", or
        "congested" (another try is not worth more than IMDSv1).

        The hop limit loses every token answer and no other; congestion loses any answer now and
        then. So one lost token answer is simply asked again; after each further one, IMDS is
        probed with a GET of the token path (answered 405 at once, and not limited by the hop
        limit, which holds only for PUT answers; no IMDSv1 metadata is read). The hop limit is
        blamed after :data:`HOP_LIMIT_TOKEN_TRIES` lost token answers with every probe answered
        and nothing else lost; under congestion the tries back off and go on to the deadline.
        """
        self.tokens_unanswered += 1
        if self.tokens_unanswered == 1:
            return "again"
        if self.deadline.remaining() <= self.config.timeout:
            raise self._no_token_verdict()
        if self._probe_answered():
            self.probes_answered += 1
        else:
            self.congestion_seen = True
        if self.tokens_unanswered >= HOP_LIMIT_TOKEN_TRIES and self.probes_answered >= HOP_LIMIT_PROBES:
            return "congested" if self.congestion_seen else "hop limit"
        if self.congestion_seen:
            pause = full_jitter(CONGESTED_BACKOFF_BASE, self.tokens_unanswered - 1, self.rng)
            if pause >= self.deadline.remaining():
                raise self._no_token_verdict()
            self.sleep(pause)
        return "again"

    def _probe_answered(self) -> bool:
        """Whether IMDS answers a request whose answer the hop limit does not touch."""
        try:
            self.send("GET", TOKEN_PATH, {})
        except Transient:
            return False
        return True

    def _blame_the_hop_limit(self, allow_v1: bool) -> None:
        self.hop_limit_suspected = True
        waited = (
            f"{self.config.timeout:g} s, {self.tokens_unanswered} times in a row, while IMDS answered "
            "every other request"
        )
        if not allow_v1:
            raise HopLimitExceeded(
                _hop_limit_message(
                    self.config, waited, "IMDSv1 is disabled (--no-imds-v1 / AWS_EC2_METADATA_V1_DISABLED)"
                )
            )
        # Said once IMDSv1 has worked: if it is refused too, the error says it all.
        self.fallback_warning = (
            f"the IMDSv2 token request connected but got no answer within {waited}: "
            f"{HOP_LIMIT_CAUSE}; fell back to IMDSv1. Fix: {hop_limit_fix(self.config.in_pod)}"
        )
        self._use_v1()

    def _no_token_verdict(self) -> ImdsGaveUp:
        return ImdsGaveUp(
            f"no IMDSv2 token: {self.tokens_unanswered} token requests in {self.deadline.elapsed():.1f} s "
            f"went unanswered while IMDS was congested (throttled or overloaded?): {ALLOWANCE_ADVICE}"
        )

    def _with_retries(self, attempt: Callable[[], T], attempts: int) -> T:
        return with_retries(attempt, self.deadline, attempts, self.sleep, self.rng)

    def _use_v1(self) -> None:
        self.token, self.version = None, 1

    # -- GET -----------------------------------------------------------------------------------

    def _get_once(self, path: str) -> bytes | None:
        if self.version is None or (self.version == 2 and self.token is None):
            self.obtain_token()
        headers = {TOKEN_HEADER: self.token} if self.token else {}
        status, body, retry_after = self.send("GET", path, headers)
        if status == 200:
            if self.fallback_warning:
                log.warning(self.fallback_warning)
                self.fallback_warning = None
            return body
        if status == 404:
            return None
        if status == 401 and self.version == 2:
            self.token = None  # expired or revoked: the next attempt fetches a fresh one
            raise Transient(f"IMDS rejected the token for GET {path}")
        if status == 401:
            if self.hop_limit_suspected:
                raise HopLimitExceeded(
                    _hop_limit_message(
                        self.config,
                        f"{self.config.timeout:g} s, {self.tokens_unanswered} times in a row",
                        "IMDSv1 is disabled on this instance (IMDSv2 required)",
                    )
                )
            raise ImdsRefused("IMDS requires IMDSv2 tokens on this instance but did not issue one")
        if status == 429 or status >= 500:
            raise _busy(status, f"GET {path}", retry_after)
        if status == 403:
            raise ImdsRefused(
                f"IMDS answered 403 Forbidden to GET {path}: the metadata service is probably "
                "turned off for this instance (enable it with aws ec2 "
                "modify-instance-metadata-options --instance-id <id> --http-endpoint enabled)"
            )
        if 300 <= status < 400:
            raise ImdsRefused(f"IMDS answered a redirect ({status}) to GET {path}; not followed")
        raise ImdsRefused(f"IMDS answered {status} to GET {path}")

    def get(self, path: str, parse: Callable[[bytes], T], attempts: int | None = None) -> T | None:
        """GET ``path`` under the retry policy: what ``parse`` makes of the body, None on 404.

        ``parse`` (from :mod:`shim.imds.answers`) runs inside the retry loop: a body it rejects by
        raising :class:`Transient` is fetched again, like a 5xx.
        """

        def attempt() -> T | None:
            body = self._get_once(path)
            return None if body is None else parse(body)

        try:
            return self._with_retries(attempt, attempts or self.config.attempts)
        except Transient as error:
            raise self._verdict(error) from None

    def _verdict(self, error: Transient) -> CredentialsUnavailable:
        """What retrying ended in: IMDS was never reached, or it never answered usefully."""
        if isinstance(error, ConnectFailed):
            message = unreachable_message(
                self.config.endpoint, str(error), self.config.optional, self.machine()
            )
            return ImdsUnreachable(message, str(error))
        if isinstance(error, NoAnswer) and error.on_ec2:
            return ImdsGaveUp(
                f"IMDS did not answer: {self.requests_sent} tries in {self.deadline.elapsed():.1f} s, and "
                f"{self.machine().describe()}: throttled or overloaded? {ALLOWANCE_ADVICE}"
            )
        return ImdsGaveUp(self._gave_up(error))

    def _gave_up(self, error: Transient) -> str:
        return (
            f"gave up on IMDS after {self.requests_sent} requests in "
            f"{self.deadline.elapsed():.1f} s (--attempts {self.config.attempts}, --deadline "
            f"{self.config.deadline:g}): {error}"
        )


def _read_capped(response: requests.Response, method: str, path: str) -> bytes:
    """The body, at most 64 KiB of it; the connection is dropped rather than drained."""
    try:
        # As sent: IMDS never compresses (and is asked not to); decompressing is how a small
        # answer becomes a large one. An encoded answer reads as garbled, and is retried.
        body = response.raw.read(MAX_BODY_BYTES + 1, decode_content=False)
    except (urllib3.exceptions.HTTPError, OSError):
        raise Transient(f"the answer to {method} {path} was cut off") from None
    finally:
        response.close()
    if len(body) > MAX_BODY_BYTES:
        raise ImdsUnusable(
            f"the answer to {method} {path} is larger than {MAX_BODY_BYTES} bytes, "
            "which no IMDS answer is; not retried"
        )
    return body


def _busy(status: int, what: str, retry_after: float | None) -> Transient:
    kind = Throttled if status == 429 else Transient
    return kind(f"IMDS answered {status} to {what}", retry_after)


def _never_connected(error: requests.exceptions.ConnectionError) -> bool:
    """Whether the failure happened before a TCP connection existed (refused, no route)."""
    reason = error.args[0] if error.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def unreachable_message(
    endpoint: str, detail: str, optional: bool = False, machine: Machine | None = None
) -> str:
    """Why IMDS is unreachable, with the --optional advice unless --optional was given. Where the
    machine says it is EC2, only a refusal or a missing route gets here: something blocks IMDS."""
    if machine is not None and machine.is_ec2:
        return (
            f"IMDS at {endpoint} is unreachable ({detail}), and {machine.describe()}: something "
            "here blocks the metadata address (a firewall rule, a network policy, a proxy's network?)"
        )
    verdict = (
        f"IMDS at {endpoint} is unreachable ({detail}): this does not look like an EC2 instance, "
        "or a firewall blocks the metadata address"
    )
    if optional:
        return verdict
    return (
        f"{verdict}. Off EC2, pass --optional (IMDS_SHIM_OPTIONAL=1) to run the command without credentials"
    )


def _hop_limit_message(config: Config, waited: str, why_no_v1: str) -> str:
    return (
        f"the IMDSv2 token request to {config.endpoint} connected but got no answer within {waited}, "
        f"and {why_no_v1}: {HOP_LIMIT_CAUSE}. Fix: {hop_limit_fix(config.in_pod)}"
    )
