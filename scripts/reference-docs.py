"""Write docs/options.md from the option tables, as ``--help`` is made from them, and the README's
copies of facts that have one page of their own (the modes table from docs/lifetime.md, the exit
statuses from ``MEANINGS``), so none can drift: ``make docs`` writes them, and
``tests/test_docs.py`` fails when a committed page is not what this script makes.

    python scripts/reference-docs.py            # write docs/options.md and the README's copies
    python scripts/reference-docs.py --check    # exit 1, saying so, if either would change
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from shim.command_line.config import (
    CREDENTIAL_PROCESS,
    DOCTOR,
    EXEC,
    EXPORT,
    OPTIONS,
    SIMULATE,
    STATUS,
    Option,
)
from shim.command_line.exit_codes import MEANINGS
from shim.simulator.knobs import SIMULATOR_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "options.md"
README = ROOT / "README.md"
LIFETIME = ROOT / "docs" / "lifetime.md"
# The README's copies sit between these lines; what is between them is made here.
BEGIN, END = "<!-- made by scripts/reference-docs.py from {}: make docs -->", "<!-- end of the copy -->"

# What a row says beyond --help's one line: the fine print a reader of the reference needs.
DETAILS = {
    "endpoint": "IMDS base URL, `http://` only (IMDS never speaks TLS; `https://` is refused with 125); "
    "a trailing slash is fine",
    "endpoint_mode": "`IPv4` = `http://169.254.169.254`, `IPv6` = `http://[fd00:ec2::254]`; "
    "the endpoint wins",
    "role": "skip role discovery",
    "expect_role": "fail closed (125) unless the role is NAME, before any credentials are fetched; "
    "under `--serve` a renewal that finds another role is refused too",
    "timeout": "wait for an answer to start, decimals allowed; connecting is capped at 0.5 s, and a whole "
    "answer at 4 times this after connecting",
    "attempts": "tries per request while IMDS is busy or garbled",
    "deadline": "overall limit; nothing waits past it. Only a busy or throttling IMDS is waited for "
    "this long",
    "dmi_dir": "the folder of the machine's DMI facts, read only when IMDS does not answer: where they "
    "say EC2, silence is congestion, tried until the deadline "
    "([troubleshooting](troubleshooting.md#many-containers-at-once)); tests point it elsewhere",
    "no_imds_v1": "never fall back to IMDSv1",
    "override": "fetch even when [stepping aside](../README.md#when-it-steps-aside) would apply, first "
    "clearing every identity variable",
    "optional": "if credentials cannot be had, warn once and run the command without them (under "
    "`--serve`: start at once, the endpoint answering 503 until IMDS answers)",
    "refresh": "credentials that renew, via `credential_process` ([lifetime.md](lifetime.md))",
    "serve": "serve renewing credentials on 127.0.0.1 while the command runs ([lifetime.md](lifetime.md))",
    "expiry_signal": "send SIGNAL to the command when its static keys are due for renewal "
    "([lifetime.md](lifetime.md))",
    "init": "stay as the command's parent and init, with static keys ([lifetime.md](lifetime.md))",
    "on_interruption": "send SIGNAL to the command once, when IMDS announces the instance's end; the "
    "shim stays as its parent ([interruptions.md](interruptions.md))",
    "interruption_events": "`spot` (a Spot instance-action), `asg` (Auto Scaling's target state "
    "`Terminated`), `rebalance` (a rebalance recommendation); the others are logged and shown, not acted on",
    "interruption_poll": "how often the watch asks IMDS; the first check comes at a random moment of "
    "the first period",
    "drain_delay": "seconds between the announcement and the signal: `status --ready` fails meanwhile, "
    "so a load balancer can take the container out of service first",
    "pid": "for `status`: ask the supervisor with this PID",
    "ready": "for `status`: exit 1 while draining too (readiness probes; liveness probes leave it out)",
    "error_exit_code": "exit status for the shim's own failures",
    "log_level": "`-v` = info (the fetch in a line; under `--serve` also the endpoint and each renewal), "
    "`-vv` = debug (every request), `-q` = error",
    "log_format": "`text` (`imds-shim: LEVEL: message`) or `json` (one object a line: [Logs](#logs))",
    "format": "for `export` and `doctor`",
}
SHORT_FLAGS = {"log_level": ", `-v`, `-vv`, `-q`"}

HEAD = """\
# Options

<!-- Made by scripts/reference-docs.py from the option tables (shim/command_line/config.py,
     shim/simulator/knobs.py), as --help is: run `make docs` after changing them. -->

`imds-shim [OPTIONS] -- COMMAND [ARGS...]`. Everything after the first `--` is the command. It is
never parsed, re-quoted or given to a shell. `imds-shim --help` prints this table too.

Precedence for every setting: **flag > `IMDS_SHIM_*` variable > AWS SDK variable > default.**
Every option has an environment twin, so an image changes behaviour with `ENV IMDS_SHIM_...`
and a container with `docker run -e IMDS_SHIM_...`. "Applies to" names the entrypoint (`--`) and
the verbs that take the option; elsewhere it is a usage error.
"""

BOOLEANS = """
Boolean variables take `1/true/yes/on` or `0/false/no/off` (any case). The SDK switches
(`AWS_EC2_METADATA_DISABLED`, `AWS_EC2_METADATA_V1_DISABLED`) count only `true`, as the SDKs do.
A value that is none of these is a usage error (125), never a guess.
"""

LOGS = """
## Logs

Logs go to stderr only, one line each; on success at the default level, nothing. `-v` adds one
line for the fetch (role, IMDS version, masked key ID, time to expiry, region, account, requests,
time) and, under `--serve`, one for the endpoint and one per renewal. A failed renewal is a
warning that says what happened and until when the current set is served; the first renewal after
failures is a warning too, and so is a role that changed at renewal. Supervised, each text line
starts with its UTC time.

With `--log-format json` (`IMDS_SHIM_LOG_FORMAT=json`) every line, at every level and in every
mode (the supervisor's and the renewals' included), is one JSON object, ASCII only:

| field | in | value |
|---|---|---|
| `time` | every line | RFC 3339 UTC with milliseconds, `2026-12-05T16:15:36.511Z` |
| `level` | every line | `debug`, `info`, `warning` or `error` |
| `message` | every line | what the text line says after `imds-shim: LEVEL: ` |
| `program` | every line | `imds-shim`, to tell its lines from the command's on a shared stderr |
| `mode` | once the arguments are read | `exec`, `serve`, `init`, `expiry-signal`, `refresh`, or the verb |
| `role`, `key_id`, `expires` | the fetch, `--serve`, renewals | the role; the key ID masked; its expiry |
| `imds_version`, `region`, `account`, `requests`, `elapsed_ms` | the fetch | as `-v`'s line says them |
| `failures` | renewals | failed renewals in a row (0 on a plain renewal) |
| `previous_role` | a role that changed at renewal | the role served until then |
| `url`, `renew_at` | `--serve`'s start | the endpoint; when the first renewal is due |
| `signal`, `signal_at` | `--expiry-signal` | the signal number; when it goes to the command |
| `config_file` | `--refresh` | the private config file the command reads |
| `exit_code` | the error a run ends with | the shim's exit status |
| `lines_lost` | after a full stderr | lines dropped meanwhile (a supervisor never waits for stderr) |

A secret never appears in either form (`tests/test_redaction.py` runs every scenario in both).
`doctor --format json` is a report on stdout and does not change with `--log-format`. The
self-contained bundle's launcher, which starts before Python, writes its two install-damage
errors as text.
"""


def _cell_flags(option: Option) -> str:
    flag = " ".join((*option.flags, option.metavar)).strip()
    return f"`{flag}`{SHORT_FLAGS.get(option.dest, '')}"


def _default(option: Option) -> str:
    if option.default is False or option.parse is None:  # a flag that takes no value
        return "off"
    if option.default is None:
        return ""
    return f"`{option.default:g}`" if isinstance(option.default, float) else f"`{option.default}`"


def _verbs(option: Option) -> str:
    """Where the option applies: the entrypoint (``--``) and the verbs, in --help's order."""
    named = {EXEC: "`--`", EXPORT: "`export`", CREDENTIAL_PROCESS: "`credential-process`", DOCTOR: "`doctor`"}
    named.update({SIMULATE: "`simulate`", STATUS: "`status`"})
    return ", ".join(word for verb, word in named.items() if verb in option.verbs)


def page() -> str:
    missing = sorted({option.dest for option in OPTIONS} ^ set(DETAILS))
    if missing:
        raise SystemExit(f"reference-docs.py: DETAILS and OPTIONS differ in {', '.join(missing)}")
    lines = [
        HEAD,
        "",
        "| Flag | Environment | AWS SDK variable | Default | Applies to | |",
        "|---|---|---|---|---|---|",
    ]
    for option in OPTIONS:
        sdk = ", ".join(f"`{name}`" for name in option.sdk_env)
        if option.dest == "no_imds_v1":
            sdk = f"{sdk}=true"
        lines.append(
            f"| {_cell_flags(option)} | `{option.env}` | {sdk} | {_default(option)} | {_verbs(option)} "
            f"| {DETAILS[option.dest]} |"
        )
    lines.append(BOOLEANS)
    lines.append(LOGS)
    lines += [
        "## Exit codes",
        "",
        "The command's own status, or one of the shim's ([exit-codes.md](exit-codes.md) tells when each",
        "happens and what to do):",
        "",
        "| Code | Meaning |",
        "|---|---|",
        *(f"| {status} | {meaning} |" for status, meaning in MEANINGS),
        "",
        "## `imds-shim simulate`",
        "",
        "The built-in IMDS look-alike ([imds.md](imds.md)); its options have `IMDS_SHIM_SIM_*` twins.",
        "",
        "| Flag | Environment | Default | |",
        "|---|---|---|---|",
    ]
    for option in SIMULATOR_OPTIONS:
        lines.append(f"| {_cell_flags(option)} | `{option.env}` | {_default(option)} | {option.help} |")
    return "\n".join(lines) + "\n"


def modes_table() -> list[str]:
    """docs/lifetime.md's table of modes without its last column (what each needs from the image),
    its links made relative to the top of the repository."""
    text = LIFETIME.read_text()
    rows = text[text.index("| Mode |") :].splitlines()
    rows = rows[: next(i for i, line in enumerate(rows) if not line.startswith("|"))]
    shortened = ["|".join(row.split("|")[:-2]) + "|" for row in rows]
    relinked = (re.sub(r"\]\((?!\.\./|https?:)([\w.-]+\.md)", r"](docs/\1", row) for row in shortened)
    return [row.replace("](../README.md", "](README.md") for row in relinked]


def exit_statuses() -> list[str]:
    return ["| Code | Meaning |", "|---|---|", *(f"| {status} | {meaning} |" for status, meaning in MEANINGS)]


def readme() -> str:
    """The README with its copies made again."""
    text = README.read_text()
    for source, made in (("docs/lifetime.md", modes_table()), ("MEANINGS", exit_statuses())):
        begin = BEGIN.format(source)
        start, end = text.index(begin) + len(begin), text.index(END, text.index(begin))
        text = text[:start] + "\n" + "\n".join(made) + "\n" + text[end:]
    return text


def main(argv: list[str]) -> int:
    made = {PAGE: page(), README: readme()}
    if "--check" in argv:
        stale = [path.name for path, text in made.items() if path.read_text() != text]
        if stale:
            print(f"{' and '.join(stale)}: not what the tables make: run make docs", file=sys.stderr)
            return 1
        return 0
    for path, text in made.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
