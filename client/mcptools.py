"""What `scout mcp`'s command tools do, apart from the MCP SDK: run, fan out, list hosts.

Each tool is one call of the Python `Client` (client/aio.py), so the scout server's
identity, per-host and per-command policy, limits and audit apply to it as to any
caller. Results are plain dicts (the tool's structured content); a call scout could not
make raises `ToolFailure`, which carries the gRPC status name, the server's message and
`may_have_run`, and which the MCP layer (client/mcpserver.py) turns into a tool error.

A command's own exit code is payload, never a failure: exit 3 is a result.

Commands are sent as argv whenever that runs exactly what the shell line would
(`plain_argv`), because a caller whose `[[callers]]` policy lists `commands` may send
only argv (README, "Restricted callers: commands as argv"): an assistant typing
`uptime` or `df -h /` reaches such a caller's patterns without knowing about argv.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from .aio import Client
from .errors import ScoutError
from .fleet import HostOutput, host_fields
from .results import Result

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "MAX_COMMAND_BYTES",
    "Progress",
    "Settings",
    "ToolFailure",
    "command_fields",
    "cut",
    "failure_from",
    "list_hosts",
    "plain_argv",
    "result_fields",
    "run_command",
    "run_on_hosts",
    "run_with_progress",
]

DEFAULT_MAX_OUTPUT = 64 * 1024  # per stream: an assistant's context is not a log file
# Refused here before anything is sent: the server's own limit (max_command_bytes, 64 KiB
# by default) says INVALID_ARGUMENT below it, gRPC's message limit something obscure above.
MAX_COMMAND_BYTES = 1024 * 1024
# A fan-out keeps at most this many hosts' worth of output (--max-output each) in all;
# hosts past it keep their exit status and sizes, their output cut to nothing (flagged).
FAN_OUT_SHARES = 16
PROGRESS_EVERY = 1.0  # seconds: a command running longer than this reports progress

# Progress(elapsed_or_count, message): how a tool reports a long call (MCP progress).
Progress = Callable[[float, str], Awaitable[None]]

# A shell line made only of these (and spaces, and quotes around words) means the same
# as argv: no expansion, redirection, glob, comment, job or substitution can happen.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./,:=+@% '\"")
# Words a shell reads as syntax, not as a program: such a line stays a shell line.
_RESERVED = frozenset(
    {"!", "{", "}", "[[", "]]", "case", "do", "done", "elif", "else", "esac", "fi", "for"}
    | {"function", "if", "in", "select", "then", "time", "until", "while"}
)


@dataclass(frozen=True)
class Settings:
    """What `scout mcp` was started with, beyond the connection."""

    max_output: int = DEFAULT_MAX_OUTPUT
    fan_out_output: int | None = None  # run_on_hosts' output over all hosts (None: 16 x)
    # copy_file's local side: only under this directory (None: no local paths at all,
    # since this machine's files are outside scout's policy and audit)
    local_root: Path | None = None

    @property
    def fan_out_budget(self) -> int:
        """Output kept over all of a fan-out's hosts."""
        if self.fan_out_output is not None:
            return self.fan_out_output
        return FAN_OUT_SHARES * self.max_output


@dataclass(eq=False)
class ToolFailure(Exception):
    """A tool call that failed: a status name, a message for the assistant, may_have_run."""

    code: str
    message: str
    _: KW_ONLY
    may_have_run: bool = False
    host: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def fields(self) -> dict[str, Any]:
        """The structured error: the status, its message, and whether anything may have run."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "may_have_run": self.may_have_run,
                "host": self.host,
            }
        }

    def text(self) -> str:
        """One line for the assistant: the status first, so PERMISSION_DENIED is seen."""
        ran = "it may have run" if self.may_have_run else "nothing ran"
        return f"{self.code}: {self.message} ({ran})"


def failure_from(err: ScoutError) -> ToolFailure:
    """The client's exception as a tool failure: same status, message and may_have_run."""
    return ToolFailure(err.code, err.message, may_have_run=err.may_have_run, host=err.host)


def invalid(message: str) -> ToolFailure:
    """A mistake in the tool's arguments, found before anything was sent."""
    return ToolFailure("INVALID_ARGUMENT", message)


def plain_argv(line: str) -> list[str] | None:
    """The argv a plain shell line runs, or None when the shell would do more with it.

    Plain: letters, digits, `-_./,:=+@%`, spaces and quotes only, no `=` in the first
    word (an assignment) or at a word's start (zsh's `=cmd`), no reserved word first.
    Then the login shell would run exactly these words, so argv is the same command.
    """
    if not line.strip() or not set(line) <= _PLAIN:
        return None
    try:
        words = shlex.split(line)
    except ValueError:  # an unclosed quote: let the shell say so
        return None
    if not words or "=" in words[0] or words[0] in _RESERVED:
        return None
    if any(word.startswith("=") for word in words):
        return None
    return words


def command_fields(command: str | None, argv: Sequence[str] | None) -> dict[str, Any]:
    """Exactly one of `command` or `argv`, as the Client takes them (plain lines as argv)."""
    if (command is None or command == "") == (argv is None or len(argv) == 0):
        raise invalid("give exactly one of `command` (a shell line) or `argv` (a list of words)")
    if argv:
        size = sum(len(word.encode()) for word in argv)
        if size > MAX_COMMAND_BYTES:
            raise invalid(f"argv is {size} bytes; at most {MAX_COMMAND_BYTES}")
        if any("\0" in word for word in argv):
            raise invalid("argv words cannot contain NUL")
        return {"argv": list(argv)}
    assert command is not None
    size = len(command.encode(errors="surrogatepass"))
    if size > MAX_COMMAND_BYTES:
        raise invalid(f"command is {size} bytes; at most {MAX_COMMAND_BYTES}")
    words = plain_argv(command)
    return {"argv": words} if words is not None else {"command": command}


def cut(data: bytes, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes as text (invalid UTF-8 replaced), and whether it was cut."""
    if len(data) <= limit:
        return data.decode(errors="replace"), False
    return data[:limit].decode(errors="ignore"), True


def result_fields(result: Result, max_output: int) -> dict[str, Any]:
    """A command's result as the tool shows it: exit status, output cut at max_output."""
    stdout, stdout_cut = cut(result.stdout, max_output)
    stderr, stderr_cut = cut(result.stderr, max_output)
    return {
        "host": result.host,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": result.stdout_truncated or stdout_cut,
        "stderr_truncated": result.stderr_truncated or stderr_cut,
        "stdout_bytes": result.stdout_bytes,
        "stderr_bytes": result.stderr_bytes,
        "duration": round(result.duration, 3),
    }


async def run_with_progress(
    call: Awaitable[Any], progress: Progress | None, what: str | Callable[[], str]
) -> Any:
    """Await a call, reporting progress each second it runs; cancelling us cancels it.

    `what` names the work in the progress message (a callable: asked anew each time).

    Cancelling the gRPC call makes the scout server stop the remote command (signal,
    then channel close), which is what an MCP client's cancellation should do.
    """
    task = asyncio.ensure_future(call)
    began = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY)
            if done:
                return task.result()
            if progress is not None:
                elapsed = time.monotonic() - began
                name = what() if callable(what) else what
                await progress(round(elapsed, 1), f"{name}: running for {elapsed:.0f} s")
    finally:
        if not task.done():
            task.cancel()
            # Let the cancellation reach grpc, which sends RST_STREAM to the server.
            await asyncio.wait({task}, timeout=1.0)


def _exec_fields(
    max_output: int,
    timeout_s: float | None,
    working_dir: str | None,
    env: Mapping[str, str] | None,
) -> dict[str, Any]:
    """ExecOptions fields from the tool's arguments; the server caps output at ours too."""
    if timeout_s is not None and not timeout_s > 0:
        raise invalid(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    fields: dict[str, Any] = {"max_output_bytes": max_output}
    if timeout_s is not None:
        fields["timeout"] = float(timeout_s)
    if working_dir:
        fields["working_dir"] = working_dir
    if env:
        fields["env"] = dict(env)
    return fields


async def run_command(
    client: Client,
    settings: Settings,
    host: str,
    command: str | None = None,
    argv: Sequence[str] | None = None,
    *,
    timeout_s: float | None = None,
    working_dir: str | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one command on one host (Execute) and return its result, output cut."""
    words = command_fields(command, argv)
    fields = _exec_fields(settings.max_output, timeout_s, working_dir, env)
    try:
        result = await run_with_progress(
            client.execute(host, **words, **fields), progress, f"on {host}"
        )
    except ScoutError as err:
        raise failure_from(err) from None
    sent = {"argv": words["argv"]} if "argv" in words else {"command": words["command"]}
    return {**result_fields(result, settings.max_output), **sent}


async def run_on_hosts(
    client: Client,
    settings: Settings,
    command: str | None = None,
    argv: Sequence[str] | None = None,
    *,
    hosts: Sequence[str] = (),
    selector: str = "",
    max_parallel: int = 0,
    timeout_s: float | None = None,
    working_dir: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run one command on many hosts (ExecuteMany): one entry per host, and the counts.

    A host that could not run the command is an entry with its error, not a tool
    error; only a call refused as a whole (no target, bad selector) fails the tool.
    Output is cut at max_output per host and at settings.fan_out_budget in all, so
    ten thousand hosts cannot flood the assistant (or our memory) with output.
    """
    if not hosts and not selector:
        raise invalid("give `hosts` (names or globs) or a `selector`, or both")
    if max_parallel < 0:
        raise invalid(f"max_parallel must be 0 (the server's default) or more, got {max_parallel}")
    words = command_fields(command, argv)
    fields = _exec_fields(settings.max_output, timeout_s, working_dir, None)
    results: list[dict[str, Any]] = []
    budget = settings.fan_out_budget
    try:
        async with client.execute_many(
            list(hosts), **words, selector=selector, max_parallel=max_parallel, **fields
        ) as call:
            async for event in call:
                if isinstance(event, HostOutput):
                    continue
                if isinstance(event, Result):
                    entry = result_fields(event, min(settings.max_output, budget))
                    budget -= len(event.stdout[:budget]) + len(event.stderr[:budget])
                    budget = max(budget, 0)
                    results.append(entry)
                else:
                    results.append({"host": event.host, **failure_from(event).fields()})
                if progress is not None:
                    await progress(float(len(results)), f"{len(results)} hosts done")
    except ScoutError as err:
        raise failure_from(err) from None
    results.sort(key=lambda entry: str(entry["host"]))
    succeeded = sum(1 for r in results if r.get("exit_code") == 0 and not r.get("signal"))
    failed = sum(1 for r in results if "error" in r)
    return {
        "hosts": len(results),
        "succeeded": succeeded,
        "exited_nonzero": len(results) - succeeded - failed,
        "failed": failed,
        "results": results,
    }


async def list_hosts(
    client: Client, selector: str = "", patterns: Sequence[str] = ()
) -> dict[str, Any]:
    """The inventory hosts the selector and names or globs pick (all when both are empty)."""
    try:
        hosts = await client.list_hosts(selector, list(patterns))
    except ScoutError as err:
        raise failure_from(err) from None
    return {"count": len(hosts), "hosts": [host_fields(h) for h in hosts]}
