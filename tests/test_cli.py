"""The scout command's parsing, credentials and exit codes (a fake server at most)."""

from __future__ import annotations

import importlib.metadata
import io
from pathlib import Path

import pytest

from client.cli import amain, client_for, exit_code_for, join_command, parse_args
from client.explain import SettingError
from client.results import ExitStatus

from .fakeexec import FakeExec, serving


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["exec", "h", "--", "echo $HOME"], "echo $HOME"),
        (["exec", "h", "--", "ls", "-l", "a b"], "ls -l 'a b'"),
        (["exec", "h", "ls", "-l"], "ls -l"),
        (["exec", "h", "--", "echo", "--", "x"], "echo -- x"),
        (["exec", "h", "--", "--"], "--"),
        (["exec", "h", "--", "-x"], "-x"),
    ],
)
def test_command_words_join_like_ssh(argv: list[str], command: str) -> None:
    args = parse_args(argv)
    assert args.hosts == ["h"]
    assert args.command == command


@pytest.mark.parametrize(
    ("argv", "hosts", "words"),
    [
        (
            ["exec", "h", "--argv", "--", "ls", "-la", "--", "a b"],
            ["h"],
            ["ls", "-la", "--", "a b"],
        ),
        (["exec", "--argv", "h", "echo $HOME"], ["h"], ["echo $HOME"]),
        (["exec", "a", "b*", "--argv", "--", "uptime"], ["a", "b*"], ["uptime"]),
        (["exec", "--argv", "-l", "role=web", "--", "", "-x"], [], ["", "-x"]),
    ],
)
def test_argv_sends_each_word_as_it_is(argv: list[str], hosts: list[str], words: list[str]) -> None:
    args = parse_args(argv)
    assert (args.hosts, args.argv, args.command) == (hosts, words, "")
    assert parse_args(["exec", "h", "--", "ls", "-l"]).argv is None


def test_exec_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCOUT_TARGET", raising=False)
    args = parse_args(
        ["exec", "--timeout", "2.5", "--env", "A=1", "--env", "B=x=y", "h", "--", "x"]
    )
    assert args.target == "127.0.0.1:50051"
    assert args.timeout == 2.5
    assert args.env == {"A": "1", "B": "x=y"}
    assert parse_args(["exec", "h", "x"]).timeout is None


def test_target_comes_from_the_environment_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOUT_TARGET", "scout.internal:443")
    assert parse_args(["exec", "h", "--", "x"]).target == "scout.internal:443"
    assert parse_args(["exec", "--target", "other:1", "h", "--", "x"]).target == "other:1"
    assert parse_args(["health"]).target == "scout.internal:443"


@pytest.mark.parametrize(
    "argv",
    [
        ["exec", "h"],
        ["exec", "h", "--"],
        ["exec", "--timeout", "0", "h", "--", "x"],
        ["exec", "--timeout", "soon", "h", "--", "x"],
        ["exec", "--env", "NOVALUE", "h", "--", "x"],
        ["exec", "--env", "=v", "h", "--", "x"],
        ["health", "--", "x"],
        [],
        ["exec", "h", "--bogus", "--", "x"],
        ["exec", "h", "--time", "1", "--", "x"],  # no abbreviations: the scanner knows names
        ["exec", "h", "--timeout"],
        ["exec", "--cert", "c.pem", "h", "--", "x"],  # a certificate without its key
        ["health", "--key", "k.pem"],
        ["exec", "--idempotency-key", "a b", "h", "--", "x"],  # outside the charset
        ["exec", "--idempotency-key", "k" * 129, "h", "--", "x"],
        ["exec", "--detach-grace", "10m", "h", "--", "x"],  # no key to find it by
        ["exec", "--idempotency-key", "k", "--detach-grace", "soon", "h", "--", "x"],
        ["exec", "--idempotency-key", "k", "--detach-grace", "0s", "h", "--", "x"],
        ["attach", "h"],
        ["attach", "h", "k", "--stdout-offset", "-1"],
    ],
)
def test_usage_mistakes_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_keys_and_durations() -> None:
    args = parse_args(
        ["exec", "h", "--idempotency-key", "deploy-7", "--detach-grace", "1h30m", "--", "x"]
    )
    assert (args.idempotency_key, args.detach_grace) == ("deploy-7", 5400.0)
    assert parse_args(["exec", "h", "x"]).idempotency_key == ""
    assert parse_args(["exec", "--timeout", "2m", "h", "x"]).timeout == 120.0
    args = parse_args(["attach", "web1", "deploy-7", "--stdout-offset", "10"])
    assert (args.host, args.idempotency_key, args.stdout_offset, args.stderr_offset) == (
        "web1",
        "deploy-7",
        10,
        0,
    )
    assert client_for(args).retry is not None  # attach re-attaches a dropped stream
    assert client_for(parse_args(["exec", "h", "x"])).retry is None  # no key: never retried


def test_join_command() -> None:
    assert join_command(["echo $HOME"]) == "echo $HOME"
    assert join_command(["printf", "%s\n", "it's"]) == "printf '%s\n' 'it'\"'\"'s'"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (ExitStatus(exit_code=0), 0),
        (ExitStatus(exit_code=3), 3),
        (ExitStatus(exit_code=255), 255),
        (ExitStatus(exit_code=-1, signal="TERM"), 143),
        (ExitStatus(exit_code=-1, signal="SIGKILL"), 137),
        (ExitStatus(exit_code=-1, signal="INT"), 130),
        (ExitStatus(exit_code=-1, signal="NOSUCH"), 255),
        (ExitStatus(exit_code=-1), 255),
    ],
)
def test_exit_codes_follow_the_shell(status: ExitStatus, code: int) -> None:
    assert exit_code_for(status) == code


@pytest.mark.parametrize(
    ("argv", "timeout", "command"),
    [
        (["exec", "local", "--timeout", "1", "--", "sleep", "3"], 1.0, "sleep 3"),
        (["exec", "--timeout", "1", "local", "--", "sleep", "3"], 1.0, "sleep 3"),
        (["exec", "local", "--timeout=1", "sleep", "3"], 1.0, "sleep 3"),
        (["exec", "local", "--timeout", "1", "sleep", "--timeout", "3"], 1.0, "sleep --timeout 3"),
        (["exec", "local", "--", "--timeout", "1"], None, "--timeout 1"),
        (["exec", "local", "-", "x"], None, "- x"),
    ],
)
def test_options_after_host_are_options_up_to_the_command(
    argv: list[str], timeout: float | None, command: str
) -> None:
    args = parse_args(argv)
    assert (args.hosts, args.timeout, args.command) == (["local"], timeout, command)


def test_every_exec_option_after_the_host(tmp_path: Path) -> None:
    token = tmp_path / "token"
    args = parse_args(
        [
            "exec",
            "web1",
            "--env",
            "A=1",
            "--env=B=2",
            "--cwd",
            "/srv",
            "--tty",
            "--target",
            "scout:1",
            "--token-file",
            str(token),
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--",
            "make",
            "-j4",
        ]
    )
    assert (args.hosts, args.command, args.env) == (["web1"], "make -j4", {"A": "1", "B": "2"})
    assert (args.cwd, args.tty, args.target, args.token_file) == ("/srv", True, "scout:1", token)
    assert (args.ca, args.cert, args.key) == (Path("ca.pem"), Path("c.pem"), Path("k.pem"))
    plain = parse_args(["exec", "web1", "true"])
    assert (plain.cwd, plain.tty, plain.tls, plain.ca, plain.token_file) == (
        "",
        False,
        False,
        None,
        None,
    )


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"scout {importlib.metadata.version('scout')}\n"


def test_health_takes_a_service_name() -> None:
    assert parse_args(["health", "--service", "scout.v1.ExecService"]).service == (
        "scout.v1.ExecService"
    )
    assert parse_args(["health"]).service == ""


async def test_token_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")  # the final newline is not part of the token
    servicer = FakeExec()
    async with serving(servicer) as target:
        run = ["exec", "--target", target, "web1", "--", "exit-now 0"]
        with_file = ["exec", "--target", target, "--token-file", str(token_file)]
        monkeypatch.delenv("SCOUT_TOKEN", raising=False)
        assert await amain(run, stdin=None, stdout=io.BytesIO(), stderr=io.BytesIO()) == 0
        monkeypatch.setenv("SCOUT_TOKEN", "from-env")
        assert await amain(run, stdin=None, stdout=io.BytesIO(), stderr=io.BytesIO()) == 0
        argv = [*with_file, "web1", "--", "exit-now 0"]
        assert await amain(argv, stdin=None, stdout=io.BytesIO(), stderr=io.BytesIO()) == 0
    sent = [m.get("authorization") for m in servicer.seen.metadata]
    assert sent == [None, "Bearer from-env", "Bearer from-file"]
    assert "from-" not in repr(client_for(parse_args([*with_file, "web1", "x"])))


def test_unreadable_or_empty_token_file_names_the_file_not_a_token(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SettingError) as info:
        client_for(parse_args(["health", "--token-file", str(missing)]), {})
    assert str(info.value) == (
        f"cannot read the token file {missing}: No such file or directory "
        "(--token-file PATH / $SCOUT_TOKEN)"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingError, match="empty"):
        client_for(parse_args(["health", "--token-file", str(empty)]), {})
    spaced = tmp_path / "spaced"
    spaced.write_text("se cret")
    with pytest.raises(SettingError, match="printable ASCII") as info:
        client_for(parse_args(["health", "--token-file", str(spaced)]), {})
    assert "se cret" not in str(info.value)


def test_tls_is_chosen_by_flags(tmp_path: Path) -> None:
    assert "plaintext" in repr(client_for(parse_args(["health"]), {}))
    assert " tls " in repr(client_for(parse_args(["health", "--tls"]), {}))
    with pytest.raises(SettingError, match=r"CA file .*nope\.pem: .*\(--ca FILE / \$SCOUT_CA\)"):
        client_for(parse_args(["health", "--ca", str(tmp_path / "nope.pem")]), {})
    cert = ["--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")]
    with pytest.raises(SettingError, match=r"client certificate .*c\.pem: .*\(--cert FILE\)"):
        client_for(parse_args(["health", *cert]), {})
