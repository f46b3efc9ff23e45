"""`scout mcp`: an MCP server (the official SDK's MCPServer) in front of a scout server.

It holds no SSH key and no inventory: every tool is a call of the Python `Client`, with
the caller's token, so the scout server's policy, limits and audit decide and record
everything (README, "Using scout from AI assistants"). The tools' logic lives in
client/mcptools.py (commands) and client/mcpfiles.py (files); this module names the
tools, describes their arguments for an assistant, and turns results and failures into
MCP tool results: structured content and its JSON as text, `is_error` with the gRPC
status name, message and `may_have_run` for a failure. A command's exit code is a result.

Transports: stdio (the default), or `--http HOST:PORT` for streamable HTTP at `/mcp`,
on loopback only, since the endpoint has no authentication of its own and acts with
our caller's token.
"""

import asyncio
import ipaddress
import json
from collections.abc import Awaitable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from . import mcpfiles, mcptools
from .aio import Client
from .mcpfiles import FileAccess
from .mcptools import Progress, Settings, ToolFailure

__all__ = ["build_server", "check_http_listen", "serve"]

INSTRUCTIONS = """\
scout runs commands and reads files on SSH hosts through a scout gateway, which decides
what this caller may do (hosts, commands, files) and records every call in its audit
log. Start with list_hosts. A command's exit code is part of its result, not an error.
Output is cut at a limit (the result says so in stdout_truncated / stderr_truncated).
Paths are absolute. If a call comes back PERMISSION_DENIED, the message names the rule:
do not retry it in another form. A restricted caller may send only argv: plain command
lines (words of letters, digits and -_./,:=+@%, quoted or not; no $, pipes, redirections
or globs) are sent as argv automatically; pass `argv` for anything else.
"""

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=True)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)

Host = Annotated[str, Field(description="inventory host name (see list_hosts)")]
RemotePath = Annotated[str, Field(description="absolute path on the host")]
Target = Annotated[str, Field(description="HOST:/absolute/path")]
Command = Annotated[
    str | None,
    Field(
        description="a shell line, run by the host's login shell; plain words are sent as "
        "argv (give this or argv)"
    ),
]
Argv = Annotated[
    list[str] | None,
    Field(description="the program and its arguments, each word as is (give this or command)"),
]
TimeoutS = Annotated[
    float | None,
    Field(description="seconds the command may run; scout stops it after that", gt=0),
]
WorkingDir = Annotated[str | None, Field(description="directory to run in (absolute)")]
MaxDepth = Annotated[int | None, Field(description="how deep to descend", ge=0, le=64)]


def _result(fields: dict[str, Any]) -> CallToolResult:
    """A tool's success: the structured fields, and the same as JSON text."""
    text = json.dumps(fields, ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=fields)


def _failure(failure: ToolFailure) -> CallToolResult:
    """A tool's failure: the status and why, as text and as structured content."""
    return CallToolResult(
        content=[TextContent(type="text", text=failure.text())],
        structured_content=failure.fields(),
        is_error=True,
    )


async def _answer(work: Awaitable[dict[str, Any]]) -> CallToolResult:
    """Run a tool's work; a ToolFailure becomes an error result, anything else a crash.

    A CancelledError while nobody cancelled this request (grpc cancels a call itself in
    some failures) is a failed call, not the end of the session.
    """
    try:
        return _result(await work)
    except ToolFailure as failure:
        return _failure(failure)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling() > 0:
            raise
        return _failure(ToolFailure("CANCELLED", "the call was cancelled", may_have_run=True))


def _progress(ctx: Context) -> Progress:
    """MCP progress notifications for this request (none unless the client asked)."""

    async def report(value: float, message: str) -> None:
        await ctx.report_progress(value, None, message)

    return report


def _mode(text: str | None) -> int | None:
    """A file mode given as octal text ("0644", "755")."""
    if text is None:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        raise ToolFailure("INVALID_ARGUMENT", f"mode must be octal, like 0644: {text!r}") from None
    if not 0 <= mode <= 0o7777:
        raise ToolFailure("INVALID_ARGUMENT", f"mode must be 0000 to 7777, got {text!r}")
    return mode


def build_server(client: Client, settings: Settings, files: FileAccess | None = None) -> MCPServer:
    """The MCP server: scout's tools and resources on this client."""
    fs: FileAccess = files if files is not None else mcpfiles.ScoutFiles(client)
    server: MCPServer = MCPServer("scout", instructions=INSTRUCTIONS, log_level="WARNING")
    limit = settings.max_output

    @server.tool(annotations=READ_ONLY)
    async def list_hosts(
        *,
        selector: Annotated[
            str, Field(description="label selector, e.g. role=web,region in (eu,us)")
        ] = "",
        patterns: Annotated[
            list[str] | None, Field(description="host names or globs (web*)")
        ] = None,
    ) -> CallToolResult:
        """List the inventory hosts this caller may see: all, or those the selector and
        names or globs pick. Each has name, address, port, user, labels and via."""
        return await _answer(mcptools.list_hosts(client, selector, patterns or ()))

    @server.tool(annotations=WRITES)
    async def run_command(
        *,
        host: Host,
        ctx: Context,
        command: Command = None,
        argv: Argv = None,
        timeout_s: TimeoutS = None,
        working_dir: WorkingDir = None,
        env: Annotated[
            dict[str, str] | None, Field(description="environment variables for the command")
        ] = None,
    ) -> CallToolResult:
        """Run one command on one host and wait for it. The result has exit_code, signal,
        stdout, stderr (cut at the server's limit; *_truncated says so), their full sizes
        and duration. A non-zero exit code is a result, not an error. Cancelling the call
        stops the command."""
        return await _answer(
            mcptools.run_command(
                client,
                settings,
                host,
                command,
                argv,
                timeout_s=timeout_s,
                working_dir=working_dir,
                env=env,
                progress=_progress(ctx),
            )
        )

    @server.tool(annotations=WRITES)
    async def run_on_hosts(
        *,
        ctx: Context,
        command: Command = None,
        argv: Argv = None,
        hosts: Annotated[list[str] | None, Field(description="host names or globs")] = None,
        selector: Annotated[str, Field(description="label selector picking hosts")] = "",
        max_parallel: Annotated[
            int, Field(description="hosts at once (0: the server's default)", ge=0)
        ] = 0,
        timeout_s: TimeoutS = None,
        working_dir: WorkingDir = None,
    ) -> CallToolResult:
        """Run one command on many hosts at once (names, globs and/or a selector). One
        result per host (exit_code, stdout, ... or error), and counts: succeeded,
        exited_nonzero, failed (could not run)."""
        return await _answer(
            mcptools.run_on_hosts(
                client,
                settings,
                command,
                argv,
                hosts=hosts or (),
                selector=selector,
                max_parallel=max_parallel,
                timeout_s=timeout_s,
                working_dir=working_dir,
                progress=_progress(ctx),
            )
        )

    @server.tool(annotations=READ_ONLY)
    async def read_file(
        *,
        host: Annotated[str | None, Field(description="inventory host name")] = None,
        path: Annotated[str | None, Field(description="absolute path on the host")] = None,
        targets: Annotated[
            list[str] | None,
            Field(description="instead of host and path: HOST:/path targets, one file each"),
        ] = None,
        offset: Annotated[int, Field(description="byte to start at", ge=0)] = 0,
        max_bytes: Annotated[
            int | None,
            Field(description="bytes per file at most (default: --max-output, 64 KiB)", ge=1),
        ] = None,
    ) -> CallToolResult:
        """Read a file (or a range of it): content as UTF-8 text, or base64 for binary
        (see encoding); truncated says the file goes on past what was read. With targets
        (HOST:/path, several), one file on each: a result per target and how many
        succeeded."""
        cap = max_bytes or limit
        if targets is not None:
            return await _answer(mcpfiles.read_files(fs, targets, cap))
        return await _answer(mcpfiles.read_one(fs, host, path, offset, cap))

    @server.tool(annotations=WRITES)
    async def write_file(
        *,
        host: Host,
        path: RemotePath,
        content: Annotated[str, Field(description="the file's content (see encoding)")],
        mode: Annotated[str | None, Field(description="octal mode, e.g. 0644")] = None,
        create_only: Annotated[
            bool, Field(description="fail if the file exists, instead of replacing it")
        ] = False,
        encoding: Annotated[
            str, Field(description="utf-8 (content is text) or base64 (binary)")
        ] = "utf-8",
    ) -> CallToolResult:
        """Write a file on a host (replaced whole, unless create_only)."""

        async def work() -> dict[str, Any]:
            data = mcpfiles.decode_content(content, encoding)
            return await fs.write(host, mcpfiles.absolute(path), data, _mode(mode), create_only)

        return await _answer(work())

    @server.tool(annotations=READ_ONLY)
    async def list_directory(*, host: Host, path: RemotePath) -> CallToolResult:
        """List a directory: entries with name, type, mode, size, owner, group, modified."""
        return await _answer(mcpfiles.list_directory(client, host, path, limit))

    @server.tool(annotations=READ_ONLY)
    async def find_files(
        *,
        host: Host,
        path: RemotePath,
        pattern: Annotated[str, Field(description="file name glob, e.g. *.py")],
        max_depth: MaxDepth = None,
    ) -> CallToolResult:
        """Find files under a directory whose name matches a glob (default depth 5)."""
        return await _answer(
            mcpfiles.find_files(client, host, path, pattern, max_depth=max_depth, max_output=limit)
        )

    @server.tool(annotations=READ_ONLY)
    async def tree(*, host: Host, path: RemotePath, max_depth: MaxDepth = None) -> CallToolResult:
        """Show a directory tree (default depth 3); directories end in /."""
        return await _answer(mcpfiles.tree(client, host, path, max_depth, limit))

    @server.tool(annotations=READ_ONLY)
    async def diff_files(
        *,
        a: Target,
        b: Annotated[str | None, Field(description="HOST:/path to compare with")] = None,
        content: Annotated[str | None, Field(description="expected content instead of b")] = None,
    ) -> CallToolResult:
        """Unified diff of a file against another host's file or against given content."""
        return await _answer(mcpfiles.diff_files(fs, a, b, content))

    @server.tool(annotations=WRITES)
    async def copy_file(
        *,
        ctx: Context,
        source: Annotated[
            str, Field(description="HOST:/path, or a local absolute path (if allowed)")
        ],
        target: Annotated[
            str, Field(description="HOST:/path, or a local absolute path (if allowed)")
        ],
    ) -> CallToolResult:
        """Copy a file host to host, streamed through scout without holding it whole; or
        between a host and this machine, under the directory scout mcp allows (if any)."""

        moved = [0]

        def count(sent: int) -> None:
            moved[0] = sent

        def what() -> str:
            return f"{moved[0]} bytes copied"

        async def work() -> dict[str, Any]:
            root = settings.local_root
            ends = mcpfiles.endpoint(source, root), mcpfiles.endpoint(target, root)
            copy = fs.copy(*ends, count)
            result: dict[str, Any] = await mcptools.run_with_progress(copy, _progress(ctx), what)
            return result

        return await _answer(work())

    @server.resource("hosts://list", mime_type="application/json")
    async def hosts_list() -> str:
        """The inventory hosts this caller may see."""
        try:
            return json.dumps(await mcptools.list_hosts(client))
        except ToolFailure as failure:
            raise ResourceError(failure.text()) from None

    @server.resource("scout://{host}/{+path}")
    async def scout_path(host: str, path: str) -> str | bytes:
        """A file's content, or a directory's listing (ls -la), on a host."""
        try:
            return await mcpfiles.path_resource(client, fs, host, "/" + path, limit)
        except ToolFailure as failure:
            raise ResourceError(failure.text()) from None

    return server


def check_http_listen(text: str) -> tuple[str, int]:
    """`--http HOST:PORT` as (host, port), loopback only (the endpoint has no auth)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http wants HOST:PORT, got {text!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"--http {text}: the MCP endpoint has no authentication and acts with this "
            "caller's token, so it listens on loopback only (127.0.0.1, ::1, localhost)"
        )
    return host, int(port)


async def serve(client: Client, settings: Settings, http: tuple[str, int] | None) -> None:
    """Serve until stdin closes (stdio) or we are stopped (HTTP)."""
    server = build_server(client, settings)
    if http is None:
        await server.run_stdio_async()
    else:
        await server.run_streamable_http_async(host=http[0], port=http[1])
