"""The README's Python examples, run as a user would: a script file, the installed package."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(after: str) -> str:
    """The first ```python block after the text `after` in the README."""
    text = README.read_text()
    rest = text[text.index(after) :]
    match = re.search(r"```python\n(.*?)```", rest, re.DOTALL)
    assert match is not None, f"README has no python block after {after!r}"
    return match.group(1)


async def run_python_block(after: str, target: str, workdir: Path, within: float) -> str:
    """Run that block as a script with SCOUT_TARGET=target; its stdout (it must exit 0)."""
    script = workdir / "example.py"
    script.write_text(python_block(after))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOUT_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=workdir,  # the installed package, as a user has it, not this checkout
        env={**env, "SCOUT_TARGET": target},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode == 0, err.decode()
    return out.decode()
