"""The `scout` command: run a command on hosts through a scout server, like ssh.

    scout exec [OPTIONS] HOST [--] COMMAND...                one host
    scout exec [OPTIONS] HOST|GLOB... [-l SELECTOR] -- COMMAND...
    scout exec [OPTIONS] -l SELECTOR -- COMMAND...           many hosts (a fan-out)
    scout exec [OPTIONS] HOST... --argv -- PROGRAM [ARG...]  argv: each word as it is
        --timeout SECS  --env K=V (repeatable)  --cwd DIR  --tty  --argv  -n/--no-stdin
        --max-output BYTES  -l/--selector SELECTOR  --max-parallel N  --max-failures N
        --json  --split-fan-out
        --idempotency-key KEY  --detach-grace DURATION
    scout attach [OPTIONS] HOST KEY [--stdout-offset N] [--stderr-offset N]
    scout cp [OPTIONS] LOCAL HOST:PATH | LOCAL GLOB:PATH | LOCAL -l SELECTOR:PATH
    scout cp [OPTIONS] HOST:PATH LOCAL                       files (client/cpcli.py)
        --mode OCTAL  --create-only  --max-parallel N
    scout hosts [OPTIONS] [HOST|GLOB|!EXCLUDED...] [SELECTOR | -l SELECTOR] [--json]
    scout health [OPTIONS] [--service NAME]
    scout mcp [OPTIONS] [--http HOST:PORT] [--max-output BYTES] [--local-files DIR]
    scout completion bash|zsh|fish                           (client/completion.py)
    scout --version

    connection OPTIONS (every command): --target ADDR ($SCOUT_TARGET),
        --token-file PATH (else $SCOUT_TOKEN), --tls ($SCOUT_TLS=1), --ca FILE ($SCOUT_CA),
        --cert FILE --key FILE, --profile NAME (client/profiles.py), --verbose

Telling hosts from the command: options may come anywhere before the command.
When `--` is there (and only our own options come before it, written as
`-l SEL`, `--selector SEL` or `--selector=SEL`: `-lSEL` could be the command's
`-la`), every other word before it is a host or a glob, and everything after it
is the command. Without
`--`, the first word is the one host and the command begins at the next word
(options after it are the command's). So a command that itself contains `--`
needs a `--` in front of it; -l needs `--` (without it, the command's first
word would be taken for a host).

The words of COMMAND are joined into one shell line, as ssh does (one word as it is,
several quoted). With --argv they are sent as argv instead: each word is one element,
the first the program, and the remote shell runs exactly that program with exactly
those arguments (a caller whose policy lists commands may send only argv).

One literal host (and no -l or --json) streams the remote stdout and stderr to
ours as they arrive, forwards our stdin when it is not a terminal (a terminal
gets EOF at once), and exits with the remote exit code, 128+N when a signal N
killed the command, 124 when it ran past --timeout and was stopped, 125 when
nothing ran and 255 when scout lost track of a command that may have run
(client/exitcodes.py has the table; client/explain.py words each failure). A
caller whose policy forbids Stream gets Execute instead: the same command, its
output at the end. The first Ctrl-C sends INT to the remote command; a second one
cancels the call, and the server stops the command.

Several hosts, a glob, an exclusion (!web3), -l or --json run the command
everywhere at once through ExecuteMany (at most --max-parallel hosts at a time;
the server's default otherwise; after --max-failures failed hosts no new one
starts), with our piped stdin read whole and sent to each (client/fanoutinput.py)
and no --tty; --timeout bounds each host's command.
--split-fan-out makes it one call per host instead, for a --target that is a
proxy routing by host (client/splitfanout.py).
Output lines come prefixed with their host (`web1 | ...`), stdout to stdout and
stderr to stderr; --json prints one JSON object per host instead. A progress
line on stderr (only when it is a terminal) and a summary at the end (on
stderr) count the hosts (client/fanoutstatus.py), and name those whose output
was cut at the cap. Ctrl-C cancels the call: the server stops every running
command and starts no new one, and the summary counts those stopped. The exit
status is the worst class any host reached (client/fleetcli.py, FailureClass;
client/exitcodes.py; 4 when all exited 0 but some output was cut), or
125 or 255 when the call itself failed (nothing ran, or commands may have run;
what was heard is summed up first).

With --idempotency-key KEY the command runs at most once under KEY (the server records
its outcome): running the same command line again prints the first run's output and
exits with its code, and a dropped connection is retried and the stream re-attached
where it was, without a gap or a repeated byte (client/retry.py). --detach-grace keeps
the command running after we go away; `scout attach HOST KEY` joins it again: the
output the server kept, then live output, then its exit code.

Usage mistakes exit 2 before anything runs, as everywhere in argparse.

Connection settings come from flags, then --profile NAME, then $SCOUT_* variables,
then the [default] profile of ~/.config/scout/client.toml (client/profiles.py). The
token is never printed. grpc's own log lines stay off the terminal unless --verbose
(client/grpclogs.py).

`scout mcp` serves the Model Context Protocol (stdio, or streamable HTTP on loopback)
for AI assistants, as this caller: client/mcpserver.py. It needs the optional `mcp`
extra (pip install 'scout[mcp]').
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from scout.allocator import keep_freed_memory

from . import completion, cpcli, examples, exitcodes
from .aio import DEFAULT_TARGET, Client, StreamCall
from .argtypes import checked, duration
from .credentials import TLS
from .errors import NotAllowed, ScoutError
from .explain import Context, SettingError, explain, unreadable
from .fanoutinput import StdinTooLarge, read_bounded
from .fleet import is_pattern
from .fleetcli import FanOutOptions, HostListing, run_fanout, run_hosts
from .grpclogs import hide_native_logs
from .profiles import ProfileError, resolve
from .results import Exit, ExitStatus, Lost, Result, Stderr, Stdout
from .retry import RetryPolicy, check_key

__all__ = [
    "amain",
    "client_for",
    "exit_code_for",
    "join_command",
    "main",
    "parse_args",
    "split_exec_words",
]

TARGET_ENV = "SCOUT_TARGET"
TOKEN_ENV = "SCOUT_TOKEN"
PACKAGE = "scout"
EXIT_SCOUT_FAILED = exitcodes.MAY_HAVE_RUN  # like ssh: a signal scout cannot number
EXIT_INTERRUPTED = exitcodes.INTERRUPTED
EXIT_BROKEN_PIPE = exitcodes.BROKEN_PIPE
# The server's words when only the method is refused (server/callers.py checks it last).
STREAM_REFUSED = "may not use Stream"
STDIN_CHUNK = 64 * 1024
STDIN_QUEUE_CHUNKS = 4  # bounds memory when the remote reads slower than we do
STDIN_HANDOFF_POLL = 0.5  # how often a waiting stdin thread checks that the loop lives


# --timeout: refuse values the server would refuse anyway
_positive_seconds = checked(
    duration, lambda v: v > 0, "not a number of seconds: {text!r}", "must be positive: {text!r}"
)
# --detach-grace: 600, 90s, 10m, 1h30m
_positive_duration = checked(
    duration,
    lambda v: v > 0,
    "not a duration (600, 90s, 10m, 1h30m): {text!r}",
    "must be positive: {text!r}",
)
# --stdout-offset: a byte count
_offset = checked(int, lambda v: v >= 0, "not a whole number: {text!r}", "must be >= 0: {text!r}")


def _key(text: str) -> str:
    """Parse --idempotency-key (and attach's KEY): the server's charset and length."""
    try:
        return check_key(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --max-parallel and the like: a whole number of hosts, at least one
_positive_count = checked(
    int, lambda v: v >= 1, "not a whole number: {text!r}", "must be at least 1: {text!r}"
)


def _env_pair(text: str) -> tuple[str, str]:
    """Parse one --env K=V; the server validates the name itself."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _version() -> str:
    """The installed package's version, for --version."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _connection_options() -> tuple[argparse.ArgumentParser, list[argparse.Action]]:
    """Where the server is and how to reach it: shared by every subcommand."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    actions = [
        group.add_argument(
            "--target",
            help=f"scout server address (default: a profile's or ${TARGET_ENV}, else "
            f"{DEFAULT_TARGET})",
        ),
        group.add_argument(
            "--token-file",
            type=Path,
            metavar="PATH",
            help=f"file holding the bearer token (default: ${TOKEN_ENV}, if set)",
        ),
        group.add_argument(
            "--tls",
            action="store_true",
            help="use TLS, trusting the default root CAs (or $SCOUT_TLS=1)",
        ),
        group.add_argument(
            "--ca",
            type=Path,
            metavar="FILE",
            help="use TLS, trusting this CA bundle (PEM; or $SCOUT_CA)",
        ),
        group.add_argument(
            "--cert", type=Path, metavar="FILE", help="client certificate for mutual TLS (PEM)"
        ),
        group.add_argument("--key", type=Path, metavar="FILE", help="its private key (PEM)"),
        group.add_argument(
            "--profile",
            metavar="NAME",
            help="take the settings not given here from this profile of "
            "~/.config/scout/client.toml (or $SCOUT_PROFILE; default: [default])",
        ),
        group.add_argument(
            "--verbose", action="store_true", help="let grpc's own log lines through"
        ),
    ]
    return options, actions


class _ExecOptionNames:
    """exec's option strings, so the word scanner can tell ours from the command's."""

    def __init__(self, actions: Iterable[argparse.Action]) -> None:
        """Collect every option string, and those that take a value."""
        actions = list(actions)
        help_names = {"-h", "--help"}  # argparse adds them to every parser
        self.known = frozenset(name for a in actions for name in a.option_strings) | help_names
        self.take_value = frozenset(
            name for a in actions for name in a.option_strings if a.nargs != 0
        )

    def is_ours(self, word: str) -> bool:
        """Say whether a word is one of our options as written out (`--env=A=1` too)."""
        return word in self.known or (
            word.startswith("--") and word.partition("=")[0] in self.take_value
        )


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, _ExecOptionNames]:
    """Describe the command line in one place, so help and parsing agree."""
    connection, connection_actions = _connection_options()
    parser = argparse.ArgumentParser(
        prog="scout",
        description="Run shell commands on SSH hosts through a scout server.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples.SCOUT,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(
        dest="action", required=True, metavar="{exec,attach,cp,hosts,health,mcp,completion}"
    )

    run = commands.add_parser(
        "exec",
        parents=[connection],
        allow_abbrev=False,  # the scanner in split_exec_words knows full names only
        usage=(
            "scout exec [OPTIONS] HOST [--] COMMAND...\n"
            "       scout exec [OPTIONS] [HOST|GLOB...] [-l SELECTOR] -- COMMAND...\n"
            "       scout exec [OPTIONS] HOST|GLOB... --argv -- PROGRAM [ARG...]"
        ),
        help="run a command on one host or many, and stream its output",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "With --, every word before it that is not an option is a host or a glob;\n"
            "without it, the first word is the one host and the command starts after it."
        ),
        epilog=f"{exitcodes.help_table()}\n\n{examples.EXEC}",
    )
    run_actions = [
        run.add_argument(
            "--timeout",
            type=_positive_seconds,
            metavar="SECS",
            help="stop the command after SECS (on each host; 90s, 10m, 1h30m too)",
        ),
        run.add_argument(
            "--idempotency-key",
            type=_key,
            metavar="KEY",
            help="run at most once under KEY (1-128 of A-Z a-z 0-9 . _ : -): the same command "
            "again with KEY gets the first run's output and exit code, never a second run; "
            "a dropped connection is retried and re-attached (many hosts: KEY/HOST each)",
        ),
        run.add_argument(
            "--detach-grace",
            type=_positive_duration,
            metavar="DURATION",
            help="with --idempotency-key: keep the command running this long (600, 90s, 10m, "
            "1h) after we go away (Ctrl-C twice, a dropped connection), for `scout attach`",
        ),
        run.add_argument(
            "--env",
            type=_env_pair,
            action="append",
            default=[],
            metavar="K=V",
            help="set an environment variable for the command (repeatable)",
        ),
        run.add_argument("--cwd", default="", metavar="DIR", help="run the command in DIR"),
        run.add_argument(
            "--argv",
            action="store_true",
            help="send the words after the hosts as argv (program, then each argument as is), "
            "not as a shell line",
        ),
        run.add_argument(
            "--tty",
            action="store_true",
            help="run the command under a pseudo-terminal (the size of ours, if any; one host)",
        ),
        run.add_argument(
            "-l",
            "--selector",
            default="",
            metavar="SELECTOR",
            help="also run on the hosts this label selector picks (role=web,region in (eu,us))",
        ),
        run.add_argument(
            "--max-parallel",
            type=_positive_count,
            default=0,
            metavar="N",
            help="run on at most N hosts at once (default: the server's)",
        ),
        run.add_argument(
            "--max-failures",
            type=_positive_count,
            default=0,
            metavar="N",
            help="many hosts: once N hosts failed (exited non-zero, killed by a signal, or "
            "could not run), start no new host (default: no limit)",
        ),
        run.add_argument(
            "--max-output",
            type=_positive_count,
            default=0,
            metavar="BYTES",
            help="keep at most BYTES of each output stream per host; the rest is cut and "
            "reported (default: the server's cap for many hosts, none for one; values "
            "above the server's maximum are lowered to it)",
        ),
        run.add_argument(
            "-n",
            "--no-stdin",
            action="store_true",
            help="send no stdin, as ssh -n (for a stdin that never ends, such as a loop's)",
        ),
        run.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object per host when it ends, instead of its output lines",
        ),
        run.add_argument(
            "--split-fan-out",
            action="store_true",
            help="many hosts: one call per host, for a --target that is a proxy routing by host",
        ),
    ]

    attach = commands.add_parser(
        "attach",
        parents=[connection],
        usage="scout attach [OPTIONS] HOST KEY",
        help="join a command started with --idempotency-key: its output so far, then live",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Prints the output the server kept of the command this caller started on HOST\n"
            "with KEY, then its live output, and exits with its exit code as scout exec does.\n"
            "The first Ctrl-C sends INT to the command; a second one leaves (a command\n"
            "started with --detach-grace keeps running)."
        ),
        epilog=f"{exitcodes.help_table()}\n\n{examples.ATTACH}",
    )
    attach.add_argument("host", metavar="HOST", help="the host the command runs on")
    attach.add_argument(  # not "key": --key is the client key's option
        "idempotency_key", type=_key, metavar="KEY", help="the command's --idempotency-key"
    )
    attach.add_argument(
        "--stdout-offset",
        type=_offset,
        default=0,
        metavar="N",
        help="skip the first N bytes of stdout (you have them already; default 0: all kept)",
    )
    attach.add_argument(
        "--stderr-offset", type=_offset, default=0, metavar="N", help="the same for stderr"
    )

    cpcli.add_parser(commands, connection)
    hosts = commands.add_parser(
        "hosts",
        parents=[connection],
        usage="scout hosts [OPTIONS] [HOST|GLOB|!EXCLUDED...] [SELECTOR | -l SELECTOR] [--json]",
        help="list the server's inventory hosts",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Names and globs pick hosts as for scout exec (!NAME or !GLOB excludes); a word\n"
            "with =, a comma, a parenthesis or a space is the label selector."
        ),
        epilog=examples.HOSTS,
    )
    hosts.add_argument(
        "words",
        nargs="*",
        metavar="HOST|GLOB|SELECTOR",
        help="only the hosts these names, globs and selector pick (all without any)",
    )
    hosts.add_argument(
        "-l",
        "--selector",
        default="",
        metavar="SELECTOR",
        help="also the hosts this label selector picks",
    )
    hosts.add_argument("--json", action="store_true", help="print one JSON object per host")
    hosts.add_argument("--names", action="store_true", help=argparse.SUPPRESS)  # completion

    health = commands.add_parser(
        "health",
        parents=[connection],
        help="print the server's health status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples.HEALTH,
    )
    health.add_argument("--service", default="", help="service name (default: the server)")

    mcp = commands.add_parser(
        "mcp",
        parents=[connection],
        help="serve scout's tools to AI assistants (Model Context Protocol)",
        description="An MCP server in front of the scout server, acting as this caller: "
        "stdio by default (for Claude Desktop, Claude Code, ...).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples.MCP,
    )
    mcp.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (loopback only)",
    )
    mcp.add_argument(
        "--max-output",
        type=_positive_count,
        default=64 * 1024,
        metavar="BYTES",
        help="cut each command's stdout and stderr at BYTES for the assistant (default 65536)",
    )
    mcp.add_argument(
        "--local-files",
        type=Path,
        metavar="DIR",
        help="let copy_file read and write this machine's files under DIR (default: none)",
    )

    shells = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples.COMPLETION,
    )
    shells.add_argument("shell", choices=completion.SHELLS, help="the shell to complete in")
    return parser, run, _ExecOptionNames([*connection_actions, *run_actions])


def _separator(words: Sequence[str], names: _ExecOptionNames) -> int | None:
    """Find the `--` that ends a list of hosts: every word before it is ours or a host.

    A word that looks like an option but is not one of ours means the command has
    begun (`ls -la -- x`), so that `--` is the command's, and None is returned.
    """
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return index
        if word.startswith("-") and word != "-":
            if not names.is_ours(word):
                return None
            index += 2 if word in names.take_value else 1
            continue
        index += 1
    return None


def split_exec_words(
    words: Sequence[str], names: _ExecOptionNames
) -> tuple[list[str], list[str], list[str], bool]:
    """Split exec's words into (options, hosts, command, whether a "--" ended the hosts).

    With a `--` whose every earlier word is ours or a host, the words before it
    that are not options are hosts. Otherwise the first such word is the one host,
    and the command begins at the next one (or after a `--` right behind the host).
    """
    separator = _separator(words, names)
    options: list[str] = []
    hosts: list[str] = []
    index = 0
    end = len(words) if separator is None else separator
    while index < end:
        word = words[index]
        if word == "--":  # before the command, without a host list: today's rule
            return options, hosts, list(words[index + 1 :]), True
        if word.startswith("-") and word != "-":
            width = 2 if word in names.take_value else 1  # "--env=A=1" carries its value
            options.extend(words[index : index + width])
            index += width
            continue
        if separator is None and hosts:
            return options, hosts, list(words[index:]), False
        hosts.append(word)
        index += 1
    if separator is not None:
        return options, hosts, list(words[separator + 1 :]), True
    return options, hosts, [], False


def join_command(words: Sequence[str]) -> str:
    """Join COMMAND words like ssh: one word as is (a shell line), several quoted."""
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; exits with usage (status 2) on a mistake.

    For exec: args.hosts (names or globs), args.command (one string; "" with --argv),
    args.argv (the words, with --argv; else None), args.env (a dict), and args.fan_out,
    which says whether the run goes through ExecuteMany.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    parser, run, names = _parser()
    hosts: list[str] = []
    tail: list[str] = []
    dashes = False
    if words[:1] == ["exec"]:
        options, hosts, tail, dashes = split_exec_words(words[1:], names)
        words = ["exec", *options]
    elif "--" in words:
        cut = words.index("--")
        if words[cut + 1 :]:
            parser.error(f"unexpected arguments after --: {shlex.join(words[cut + 1 :])}")
        words = words[:cut]
    args = parser.parse_args(words)
    if args.action == "completion":
        return args  # no server to reach
    try:
        _resolve_settings(args, os.environ)
    except ProfileError as err:
        parser.error(str(err))
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together (mutual TLS needs both)")
    if args.action == "exec":
        _check_exec(run, args, hosts, tail, dashes)
    if args.action == "hosts":
        _check_hosts(parser, args)
    return args


def _is_selector(word: str) -> bool:
    """Say whether a `scout hosts` word is a label selector rather than a host or glob:
    host names have no `=`, comma, parenthesis or space, and selectors need one of them
    (`role=web`, `a,b`, `region in (eu)`) but for a bare `KEY` or `!KEY` (use -l)."""
    return any(c in word for c in "=,() \t")


def _check_hosts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Split `scout hosts` words into names and globs, and at most one selector."""
    selectors = [word for word in args.words if _is_selector(word)]
    if args.selector:
        selectors.insert(0, args.selector)
    if len(selectors) > 1:
        parser.error(
            f"one label selector at most, got {len(selectors)}: join them with a comma "
            "(role=web,region=eu)"
        )
    args.selector = selectors[0] if selectors else ""
    args.hosts = [word for word in args.words if not _is_selector(word)]


def _resolve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Fill the connection settings not given as flags (client/profiles.py)."""
    flags = {name: getattr(args, name) for name in ("target", "tls", "ca", "cert", "key")}
    settings = resolve({**flags, "token_file": args.token_file}, args.profile, environ)
    args.target = settings.target or DEFAULT_TARGET
    args.tls = settings.tls
    args.ca, args.cert, args.key = settings.ca, settings.cert, settings.key
    args.token_file = settings.token_file
    args.origin = settings.origin


def _check_exec(
    run: argparse.ArgumentParser,
    args: argparse.Namespace,
    hosts: list[str],
    tail: list[str],
    dashes: bool,
) -> None:
    """Complete exec's arguments from the scanned words, refusing what cannot run."""
    if args.selector and not dashes:
        run.error("-l needs -- before the command: scout exec -l SELECTOR [HOST...] -- COMMAND...")
    if not hosts and not args.selector:
        run.error("missing HOST (or -l SELECTOR): scout exec HOST -- COMMAND...")
    if not tail:
        run.error("missing COMMAND after the hosts: scout exec HOST -- COMMAND...")
    args.hosts = hosts
    args.command = "" if args.argv else join_command(tail)
    args.argv = tail if args.argv else None
    args.env = dict(args.env)
    args.fan_out = bool(
        len(hosts) > 1 or any(is_pattern(h) for h in hosts) or args.selector or args.json
    )
    args.idempotency_key = args.idempotency_key or ""
    if args.detach_grace is not None and not args.idempotency_key:
        run.error("--detach-grace needs --idempotency-key KEY (the key `scout attach` finds it by)")
    if args.fan_out and args.tty:
        run.error(
            "--tty runs one command on our terminal: it needs one host "
            "(no second host, glob, -l or --json)"
        )


def client_for(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Client:
    """Make the Client the settings describe; SettingError names a file that cannot be read.

    The token comes from the token file if one was given, else from $SCOUT_TOKEN;
    surrounding whitespace (a file's final newline) is not part of it.
    """
    env = os.environ if environ is None else environ
    origin = getattr(args, "origin", {})
    if args.token_file is not None:
        try:
            token: str | None = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise unreadable("token_file", args.token_file, err, origin) from None
        if not token:
            raise SettingError(f"the token file {args.token_file} is empty")
    else:
        token = env.get(TOKEN_ENV, "").strip() or None
    tls = None
    if args.tls or args.ca is not None or args.cert is not None:
        tls = TLS(ca_file=args.ca, cert_file=args.cert, key_file=args.key)
    split = bool(getattr(args, "split_fan_out", False))  # exec's option only
    # A keyed call cannot run twice: retry it, and re-attach a stream whose connection
    # dropped. The command outlives us only for the --detach-grace asked for.
    keyed = bool(getattr(args, "idempotency_key", "")) or args.action == "attach"
    retry = RetryPolicy(detach_grace=None) if keyed else None
    try:
        return Client(args.target, token=token, tls=tls, split_fan_out=split, retry=retry)
    except OSError as err:  # a TLS file: name it by its flag
        named = [k for k in ("ca", "cert", "key") if str(getattr(args, k)) == err.filename]
        raise unreadable(named[0] if named else "ca", Path(err.filename), err, origin) from None
    except ValueError as err:  # the token's characters; the message never quotes it
        raise SettingError(str(err)) from None


def exit_code_for(status: ExitStatus) -> int:
    """Turn the remote outcome into our exit status: the code, or 128+N for signal N."""
    if status.signal:
        name = status.signal.upper().removeprefix("SIG")
        try:
            return 128 + signal.Signals["SIG" + name].value
        except KeyError:
            return EXIT_SCOUT_FAILED
    if 0 <= status.exit_code <= 255:
        return status.exit_code
    return EXIT_SCOUT_FAILED


def _pump_stdin(fd: int, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """Read stdin in a daemon thread: a blocked read must not hold up our exit."""
    while True:
        try:
            data = os.read(fd, STDIN_CHUNK)
        except OSError:
            data = b""  # an unreadable stdin ends like an empty one
        put = queue.put(data)
        try:
            handed = asyncio.run_coroutine_threadsafe(put, loop)
        except RuntimeError:
            put.close()
            return  # the loop is closed: nobody wants the rest
        while True:
            try:
                handed.result(timeout=STDIN_HANDOFF_POLL)
                break
            except concurrent.futures.TimeoutError:
                if loop.is_closed():
                    return
            except concurrent.futures.CancelledError:
                return  # the loop cancelled our put while shutting down
        if not data:
            return


async def _forward_stdin(call: StreamCall, fd: int) -> None:
    """Copy local stdin to the remote command, then send EOF."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(STDIN_QUEUE_CHUNKS)
    loop = asyncio.get_running_loop()
    reader = threading.Thread(
        target=_pump_stdin, args=(fd, loop, queue), name="scout-stdin", daemon=True
    )
    reader.start()
    try:
        while data := await queue.get():
            await call.write(data)
        await call.close_stdin()
    except ScoutError:
        return  # the output loop reads the same failure and reports it once


def _stdin_fd(stdin: BinaryIO | None) -> int | None:
    """Return stdin's descriptor when it should be forwarded; None for a terminal or none."""
    if stdin is None or stdin.closed:
        return None
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):
        return None
    return None if os.isatty(fd) else fd


class _Interrupts:
    """Ctrl-C policy: first INT to the remote command, then cancel the call."""

    def __init__(self, call: StreamCall, task: asyncio.Task[int]) -> None:
        """Remember what to signal and what to cancel."""
        self._call = call
        self._task = task
        self._count = 0
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self) -> None:
        """Handle one SIGINT from the event loop."""
        self._count += 1
        if self._count == 1:
            sender = asyncio.ensure_future(self._send_int())
            self._pending.add(sender)
            sender.add_done_callback(self._pending.discard)
        else:
            self._task.cancel()

    async def _send_int(self) -> None:
        """Send INT, or cancel when the call can no longer take it."""
        try:
            await self._call.signal("INT")
        except (ScoutError, RuntimeError):
            self._task.cancel()


def _install_sigint(handler: _Interrupts) -> bool:
    """Take over Ctrl-C where asyncio allows it (main thread, Unix)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


def _terminal_size(stream: BinaryIO) -> tuple[int, int] | None:
    """Our terminal's (columns, rows) for --tty, when stdout is a terminal."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):  # not a terminal, or no descriptor (io.BytesIO)
        return None
    return size.columns, size.lines


async def run_exec(
    client: Client,
    args: argparse.Namespace,
    stdin: BinaryIO | None,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> int:
    """Stream one command and return our exit status; Execute when Stream is not allowed."""
    fd = None if args.no_stdin else _stdin_fd(stdin)
    fields: dict[str, Any] = {
        "max_output_bytes": args.max_output,
        "argv": args.argv,
        "env": args.env,
        "timeout": args.timeout,
        "working_dir": args.cwd,
        "pty": args.tty,
        "terminal_size": _terminal_size(stdout) if args.tty else None,
        "idempotency_key": args.idempotency_key,
        "detach_grace": args.detach_grace,
    }
    async with client.stream(
        args.hosts[0],
        args.command,
        close_stdin=fd is None,  # no input to forward: EOF travels with the start
        **fields,
    ) as call:
        try:
            await call.started()  # a refusal comes before any stdin is read
        except NotAllowed as err:
            if STREAM_REFUSED not in err.message:
                raise
            if args.verbose:
                stderr.write(b"scout: Stream is not allowed; using Execute (output at the end)\n")
            return await _run_execute(client, args, fd, fields, stdout=stdout, stderr=stderr)
        status = await _print_events(call, fd, stdout, stderr)
    return _stream_exit(call, status, stderr)


async def _print_events(
    call: StreamCall, fd: int | None, stdout: BinaryIO, stderr: BinaryIO
) -> ExitStatus | None:
    """Copy a stream's output to ours (and fd to its stdin) until it ends, with Ctrl-C
    sending INT first and cancelling second; return how the command ended."""
    status: ExitStatus | None = None
    task = asyncio.current_task()
    assert task is not None  # we run inside asyncio.run
    interrupts = _Interrupts(call, task)
    installed = _install_sigint(interrupts)
    feeder: asyncio.Task[None] | None = None
    try:
        if fd is not None:
            feeder = asyncio.create_task(_forward_stdin(call, fd))
        async for event in call:
            if isinstance(event, Stdout):
                stdout.write(event.data)
                stdout.flush()
            elif isinstance(event, Stderr):
                stderr.write(event.data)
                stderr.flush()
            elif isinstance(event, Lost):
                line = f"scout: {event.bytes} bytes of {event.stream} were lost (no longer kept)\n"
                stderr.write(line.encode())
                stderr.flush()
            elif isinstance(event, Exit):
                status = event.status
    finally:
        if feeder is not None:
            feeder.cancel()
        if installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    return status


def _stream_exit(call: StreamCall, status: ExitStatus | None, stderr: BinaryIO) -> int:
    """Our exit code for a stream that ended: the command's, or 255 without its status;
    a replayed outcome is said on stderr (nothing ran now)."""
    if status is None:
        stderr.write(b"scout: the server ended the stream without an exit status\n")
        return EXIT_SCOUT_FAILED
    if call.replayed:
        stderr.write(
            f"scout: the command with key {call.idempotency_key} had already ended; "
            "this is its recorded output (nothing ran now)\n".encode(errors="replace")
        )
    _say_cut(status, stderr)
    return exit_code_for(status)


async def run_attach(
    client: Client, args: argparse.Namespace, stdout: BinaryIO, stderr: BinaryIO
) -> int:
    """Join a keyed command: its kept output, then live; our exit is its exit code."""
    async with client.attach(
        args.host,
        args.idempotency_key,
        stdout_offset=args.stdout_offset,
        stderr_offset=args.stderr_offset,
    ) as call:
        status = await _print_events(call, None, stdout, stderr)
    if status is not None and call.replayed:
        _say_cut(status, stderr)  # attaching to an ended command is what was asked
        return exit_code_for(status)
    return _stream_exit(call, status, stderr)


def _say_cut(status: ExitStatus, stderr: BinaryIO) -> None:
    """One host: say on stderr which output was cut at the cap, never silently (the exit
    code stays the command's own)."""
    for name in ("stdout", "stderr"):
        if getattr(status, f"{name}_truncated"):
            total = getattr(status, f"{name}_bytes")
            line = f"scout: {name} cut at the output cap ({total} bytes written in all)\n"
            stderr.write(line.encode())
    stderr.flush()


def _read_all(fd: int) -> bytes:
    """All of stdin, for Execute's request (the server bounds its size)."""
    chunks = []
    while data := os.read(fd, STDIN_CHUNK):
        chunks.append(data)
    return b"".join(chunks)


async def _run_execute(
    client: Client,
    args: argparse.Namespace,
    fd: int | None,
    fields: Mapping[str, Any],
    *,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> int:
    """Run the command through Execute: stdin sent whole, output written at the end."""
    data = b"" if fd is None else await asyncio.to_thread(_read_all, fd)
    result: Result = await client.execute(args.hosts[0], args.command, stdin=data, **fields)
    stdout.write(result.stdout)
    stdout.flush()
    stderr.write(result.stderr)
    stderr.flush()
    _say_cut(result, stderr)
    return exit_code_for(result)


async def run_health(client: Client, args: argparse.Namespace, stdout: BinaryIO) -> int:
    """Print the health status (of --service NAME, by name); exit 0 only when SERVING."""
    status = await client.health(args.service)
    line = f"{args.service}: {status}" if args.service else status
    stdout.write(f"{line}\n".encode(errors="replace"))
    stdout.flush()
    return 0 if status == "SERVING" else 1


def _completion_options() -> dict[str, list[completion.Option]]:
    """Each subcommand's options as the completion scripts offer them (hidden ones not)."""
    parser, _, _ = _parser()
    commands: dict[str, list[completion.Option]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                commands[name] = [
                    completion.Option(tuple(a.option_strings), a.nargs != 0)
                    for a in sub._actions
                    if a.option_strings and a.help != argparse.SUPPRESS
                ]
    return commands


def _host_listing(args: argparse.Namespace) -> HostListing:
    """What `scout hosts` asks for and how it prints it."""
    if args.names:
        return HostListing(hosts=args.hosts, selector=args.selector, output="names")
    return HostListing(
        hosts=args.hosts, selector=args.selector, output="json" if args.json else "table"
    )


def _context(args: argparse.Namespace, client: Client) -> Context:
    """What explain() needs to word a failure of this command line."""
    return Context(
        target=args.target,
        action=args.action,
        fan_out=bool(getattr(args, "fan_out", False)),
        ca=args.ca,
        token_sent=client.has_token,
        origin=getattr(args, "origin", {}),
    )


def _fan_out_options(args: argparse.Namespace, stdin: bytes) -> FanOutOptions:
    """What a fan-out needs from exec's arguments (stdin read whole; no pty)."""
    return FanOutOptions(
        hosts=args.hosts,
        selector=args.selector,
        command=args.command,
        argv=args.argv,
        max_parallel=args.max_parallel,
        max_failures=args.max_failures,
        json_lines=args.json,
        exec_fields={
            "env": args.env,
            "timeout": args.timeout,
            "working_dir": args.cwd,
            "stdin": stdin,
            "max_output_bytes": args.max_output,
            "idempotency_key": args.idempotency_key,
            "detach_grace": args.detach_grace,
        },
    )


async def _fan_out_stdin(args: argparse.Namespace, stdin: BinaryIO | None) -> bytes:
    """Our stdin for every host of a fan-out (client/fanoutinput.py): none for a
    terminal or -n; StdinTooLarge beyond the bound."""
    fd = None if args.no_stdin else _stdin_fd(stdin)
    return b"" if fd is None else await asyncio.to_thread(read_bounded, fd)


async def amain(
    argv: Sequence[str] | None,
    *,
    stdin: BinaryIO | None,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> int:
    """Run the CLI on given streams (tests pass their own) and return the exit status."""
    args = parse_args(argv)
    if args.action == "completion":
        stdout.write(completion.script(args.shell, _completion_options()).encode())
        stdout.flush()
        return 0
    if args.action == "mcp":
        return await _mcp(args, stderr)
    try:
        client = client_for(args)
    except SettingError as err:  # names the file and its flag, never the token
        stderr.write(f"scout: {err}\n".encode(errors="replace"))
        stderr.flush()
        return exitcodes.NOTHING_RAN
    try:
        async with client:
            if args.action == "health":
                return await run_health(client, args, stdout)
            if args.action == "hosts":
                return await run_hosts(client, _host_listing(args), stdout, stderr)
            if args.action == "cp":
                return await cpcli.run_cp(client, args, stdout, stderr)
            if args.action == "attach":
                return await run_attach(client, args, stdout, stderr)
            if args.fan_out:
                try:
                    data = await _fan_out_stdin(args, stdin)
                except StdinTooLarge as err:
                    stderr.write(f"scout: {err} (nothing ran)\n".encode())
                    stderr.flush()
                    return exitcodes.NOTHING_RAN
                options = _fan_out_options(args, data)
                return await run_fanout(client, options, stdout, stderr)
            return await run_exec(client, args, stdin, stdout, stderr)
    except ScoutError as err:
        line, code = explain(err, _context(args, client))
        stderr.write(f"scout: {line}\n".encode(errors="replace"))
        stderr.flush()
        return code
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE


async def _mcp(args: argparse.Namespace, stderr: BinaryIO) -> int:
    """Serve MCP until the assistant goes away; usage mistakes exit 2, as argparse's do."""

    def say(text: str, code: int) -> int:
        stderr.write(f"scout mcp: {text}\n".encode(errors="replace"))
        stderr.flush()
        return code

    try:  # lazy on purpose: the optional mcp extra, needed by this command only
        from . import mcpserver, mcptools
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in ("mcp", "mcp_types", "pydantic"):
            raise
        return say(
            "needs the MCP SDK, an optional extra: pip install 'scout[mcp]' "
            "(or pip install 'mcp>=2.3,<3')",
            2,
        )
    try:
        http = mcpserver.check_http_listen(args.http) if args.http else None
        client = client_for(args)
    except (OSError, ValueError) as err:  # names the file, never the token
        return say(str(err), 2)
    async with client:
        settings = mcptools.Settings(max_output=args.max_output, local_root=args.local_files)
        await mcpserver.serve(client, settings, http)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scout` console script."""
    keep_freed_memory()  # `scout cp` moves files as 1 MiB messages
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    verbose = getattr(parse_args(argv), "verbose", False)  # usage mistakes exit here
    stderr = sys.stderr.buffer if verbose else hide_native_logs()
    code = asyncio.run(amain(argv, stdin=stdin, stdout=sys.stdout.buffer, stderr=stderr))
    if code == EXIT_BROKEN_PIPE:
        # Python flushes stdout again at exit; point it at /dev/null so that
        # flush cannot fail loudly on the pipe that is already gone.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


if __name__ == "__main__":
    sys.exit(main())
