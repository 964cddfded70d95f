"""Command-line entry point; ``main`` is the only place that turns exceptions into exit codes.

Import discipline: this module and what it imports at the top (configuration, identity rules, the
logger, exec) never import ``requests``; the modules that talk to IMDS are imported only on the
paths that fetch, so stepping aside costs an interpreter start and little else.
"""

from __future__ import annotations

import os
import sys

from shim import __version__
from shim.command_line.config import DOCTOR, EXEC, SIMULATE, STATUS, Config, Option
from shim.command_line.exit_codes import COMMAND_NOT_EXECUTABLE, COMMAND_NOT_FOUND, SIGNAL_BASE
from shim.command_line.parse import (
    Invocation,
    error_exit_code_from,
    help_text,
    log_format_from,
    parse_command_line,
)
from shim.errors import (
    CommandNotExecutable,
    CommandNotFound,
    CredentialsUnavailable,
    Interrupted,
    ShimError,
    raised_at,
)
from shim.execute import interruptible, replace_process
from shim.log import flush_standard_streams, log, write_stdout
from shim.runtime import as_this_program, is_imds_shim, launch_environment
from shim.step_aside import clear_identity, in_pod, node_role_warning, reason_to_step_aside

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from shim.credentials import Fetched
    from shim.lifetime.standing import Standing
    from shim.lifetime.supervisor import Service


def fetch_credentials(config: Config, environ: Mapping[str, str]) -> Fetched:
    """Everything IMDS has for this run. Imports the HTTP stack, so only fetching paths call it."""
    from shim.credentials import describe, described_fields
    from shim.imds.client import ImdsClient
    from shim.imds.deadline import Deadline
    from shim.imds.fetch import fetch

    warning = node_role_warning(environ, config.expect_role)
    if warning:
        log.warning(warning)
    client = ImdsClient(config, Deadline(config.deadline))
    try:
        fetched = fetch(client, config, environ)
    finally:
        client.close()
    elapsed = client.deadline.elapsed()
    log.info(describe(fetched, elapsed), **described_fields(fetched, elapsed))
    return fetched


def command_environment(
    config: Config, environ: Mapping[str, str], standing: Standing | None = None
) -> tuple[dict[str, str], list[Service]]:
    """The environment the command runs with (the shim's own, plus the role's credentials), and
    what the supervisor runs beside it. With a ``standing`` (the supervised modes) the fetch runs
    in a forked child, and the standing learns what ``status`` will report."""
    reason = None if config.override else reason_to_step_aside(environ)
    if reason is not None:
        log.info(f"stepping aside: {reason}; running the command with its environment unchanged")
        if standing is not None:
            standing.note = f"stepped aside: {reason}; the command uses that identity"
        return dict(environ), []
    environment = dict(environ)
    if config.override:
        cleared = clear_identity(environment)
        if cleared:
            log.info(f"--override: cleared {', '.join(cleared)}")
    try:
        if standing is None:
            fetched = fetch_credentials(config, environment)
        else:
            from shim.lifetime.child_fetch import fetch_in_child

            fetched = fetch_in_child(lambda: fetch_credentials(config, environment), load_supervisor)
    except CredentialsUnavailable as error:
        if not config.optional:
            raise
        if config.serve:
            return waiting_for_imds(config, environment, standing, error)
        log.warning(f"{error}; running the command without credentials (--optional)")
        if standing is not None:
            standing.note = f"running without credentials (--optional): {error}"
        return environment, []
    if standing is not None:
        standing.hold(fetched.role, fetched.credentials)
    if config.refresh:
        from shim.lifetime.refresh import refreshing_environment

        return refreshing_environment(config, environment, fetched), []
    if config.serve:
        from shim.lifetime.endpoint import serving_environment

        assert standing is not None
        return serving_environment(config, environment, fetched, standing)
    from shim.variables import export_into, exported_variables

    export_into(environment, exported_variables(fetched, environment))
    if config.expiry_signal is not None:
        from shim.lifetime.expiry_signal import ExpirySignal

        return environment, [ExpirySignal(config.expiry_signal, fetched.credentials)]
    return environment, []


def waiting_for_imds(
    config: Config, environ: Mapping[str, str], standing: Standing | None, error: CredentialsUnavailable
) -> tuple[dict[str, str], list[Service]]:
    """``--serve --optional`` with IMDS down at the start: the command starts now, with the endpoint,
    which answers 503 until the renewals, retried with backoff, bring a first set."""
    import time

    from shim.lifetime.endpoint import serving_environment

    assert standing is not None
    log.warning(
        f"{error}; starting the command with the endpoint, which has no credentials until IMDS answers "
        "(--optional); trying again with backoff"
    )
    standing.failures, standing.last_error = 1, str(error)
    standing.note = f"waiting for IMDS since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    return serving_environment(config, environ, None, standing)


def load_supervisor() -> None:
    """What the supervised modes need besides the fetch, loaded while the first fetch runs in its
    child: on a second core, that costs the start nothing."""
    import importlib

    from shim.lifetime.supervisor import load_prctl

    for module in ("shim.lifetime.endpoint", "shim.lifetime.expiry_signal", "shim.lifetime.status"):
        importlib.import_module(module)
    load_prctl()


def _dispatch(invocation: Invocation, environ: Mapping[str, str]) -> int:
    """Run the verb; returns an exit status, or does not return at all (exec)."""
    if invocation.verb == SIMULATE:
        from shim.simulator.server import simulate

        return simulate(invocation.settings, invocation.command, environ)
    if invocation.verb == STATUS:
        from shim.lifetime.status import status

        pid = invocation.settings.get("pid")
        verdict, line = status(pid if isinstance(pid, int) else None)
        if log.json:  # --log-format json: the answer as one object too, for a probe's log
            import json

            answer = {"program": "imds-shim", "verb": STATUS, "healthy": verdict == 0, "message": line}
            write_stdout(json.dumps(answer, ensure_ascii=True) + "\n")
        else:
            write_stdout(f"imds-shim status: {line}\n")
        return verdict
    config = Config.from_settings(invocation.settings, in_pod=in_pod(environ))
    if invocation.verb == EXEC:
        log.mode = config.lifetime
    command = invocation.command
    standing: Standing | None = None
    placeholders: list[int] = []
    services: list[Service] = []
    with interruptible():
        if invocation.verb == DOCTOR:
            from shim.doctor import doctor

            return doctor(config, environ)
        if invocation.verb == EXEC and is_imds_shim(command):
            # `docker run IMAGE imds-shim doctor` under ENTRYPOINT ["imds-shim", "--"]: the inner
            # imds-shim does its own job; keys exported here would only mislead it.
            log.info("the command is imds-shim itself: running it without fetching")
            command, environment, services = as_this_program(command), dict(environ), []
        elif invocation.verb == EXEC:
            if config.supervised:
                from shim.lifetime.standing import Standing
                from shim.lifetime.supervisor import hold_standard_descriptors

                # Before any socket or pipe is made: none of them may land on 0, 1 or 2.
                placeholders = hold_standard_descriptors()
                standing = Standing(config.mode)
            environment, services = command_environment(config, environ, standing)
        else:
            from shim.formats import render

            # export and credential-process print the instance role's credentials by definition:
            # on a host, other configured identities are normal and do not stop them.
            fetched = fetch_credentials(config, environ)
            output = render(invocation.verb, config.format, fetched, environ)
    if standing is not None:
        from shim.lifetime.status import StatusService
        from shim.lifetime.supervisor import supervise

        return supervise(command, environment, [StatusService(standing), *services], placeholders)
    if invocation.verb == EXEC:
        replace_process(command, environment)
    write_stdout(output)  # only once everything succeeded: never a half-written env file
    return 0


def _verb_options(verb: str) -> Sequence[Option]:
    """The options only one verb has; the simulator's module is imported for its own verb only."""
    if verb == SIMULATE:
        from shim.simulator.knobs import SIMULATOR_OPTIONS

        return SIMULATOR_OPTIONS
    return ()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run imds-shim with ``argv`` (without the program name); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = launch_environment(os.environ) if environ is None else dict(environ)
    error_exit_code = error_exit_code_from(env, args)
    log.set_format(log_format_from(env, args))
    try:
        invocation = parse_command_line(args, env, _verb_options)
        if invocation.show_help:
            write_stdout(_help(invocation))
            return 0
        if invocation.show_version:
            # The interpreter too: in the self-contained bundle it is the frozen one, a fact
            # a security review asks for (the bundle's SBOM names the same version).
            write_stdout(f"imds-shim {__version__} (CPython {'.'.join(map(str, sys.version_info[:3]))})\n")
            return 0
        log.set_level(invocation.settings.text("log_level") or "warning")
        log.set_format(invocation.settings.text("log_format") or "text")
        log.mode = invocation.verb
        if "error_exit_code" in invocation.settings:  # the simulator has no such option
            error_exit_code = invocation.settings.whole("error_exit_code")
        return _dispatch(invocation, env)
    except Interrupted as interruption:
        return SIGNAL_BASE + interruption.signum
    except CommandNotFound as error:
        log.error(str(error), exit_code=COMMAND_NOT_FOUND)
        return COMMAND_NOT_FOUND
    except CommandNotExecutable as error:
        log.error(str(error), exit_code=COMMAND_NOT_EXECUTABLE)
        return COMMAND_NOT_EXECUTABLE
    except ShimError as error:
        log.error(str(error), exit_code=error_exit_code)
        return error_exit_code
    except Exception as error:
        # Only the type and place: an arbitrary message could quote a value we must not print.
        log.error(
            f"internal error {type(error).__name__} at {raised_at(error)}; please report it",
            exit_code=error_exit_code,
        )
        return error_exit_code


def _help(invocation: Invocation) -> str:
    if invocation.verb == SIMULATE:
        from shim.simulator.server import simulator_help

        return simulator_help()
    return help_text()


def run() -> None:
    """The ``imds-shim`` command: flush, then leave without interpreter teardown.

    Tearing down the modules requests and tenacity loaded costs ~20 ms; there are no atexit
    handlers or unflushed files to wait for once stdout and stderr are flushed.
    """
    status = main()
    if not flush_standard_streams():  # a closed pipe: nothing left to tell
        status = status or 1
    os._exit(status)
