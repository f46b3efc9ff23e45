"""Client pieces that need no server: error mapping, results, deadlines, CLI parsing."""

from __future__ import annotations

import pickle
from typing import Any

import grpc
import pytest

from client import (
    Aborted,
    Cancelled,
    CommandFailed,
    HostNotFound,
    HostRejected,
    InvalidRequest,
    NotAllowed,
    Overloaded,
    Result,
    ScoutError,
    ServerError,
    Timeout,
    Unavailable,
    from_rpc_error,
)
from client import errors as errors_module
from client.aio import build_request, rpc_deadline
from client.cli import exit_code_for, join_command, parse_args
from client.results import Exit, ExitStatus, Stderr, Stdout, event_from_response
from scout.v1 import exec_pb2

S = grpc.StatusCode

MAPPING = [
    (S.INVALID_ARGUMENT, InvalidRequest),
    (S.NOT_FOUND, HostNotFound),
    (S.UNAUTHENTICATED, NotAllowed),
    (S.PERMISSION_DENIED, NotAllowed),
    (S.FAILED_PRECONDITION, HostRejected),
    (S.UNAVAILABLE, Unavailable),
    (S.ABORTED, Aborted),
    (S.RESOURCE_EXHAUSTED, Overloaded),
    (S.DEADLINE_EXCEEDED, Timeout),
    (S.CANCELLED, Cancelled),
    (S.INTERNAL, ServerError),
    (S.UNKNOWN, ServerError),
    (S.UNIMPLEMENTED, ServerError),
    (S.DATA_LOSS, ServerError),
    (S.OUT_OF_RANGE, ServerError),
    (S.ALREADY_EXISTS, ServerError),
]


def aio_error(code: grpc.StatusCode, details: str | None = "boom") -> Any:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(("code", "cls"), MAPPING, ids=[c.name for c, _ in MAPPING])
def test_every_status_maps_to_one_class(code: grpc.StatusCode, cls: type[ScoutError]) -> None:
    err = from_rpc_error(aio_error(code, f"web1: {code.name}"), "web1")
    assert type(err) is cls
    assert isinstance(err, ScoutError)
    assert err.code == code.name
    assert err.host == "web1"
    assert err.message == f"web1: {code.name}"
    assert str(err) == f"web1: {code.name}"
    assert code.name in repr(err)


def test_every_status_code_is_covered() -> None:
    assert {code for code, _ in MAPPING} == set(S) - {S.OK}


def test_empty_details_still_give_an_actionable_message() -> None:
    err = from_rpc_error(aio_error(S.UNAVAILABLE, None), "db2")
    assert isinstance(err, Unavailable)
    assert "db2" in str(err)
    assert "UNAVAILABLE" in str(err)


class BareRpcError(grpc.RpcError):  # type: ignore[misc]  # grpcio has no type hints
    """A sync-API RpcError that is not a Call: it has no code() or details()."""


class SyncCallError(grpc.RpcError):  # type: ignore[misc]  # grpcio has no type hints
    """What the sync API raises: an RpcError that is also a Call."""

    def code(self) -> grpc.StatusCode:
        return S.PERMISSION_DENIED

    def details(self) -> str:
        return "not on this host"


def test_sync_rpc_errors_map_too() -> None:
    err = from_rpc_error(SyncCallError(), "h")
    assert isinstance(err, NotAllowed)
    assert err.message == "not on this host"


def test_rpc_error_without_a_code_is_a_server_error() -> None:
    err = from_rpc_error(BareRpcError(), "h")
    assert type(err) is ServerError
    assert err.code == "UNKNOWN"


def test_tree_is_written_out_in_the_module_docstring() -> None:
    doc = errors_module.__doc__ or ""
    for name in errors_module.__all__:
        if name != "from_rpc_error":
            assert name in doc, name
            assert issubclass(getattr(errors_module, name), ScoutError)


def test_errors_survive_pickling_for_multiprocessing_users() -> None:
    err = pickle.loads(pickle.dumps(from_rpc_error(aio_error(S.ABORTED), "h")))
    assert isinstance(err, Aborted)
    assert (str(err), err.code, err.host) == ("boom", "ABORTED", "h")
    failed = pickle.loads(pickle.dumps(CommandFailed(Result(exit_code=4), host="h")))
    assert failed.result == Result(exit_code=4)
    assert failed.host == "h"


def test_result_ok_and_check() -> None:
    good = Result(exit_code=0, stdout=b"hi", host="h")
    assert good.ok
    assert good.check() is good
    failed = Result(exit_code=3, host="web1")
    assert not failed.ok
    with pytest.raises(CommandFailed) as info:
        failed.check()
    assert info.value.result is failed
    assert info.value.code == "OK"
    assert "web1" in str(info.value)
    assert "status 3" in str(info.value)
    killed = Result(exit_code=-1, signal="KILL")
    assert not killed.ok
    with pytest.raises(CommandFailed, match="signal KILL"):
        killed.check()


def test_events_are_built_from_each_oneof_kind() -> None:
    assert event_from_response(exec_pb2.StreamResponse(stdout=b"a", text="a")) == Stdout(b"a", "a")
    assert event_from_response(exec_pb2.StreamResponse(stderr=b"e")) == Stderr(b"e")
    message = exec_pb2.StreamResponse(exit=exec_pb2.ExitStatus(exit_code=2, stdout_bytes=9))
    message.exit.duration.FromMilliseconds(1500)
    event = event_from_response(message)
    assert isinstance(event, Exit)
    assert event.status == ExitStatus(exit_code=2, stdout_bytes=9, duration=1.5)
    assert event_from_response(exec_pb2.StreamResponse()) is None


def test_deadline_leaves_the_server_room_to_report_timeouts() -> None:
    assert rpc_deadline(None, None, 5.0) is None
    assert rpc_deadline(10.0, None, 5.0) == 15.0
    assert rpc_deadline(10.0, 2.0, 5.0) == 2.0
    assert rpc_deadline(None, 2.0, 5.0) == 2.0
    with pytest.raises(ValueError, match="timeout"):
        rpc_deadline(0, None, 5.0)
    with pytest.raises(ValueError, match="rpc_timeout"):
        rpc_deadline(None, -1, 5.0)


def test_request_sets_timeout_only_when_given() -> None:
    request = build_request("h", "ls", timeout=1.25, env={"A": "1"}, terminal_size=(100, 40))
    assert request.HasField("timeout")
    assert request.timeout.ToMilliseconds() == 1250
    assert dict(request.env) == {"A": "1"}
    assert (request.terminal_size.columns, request.terminal_size.rows) == (100, 40)
    assert not build_request("h", "ls").HasField("timeout")
    assert not build_request("h", "ls").HasField("terminal_size")


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
    assert args.host == "h"
    assert args.command == command


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
    ],
)
def test_usage_mistakes_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


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
