"""`scout completion bash|zsh|fish`: the scripts load in their shells, and bash's completes
subcommands, options and host names from a live server (`scout hosts --names`), and
every command's --help ends with examples (client/completion.py, client/examples.py).

The bash checks run the printed script in a real bash: `complete -p` shows it
registered, and the completion function fills COMPREPLY as bash would call it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout

SCOUT = str(Path(sys.executable).parent / "scout")
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    hosts = {name: shell_server.host_config(name) for name in ("web1", "web2", "db1")}
    async with running_scout(config(hosts)) as s:
        yield s


@functools.cache
def printed(shell: str) -> str:
    done = subprocess.run([SCOUT, "completion", shell], capture_output=True, timeout=30, check=True)
    assert done.stderr == b""
    return done.stdout.decode()


def bash_complete(line: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the line (the cursor at its end), through the printed script."""
    script = printed("bash")
    probe = (
        f'{script}\ncomplete -p scout\nCOMP_LINE="$LINE"; COMP_POINT=${{#COMP_LINE}}\n'
        'read -r -a COMP_WORDS <<< "$COMP_LINE"\n'
        '[[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_WORDS[0]=$SCOUT; COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        '_scout_complete; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCOUT_", "XDG_"))}
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        timeout=30,
        check=True,
        env={**clean, **(env or {}), "LINE": line, "SCOUT": SCOUT, "HOME": "/nonexistent"},
    )
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "complete -o default -F _scout_complete scout"  # complete -p
    return [word for word in lines[1:] if word]


def test_bash_completes_commands_options_and_shells() -> None:
    assert bash_complete("scout ") == [
        "exec",
        "attach",
        "cp",
        "hosts",
        "health",
        "mcp",
        "completion",
    ]
    assert bash_complete("scout attach --stdo") == ["--stdout-offset"]
    assert "--idempotency-key" in bash_complete("scout exec --idem")
    assert bash_complete("scout ex") == ["exec"]
    assert "--max-failures" in bash_complete("scout exec --max-")
    assert bash_complete("scout exec --max-f") == ["--max-failures"]
    assert "--names" not in bash_complete("scout hosts --")  # hidden
    assert bash_complete("scout completion ") == ["bash", "zsh", "fish"]
    assert bash_complete("scout exec web1 --timeout ") == []  # a value: nothing to offer


async def test_bash_completes_host_names_from_the_server(scout: Scout) -> None:
    env = {"SCOUT_TARGET": scout.target}

    async def offered(line: str, env: dict[str, str] | None = env) -> list[str]:
        return await asyncio.to_thread(bash_complete, line, env)  # the server runs here

    assert await offered("scout exec w") == ["web1", "web2"]
    assert await offered("scout hosts ") == ["db1", "web1", "web2"]
    assert await offered("scout attach w") == ["web1", "web2"]
    assert await offered("scout exec web1 !w") == ["!web1", "!web2"]
    # The connection flags typed before the host go to `scout hosts --names`.
    assert await offered(f"scout exec --target {scout.target} d", None) == ["db1"]
    assert await offered("scout exec --target 127.0.0.1:1 d", None) == []  # unreachable


def test_bash_completes_the_command_after_the_dashes() -> None:
    assert "bash" in bash_complete("scout exec web1 web2 -- bas")


def test_zsh_script_parses_and_registers() -> None:
    script = printed("zsh")
    assert script.startswith("#compdef scout\n")
    if shutil.which("zsh") is None:
        pytest.skip("no zsh here")
    subprocess.run(["zsh", "-n"], input=script.encode(), check=True, timeout=30)
    probe = f"autoload -U compinit && compinit -u -D\n{script}\nprint -r -- $_comps[scout]"
    done = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, timeout=30, check=True)
    assert done.stdout.decode().strip() == "_scout"


def test_fish_script_has_hosts_and_options() -> None:
    script = printed("fish")
    assert "-a '(__scout_hosts)'" in script
    assert "complete -c scout -n '__fish_seen_subcommand_from exec' -l max-failures -x" in script
    assert "-l token-file -F" in script
    if shutil.which("fish") is not None:
        subprocess.run(["fish", "--no-execute"], input=script.encode(), check=True, timeout=30)


@pytest.mark.parametrize(
    "command",
    [[], ["exec"], ["attach"], ["cp"], ["hosts"], ["health"], ["mcp"], ["completion"]],
)
def test_every_help_ends_with_examples(command: list[str]) -> None:
    done = subprocess.run([SCOUT, *command, "--help"], capture_output=True, timeout=30, check=True)
    text = done.stdout.decode().rstrip("\n")
    head, _, examples = text.rpartition("\nexamples:\n")
    assert head, text
    lines = examples.splitlines()
    assert 2 <= len(lines) <= 3
    assert all(line.lstrip().startswith(("scout ", "echo ", "eval ")) for line in lines), lines
