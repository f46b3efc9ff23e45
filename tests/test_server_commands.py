"""`scout-server` as an operator first meets it: --help, the token subcommands, a quiet start.

Each runs the installed console script in a child process, as people run it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import re
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pytest

from server.callers import hash_token

from .serverproc import ROOT

SCOUT_SERVER = str(Path(sys.executable).parent / "scout-server")
pytestmark = pytest.mark.timeout(60)


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [SCOUT_SERVER, *args], input=stdin, capture_output=True, timeout=30, check=False, cwd=ROOT
    )


def test_help_lists_the_subcommands_and_prints_no_warning() -> None:
    done = run("--help")
    assert (done.returncode, done.stderr) == (0, b"")
    text = done.stdout.decode()
    assert "hash-token" in text
    assert "new-token" in text
    assert "Warning" not in text


def test_hash_token_help_prints_help_instead_of_hashing_it() -> None:
    done = run("hash-token", "--help")
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.startswith(b"usage: scout-server hash-token")
    assert hash_token("--help").encode() not in done.stdout


def test_new_token_prints_a_fresh_token_and_its_config_line() -> None:
    first, second = run("new-token"), run("new-token")
    assert (first.returncode, first.stderr) == (0, b"")
    token, line = first.stdout.decode().splitlines()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token), token  # secrets.token_urlsafe(32)
    assert line == f'token_sha256 = "{hash_token(token)}"'
    assert second.stdout.decode().splitlines()[0] != token


def test_demo_with_json_logs_writes_nothing_but_json_lines(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [SCOUT_SERVER, "--demo", "--log-format", "json", "--listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,  # the demo's how-to text, for a person
            stderr=sink,
            cwd=ROOT,
        )
    try:
        for _ in range(300):  # up to 15 s
            if b"listening on" in err.read_bytes() or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    lines = err.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # a warning's text would fail here
    messages = [record["message"] for record in records]
    assert any("listening on" in message for message in messages), messages
    assert any("shutting down" in message for message in messages), messages


def test_only_the_known_deprecation_is_silenced_and_others_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cryptography.utils import CryptographyDeprecationWarning

    from server import quiet

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        quiet.silence_known_warnings()
        quiet.route_warnings_to_logging()
        try:
            for module in ("asyncssh.crypto.misc", "someone.else"):
                warnings.warn_explicit(
                    "DSA is deprecated and support will be removed",
                    CryptographyDeprecationWarning,
                    f"{module.replace('.', '/')}.py",
                    1,
                    module=module,
                )
        finally:
            logging.captureWarnings(False)
    logged = [r for r in caplog.records if r.name == "py.warnings"]
    assert len(logged) == 1
    assert "someone/else.py" in logged[0].getMessage()


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


# Modules that serve an optional extra: they may import its distributions (and what those
# require), and only lazily, from inside the command that needs them.
OPTIONAL = {"client/mcpserver.py": "mcp", "server/redisstore.py": "redis"}


def _names(specs: list[str]) -> set[str]:
    return {_normal(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}


def _with_requirements(names: set[str]) -> set[str]:
    """names and the distributions they require (one level: enough for an extra's SDK)."""
    found = set(names)
    for name in names:
        found |= _names(importlib.metadata.requires(name) or [])
    return found


def test_every_third_party_import_of_the_server_and_client_is_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    extras = {
        module: _with_requirements(_names(project["optional-dependencies"][extra]))
        for module, extra in OPTIONAL.items()
    }
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for folder in ("server", "client"):
        for path in (ROOT / folder).glob("*.py"):
            if path.name == "protogen.py":  # `make protos`, a developer's tool (dev extra)
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.partition(".")[0]
                    allowed = {"scout", *declared, *extras.get(str(path.relative_to(ROOT)), ())}
                    for dist in distributions.get(top, []):
                        if _normal(dist) not in allowed:
                            missing.add(f"{dist} ({path.relative_to(ROOT)})")
    assert not missing, sorted(missing)


def test_an_optional_extra_is_imported_only_by_the_command_that_needs_it() -> None:
    """`scout exec` must work without the mcp extra: nothing imports client.mcpserver at
    module level (cli.py imports it inside `scout mcp`). Nor does scout-server need the
    redis extra: server.redisstore is imported only for a redis:// store (open_store)."""
    for path in [*(ROOT / "client").glob("*.py"), *(ROOT / "server").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if not isinstance(node, ast.ImportFrom):
                continue
            package = path.parent.name if node.level == 1 else ""  # `from . import x`
            module = ".".join(filter(None, (package, node.module)))
            names = {module, *(f"{module}.{a.name}" for a in node.names)}
            for optional in ("client.mcpserver", "server.redisstore"):
                assert optional not in names, f"{path.name} imports {optional} at module level"
