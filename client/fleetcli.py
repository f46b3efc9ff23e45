"""The `scout` command's fleet side: `scout exec` on many hosts, and `scout hosts`.

A fan-out prints each host's output as it comes, every line whole and
prefixed with its host (`web1 | ...`), stdout to stdout and stderr to stderr;
a host's unfinished last line is completed when that host ends, and a line
longer than MAX_LINE is cut into prefixed pieces so that memory stays bounded.
A host whose output reached the server's cap gets a note on stderr saying so
(its last line may be cut mid-way). A host that did not exit 0 gets a line on
stderr when it ends; a summary on stderr ends the run. With --json, each host's
outcome is one JSON object on stdout instead (OUTCOME_KEYS). When stderr is a
terminal, a progress line there counts the hosts (client/fanoutstatus.py); the
total comes from ListHosts, asked alongside, which also names the hosts that
Ctrl-C stopped.

The exit status is the worst failure class among the hosts (FailureClass, in the
order of SEVERITY; OUTPUT_CUT when every command exited 0 but some output was
cut), or 125 or 255 when the call itself failed (cli.py says so and exits;
client/exitcodes.py has the table).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from .aio import Client
from .errors import CommandTimeout, ScoutError
from .exitcodes import MAY_HAVE_RUN, OUTPUT_CUT, TIMED_OUT
from .fanoutstatus import NOT_STARTED, OK, Tally
from .fleet import Host, HostOutcome, HostOutput, excluded, host_fields, is_pattern
from .results import Result

__all__ = [
    "HOST_COLUMNS",
    "MAX_LINE",
    "OUTCOME_KEYS",
    "FailureClass",
    "FanOutOptions",
    "HostListing",
    "failure_class",
    "host_record",
    "hosts_table",
    "outcome_record",
    "run_fanout",
    "run_hosts",
]

MAX_LINE = 64 * 1024  # a longer line is printed in pieces, each with the host prefix
CLEAR_LINE = b"\r\x1b[K"
OUTCOME_KEYS = (
    "host",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "error",
    "may_have_run",
)
HOST_COLUMNS = ("NAME", "ADDRESS", "PORT", "USER", "LABELS", "VIA", "CONNECTIONS", "CHANNELS")


class FailureClass(enum.IntEnum):
    """How a host's run went; its value is the exit code. The fan-out exits with the
    worst one seen, in the order of SEVERITY (not of the values)."""

    OK = 0  # exited 0
    OUTPUT_CUT = OUTPUT_CUT  # exited 0, but its output reached the output cap (4)
    EXITED_NON_ZERO = 1  # the command exited with a non-zero status
    KILLED = 2  # a signal ended it
    NOT_RUN = 3  # scout could not run it there, or lost track of it (any other status)
    TIMED_OUT = TIMED_OUT  # it ran past --timeout and the server stopped it (124)


SEVERITY = (
    FailureClass.OK,
    FailureClass.OUTPUT_CUT,
    FailureClass.EXITED_NON_ZERO,
    FailureClass.KILLED,
    FailureClass.TIMED_OUT,
    FailureClass.NOT_RUN,
)

_GROUPS = {  # the summary's word for each class (fanoutstatus.GROUPS)
    FailureClass.OK: OK,
    FailureClass.OUTPUT_CUT: OK,  # it exited 0; the cut is counted on its own
    FailureClass.EXITED_NON_ZERO: "exited non-zero",
    FailureClass.KILLED: "killed by a signal",
    FailureClass.TIMED_OUT: "timed out",
    FailureClass.NOT_RUN: "could not run",
}


def _cut_streams(outcome: HostOutcome) -> list[str]:
    """The streams of a host's output that reached the output cap."""
    if isinstance(outcome, ScoutError):
        return []
    return [name for name in ("stdout", "stderr") if getattr(outcome, f"{name}_truncated")]


def failure_class(outcome: HostOutcome) -> FailureClass:
    """Classify one host's outcome for the exit status and the summary."""
    if isinstance(outcome, CommandTimeout):
        return FailureClass.TIMED_OUT
    if isinstance(outcome, ScoutError):
        return FailureClass.NOT_RUN
    if outcome.signal:
        return FailureClass.KILLED
    if outcome.exit_code != 0:
        return FailureClass.EXITED_NON_ZERO
    if _cut_streams(outcome):
        return FailureClass.OUTPUT_CUT
    return FailureClass.OK


def _not_started(outcome: HostOutcome) -> bool:
    """Whether a host was never started because max_failures was reached (ABORTED,
    nothing ran: the server's, and the split fan-out's, answer for it)."""
    return (
        isinstance(outcome, ScoutError) and outcome.code == "ABORTED" and not outcome.may_have_run
    )


def outcome_record(outcome: HostOutcome) -> dict[str, Any]:
    """One host's outcome as the JSON object --json prints (keys: OUTCOME_KEYS)."""
    if isinstance(outcome, ScoutError):
        return {
            "host": outcome.host,
            "exit_code": None,
            "signal": None,
            "stdout": "",
            "stderr": "",
            "stdout_truncated": False,
            "stderr_truncated": False,
            "error": {"code": outcome.code, "message": outcome.message},
            "may_have_run": outcome.may_have_run,
        }
    return {
        "host": outcome.host,
        "exit_code": outcome.exit_code,
        "signal": outcome.signal or None,  # null for a normal exit, as for an error
        "stdout": outcome.stdout.decode(errors="replace"),
        "stderr": outcome.stderr.decode(errors="replace"),
        "stdout_truncated": outcome.stdout_truncated,
        "stderr_truncated": outcome.stderr_truncated,
        "error": None,
        "may_have_run": True,
    }


def _what_happened(outcome: HostOutcome) -> str:
    """A host's failure in words, for its stderr line."""
    if isinstance(outcome, CommandTimeout):
        return str(outcome)  # "...ran past its timeout (2s) and was stopped": it ran
    if isinstance(outcome, ScoutError):
        ran = "may have run" if outcome.may_have_run else "did not run"
        return f"{outcome} (the command {ran})"
    if outcome.signal:
        return f"killed by signal {outcome.signal}"
    return f"exited with status {outcome.exit_code}"


def _is_terminal(stream: BinaryIO) -> bool:
    """Say whether a stream is a terminal (io.BytesIO and closed streams are not)."""
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError):
        return False


@dataclass(frozen=True, kw_only=True)
class FanOutOptions:
    """What `scout exec` passes on for a fan-out (parsed by cli.py)."""

    hosts: Sequence[str]
    selector: str
    command: str
    max_parallel: int
    json_lines: bool
    exec_fields: Mapping[str, Any]  # Client.execute_many's ExecOptions fields
    argv: Sequence[str] | None = None  # instead of command (scout exec --argv)
    max_failures: int = 0  # start no new host after this many failed (0: no limit)


class _Progress:
    """The progress line on a terminal: cleared before other output, drawn again after."""

    def __init__(self, stream: BinaryIO) -> None:
        """Draw on stream (our stderr, a terminal)."""
        self._stream = stream
        self._shown = False

    def hide(self) -> None:
        """Clear the line, so output does not land in the middle of it."""
        if self._shown:
            self._stream.write(CLEAR_LINE)
            self._stream.flush()
            self._shown = False

    def show(self, text: str) -> None:
        """Draw the counts in place (no newline)."""
        self._stream.write(CLEAR_LINE + text.encode())
        self._stream.flush()
        self._shown = True


class _Printer:
    """Everything a fan-out prints, host by host, and what it remembers for the summary."""

    def __init__(
        self,
        stdout: BinaryIO,
        stderr: BinaryIO,
        json_lines: bool,
        progress: _Progress | None,
        tally: Tally,
    ) -> None:
        """Print to stdout and stderr; a progress line only when given one."""
        self._out = stdout
        self._err = stderr
        self._json = json_lines
        self._progress = progress
        self._stdout_is_terminal = _is_terminal(stdout)
        self._partial: dict[tuple[str, str], bytes] = {}
        self._shown: dict[tuple[str, str], int] = {}  # bytes of output printed, per stream
        self.tally = tally
        self.outcomes: list[tuple[str, FailureClass]] = []

    def _write(self, stream: BinaryIO, data: bytes) -> None:
        """Write whole lines, clearing the progress line first when they share the terminal."""
        if self._progress is not None and (stream is self._err or self._stdout_is_terminal):
            self._progress.hide()
        stream.write(data)
        stream.flush()

    def _stream(self, name: str) -> BinaryIO:
        """Our stream for a remote one: stdout to stdout, stderr to stderr."""
        return self._out if name == "stdout" else self._err

    def output(self, host: str, name: str, data: bytes) -> None:
        """Print the complete lines of a chunk with the host prefix; keep the rest."""
        self.tally.heard.add(host)
        self._shown[host, name] = self._shown.get((host, name), 0) + len(data)
        buffered = self._partial.pop((host, name), b"") + data
        lines = buffered.split(b"\n")
        rest = lines.pop()
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        if rest:
            self._partial[host, name] = rest
        if lines:
            prefix = f"{host} | ".encode(errors="replace")
            self._write(self._stream(name), b"".join(prefix + line + b"\n" for line in lines))

    def _finish_lines(self, host: str) -> None:
        """End the host's unfinished lines: nothing more will come from it."""
        for name in ("stdout", "stderr"):
            if (host, name) in self._partial:
                prefix = f"{host} | ".encode(errors="replace")
                self._write(self._stream(name), prefix + self._partial.pop((host, name)) + b"\n")

    def _cut_notes(self, outcome: Result) -> None:
        """Say on stderr where a host's output was cut, and how much was not shown."""
        for name in _cut_streams(outcome):
            shown = self._shown.get((outcome.host, name), 0)
            total = getattr(outcome, f"{name}_bytes")
            line = (
                f"{outcome.host} | scout: {name} cut at the output cap after {shown} of "
                f"{total} bytes (its last line may be cut short; one host alone streams "
                "all of it: scout exec HOST -- ...)\n"
            )
            self._write(self._err, line.encode(errors="replace"))

    def outcome(self, outcome: HostOutcome) -> None:
        """Print one host's end: its JSON object, or its last lines and a failure note."""
        host = outcome.host
        kind = failure_class(outcome)
        self.outcomes.append((host, kind))
        group = NOT_STARTED if _not_started(outcome) else _GROUPS[kind]
        self.tally.end(host, group, _cut_streams(outcome))
        if self._json:
            line = json.dumps(outcome_record(outcome), ensure_ascii=False) + "\n"
            self._write(self._out, line.encode(errors="replace"))
            return
        if isinstance(outcome, Result):  # a server that did not stream its output
            self.output(host, "stdout", outcome.stdout)
            self.output(host, "stderr", outcome.stderr)
        self._finish_lines(host)
        if isinstance(outcome, Result):
            self._cut_notes(outcome)
        if kind not in (FailureClass.OK, FailureClass.OUTPUT_CUT):
            line = f"{host} | scout: {_what_happened(outcome)}\n"
            self._write(self._err, line.encode(errors="replace"))

    def finish(self) -> None:
        """End every unfinished line (the call ended) and clear the progress line for good."""
        for host, _ in list(self._partial):
            self._finish_lines(host)
        if self._progress is not None:
            self._progress.hide()
            self._progress = None  # a late redraw (the ListHosts callback) draws nothing

    def show_progress(self) -> None:
        """Redraw the progress line with the counts so far."""
        if self._progress is not None:
            self._progress.show(self.tally.progress())

    def exit_status(self) -> int:
        """The worst failure class seen (SEVERITY), as its exit code."""
        return max((kind for _, kind in self.outcomes), default=FailureClass.OK, key=SEVERITY.index)


TARGETS_WAIT = 2.0  # after Ctrl-C, how long the summary waits for ListHosts' answer


async def _count_targets(client: Client, options: FanOutOptions, tally: Tally) -> None:
    """Learn the fan-out's targets, for the progress line's counts and, after Ctrl-C,
    the hosts stopped.

    ListHosts gives the names the patterns and selector pick; literal names that
    are not in the inventory are targets too (they end with NOT_FOUND), unless an
    exclusion removes them. If the call fails (a caller allowed to run commands but
    not to list hosts), there is no total.
    """
    with contextlib.suppress(ScoutError):
        listed = await client.list_hosts(options.selector, options.hosts)
        names = {host.name for host in listed}
        names.update(
            name
            for name in options.hosts
            if not is_pattern(name) and not excluded(name, options.hosts)
        )
        tally.targets = names


async def run_fanout(
    client: Client, options: FanOutOptions, stdout: BinaryIO, stderr: BinaryIO
) -> int:
    """Run one command on many hosts through ExecuteMany; return the highest failure class.

    The call's own failure raises ScoutError after the summary of what was heard.
    """
    progress = _Progress(stderr) if _is_terminal(stderr) else None
    tally = Tally(parallel=options.max_parallel)
    printer = _Printer(stdout, stderr, options.json_lines, progress, tally)
    counter = asyncio.create_task(_count_targets(client, options, tally))
    counter.add_done_callback(lambda _: printer.show_progress())
    call = client.execute_many(
        options.hosts,
        options.command,
        argv=options.argv,
        selector=options.selector,
        max_parallel=options.max_parallel,
        max_failures=options.max_failures,
        stream_output=not options.json_lines,  # JSON wants each host's output whole
        **options.exec_fields,
    )
    ended = ""  # how the call ended, when not by failing before any host was heard
    try:
        printer.show_progress()
        async with call:
            async for event in call:
                if isinstance(event, HostOutput):
                    printer.output(event.host, event.stream, event.data)
                else:
                    printer.outcome(event)
                printer.show_progress()
        ended = "done"
    except asyncio.CancelledError:
        ended = "interrupted"
        raise
    finally:
        if ended == "interrupted" and not counter.done():
            # The hosts stopped are the targets not heard from: give ListHosts a moment.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({counter}, timeout=TARGETS_WAIT)
        counter.cancel()
        printer.finish()
        if ended or printer.outcomes:
            stderr.write(tally.summary(interrupted=ended == "interrupted"))
        if ended == "interrupted":
            stderr.write(b"scout: interrupted; the server stops the commands still running\n")
        stderr.flush()
    if not printer.outcomes:
        stderr.write(b"scout: the server reported no host\n")
        stderr.flush()
        return MAY_HAVE_RUN
    return printer.exit_status()


def _label_text(labels: Mapping[str, str]) -> str:
    """Labels as k=v,k=v in key order, "-" for none."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


def host_record(host: Host) -> dict[str, Any]:
    """One host as the JSON object `scout hosts --json` prints."""
    return {
        **host_fields(host),
        "connections_open": host.connections_open,
        "channels_in_use": host.channels_in_use,
    }


def hosts_table(hosts: Sequence[Host]) -> str:
    """The inventory as aligned columns (HOST_COLUMNS), "-" for an empty cell."""
    rows = [list(HOST_COLUMNS)]
    for host in hosts:
        rows.append(
            [
                host.name,
                host.address or "-",
                str(host.port) if host.port else "-",
                host.user or "-",
                _label_text(host.labels),
                ",".join(host.via) or "-",
                str(host.connections_open),
                str(host.channels_in_use),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HOST_COLUMNS))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )


@dataclass(frozen=True, kw_only=True)
class HostListing:
    """What `scout hosts` asks for (parsed by cli.py), and how it prints the answer."""

    hosts: Sequence[str] = ()  # names, globs, exclusions
    selector: str = ""
    output: Literal["table", "json", "names"] = "table"  # names: one a line (completion)


async def run_hosts(
    client: Client, listing: HostListing, stdout: BinaryIO, stderr: BinaryIO
) -> int:
    """Print the hosts the names, globs and selector pick (all without any) as a table,
    JSON lines or bare names. A name given that is not listed is said on stderr, and
    the exit status is then 1 (as grep's when something was not found)."""
    hosts = await client.list_hosts(listing.selector, listing.hosts)
    if listing.output == "json":
        text = "".join(json.dumps(host_record(h), ensure_ascii=False) + "\n" for h in hosts)
    elif listing.output == "names":
        text = "".join(f"{h.name}\n" for h in hosts)
    else:
        text = hosts_table(hosts)
    stdout.write(text.encode(errors="replace"))
    stdout.flush()
    listed = {h.name for h in hosts}
    missing = [
        name
        for name in dict.fromkeys(listing.hosts)
        if not is_pattern(name) and name not in listed and not excluded(name, listing.hosts)
    ]
    for name in missing:
        line = f"scout: {name}: no such host (or not one this caller may use)\n"
        stderr.write(line.encode(errors="replace"))
    stderr.flush()
    return 1 if missing else 0
