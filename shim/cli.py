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
from shim.lifetime.modes import chosen_mode
from shim.log import flush_standard_streams, log, write_stdout
from shim.runtime import as_this_program, is_imds_shim, launch_environment
from shim.step_aside import clear_identity, in_pod, node_role_warning, reason_to_step_aside

TYPE_CHECKING = False  # no typing import at run time: this is the step-aside path
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from shim.credentials import Fetched
    from shim.lifetime.modes import Handover, Mode
    from shim.lifetime.standing import Standing


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


def hand_over_credentials(
    config: Config, mode: Mode, environ: Mapping[str, str], standing: Standing | None
) -> Handover:
    """Step aside, or fetch and let ``mode`` hand the set over: the environment the command runs
    with, and what the supervisor runs beside it. A supervising mode (``standing`` given) fetches
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
        return mode.without_credentials(config, environment, standing, error)
    if standing is not None:
        standing.hold(fetched.role, fetched.credentials)
    return mode.hand_over(config, environment, fetched, standing)


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
        verdict, line = status(pid if isinstance(pid, int) else None, invocation.settings.flag("ready"))
        if log.json:  # --log-format json: the answer as one object too, for a probe's log
            import json

            answer = {"program": "imds-shim", "verb": STATUS, "healthy": verdict == 0, "message": line}
            write_stdout(json.dumps(answer, ensure_ascii=True) + "\n")
        else:
            write_stdout(f"imds-shim status: {line}\n")
        return verdict
    config = Config.from_settings(invocation.settings, in_pod=in_pod(environ))
    mode = chosen_mode(invocation.settings)
    if invocation.verb == DOCTOR:
        from shim.doctor import doctor

        with interruptible():
            return doctor(config, mode, environ)
    if invocation.verb == EXEC:
        log.mode = mode.name
        return _run_command(config, mode, invocation.command, environ)
    from shim.formats import render

    # export and credential-process print the instance role's credentials by definition: on a
    # host, other configured identities are normal and do not stop them.
    with interruptible():
        fetched = fetch_credentials(config, environ)
    write_stdout(render(invocation.verb, config.format, fetched, environ))
    return 0


def _run_command(config: Config, mode: Mode, command: list[str], environ: Mapping[str, str]) -> int:
    """The entrypoint, as tini's main reads: step aside or fetch, the mode hands the set over,
    then exec the command or supervise it. Returns only when supervising."""
    if is_imds_shim(command):
        # `docker run IMAGE imds-shim doctor` under ENTRYPOINT ["imds-shim", "--"]: the inner
        # imds-shim does its own job; keys exported here would only mislead it.
        log.info("the command is imds-shim itself: running it without fetching")
        replace_process(as_this_program(command), dict(environ))
    if not mode.supervises:
        with interruptible():
            environment = hand_over_credentials(config, mode, environ, None)[0]
        replace_process(command, environment)
    from shim.lifetime.standing import Standing
    from shim.lifetime.supervisor import hold_standard_descriptors

    # Before any socket or pipe is made: none of them may land on 0, 1 or 2.
    placeholders = hold_standard_descriptors()
    standing = Standing(mode.flags)
    with interruptible():
        environment, services = hand_over_credentials(config, mode, environ, standing)
    if config.on_interruption is not None:  # whatever the hand-over was: the instance ends all the same
        from shim.lifetime.interruption import InterruptionWatch

        services.append(InterruptionWatch(config, standing))
    from shim.lifetime.status import StatusService
    from shim.lifetime.supervisor import supervise

    return supervise(command, environment, [StatusService(standing), *services], placeholders)


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
        # A verb without these options (status has no --log-level) keeps what is set already.
        if "log_level" in invocation.settings:
            log.set_level(str(invocation.settings["log_level"]))
        if "log_format" in invocation.settings:
            log.set_format(str(invocation.settings["log_format"]))
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
