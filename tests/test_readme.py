"""Every grpcurl and buf curl command in README.md runs against a live server.

A command is a line of a ```sh block, with the lines it continues (trailing `\\` or `|`).
When a ```text or ```json block follows the ```sh block directly, it is what the block's
last command prints (durations aside). The README's address (127.0.0.1:50051, where
`make run` serves) becomes the test server's; the lines stay as a person copies them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from .scoutd import Scout

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_ADDRESS = "127.0.0.1:50051"
TOOLS = {
    ".venv/bin/grpcurl": shutil.which("grpcurl") or str(ROOT / ".venv" / "bin" / "grpcurl"),
    ".venv/bin/buf": shutil.which("buf") or str(ROOT / ".venv" / "bin" / "buf"),
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TOOL_CALL = re.compile(r"(?:^|\|\s*)\.venv/bin/(?:grpcurl|buf curl)\s", re.MULTILINE)
DURATION = re.compile(r'"duration": "[0-9.]+s"')


@dataclass(frozen=True)
class Example:
    """One README command, and the output the README shows for it (if any)."""

    line: int
    command: str
    expected: str | None


def commands(block: str) -> list[str]:
    """The shell commands of a block: a line ending in `\\` or `|` continues on the next."""
    found: list[str] = []
    current: list[str] = []
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        if not line.rstrip().endswith(("\\", "|")):
            found.append("\n".join(current))
            current = []
    assert not current, f"a command continues past the end of its block: {current}"
    return found


def examples(text: str) -> list[Example]:
    """The README's grpcurl and buf curl commands, each with the output block after it."""
    fences = list(FENCE.finditer(text))
    found: list[Example] = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "sh":
            continue
        shown = None
        if i + 1 < len(fences):
            after = fences[i + 1]
            if after.group(1) in ("text", "json") and not text[fence.end() : after.start()].strip():
                shown = after.group(2)
        block = commands(fence.group(2))
        line = text.count("\n", 0, fence.start()) + 2
        for n, command in enumerate(block):
            if TOOL_CALL.search(command):
                found.append(Example(line, command, shown if n == len(block) - 1 else None))
    return found


EXAMPLES = examples(README.read_text())


def test_every_grpcurl_call_in_the_readme_is_collected() -> None:
    """A grpcurl line the parser missed (a prompt, a typo in the fence) would go unproven."""
    text = README.read_text()
    collected = "\n".join(e.command for e in EXAMPLES)
    for tool in (".venv/bin/grpcurl ", ".venv/bin/buf curl "):
        assert text.count(tool) == collected.count(tool) > 0


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
async def test_readme_command(local_scout: Scout, example: Example) -> None:
    command = example.command.replace(README_ADDRESS, local_scout.target)
    for written, real in TOOLS.items():
        command = command.replace(written, real)
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        command,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{example.command}\n{err.decode()}"
    printed = out.decode().strip()
    assert printed, example.command
    if example.expected is not None:
        shown = DURATION.sub('"duration": "…"', example.expected.strip())
        assert DURATION.sub('"duration": "…"', printed) == shown
