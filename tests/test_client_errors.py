"""Client pieces that need no server: error mapping, "may have run", results, options."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import grpc
import pytest

from client import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CommandFailed,
    CommandTimeout,
    DataLoss,
    ExecOptions,
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
    Unreachable,
    from_host_status,
    from_rpc_error,
)
from client import errors as errors_module
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
    (S.DATA_LOSS, DataLoss),
    (S.OUT_OF_RANGE, ServerError),
    (S.ALREADY_EXISTS, AlreadyExists),
]


def aio_error(
    code: grpc.StatusCode, details: str | None = "boom", trailing: tuple[tuple[str, str], ...] = ()
) -> Any:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


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
    assert err.may_have_run  # no x-scout-started mark: it may have run


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
    classes = [n for n in errors_module.__all__ if isinstance(getattr(errors_module, n), type)]
    assert len(classes) == 15
    for name in classes:
        assert name in doc, name
        assert issubclass(getattr(errors_module, name), ScoutError)
    assert "x-scout-started" in doc
    assert "may_have_run" in doc


NOTHING_RAN = (("x-scout-started", "false"),)


@pytest.mark.parametrize(
    ("trailing", "may_have_run"),
    [
        ((), True),  # a proxy, a GOAWAY, a killed server, grpc's own limits
        (NOTHING_RAN, False),
        ((("x-scout-started", "False "),), False),
        ((("x-scout-started", "true"),), True),
        ((("x-scout-started", "yes"),), True),  # only an explicit "false" says nothing ran
        ((("x-scout-started", "false"), ("x-scout-started", "true")), True),
        ((("x-other", "false"),), True),
    ],
)
@pytest.mark.parametrize("code", [S.UNAVAILABLE, S.RESOURCE_EXHAUSTED, S.CANCELLED, S.NOT_FOUND])
def test_only_the_servers_mark_says_nothing_ran(
    code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...], may_have_run: bool
) -> None:
    assert from_rpc_error(aio_error(code, trailing=trailing), "h").may_have_run is may_have_run


def test_what_the_caller_knows_overrides_the_mark() -> None:
    refused = aio_error(S.UNAVAILABLE, trailing=NOTHING_RAN)
    assert from_rpc_error(refused, "h", started=True).may_have_run  # output had arrived
    assert not from_rpc_error(aio_error(S.UNAVAILABLE), "", started=False).may_have_run


def test_a_timeout_the_server_decided_is_a_command_timeout_that_ran() -> None:
    stopped = aio_error(
        S.DEADLINE_EXCEEDED,
        "web1: the command ran past its timeout (2s) and was stopped",
        trailing=(("x-scout-started", "true"),),
    )
    err = from_rpc_error(stopped, "web1")
    assert (type(err), err.may_have_run) == (CommandTimeout, True)
    assert str(err) == "web1: the command ran past its timeout (2s) and was stopped"
    # our own deadline carries no mark: the server may still be running it
    assert type(from_rpc_error(aio_error(S.DEADLINE_EXCEEDED), "web1")) is Timeout
    host_status = from_host_status(
        S.DEADLINE_EXCEEDED.value[0], "web2: ran past", "web2", started=True
    )
    assert (type(host_status), host_status.may_have_run) == (CommandTimeout, True)


def test_unreachable_is_unavailable_where_nothing_ran_and_survives_pickling() -> None:
    err = Unreachable("cannot reach scout at h:1: refused", target="h:1", cause="refused")
    assert isinstance(err, Unavailable)
    assert (err.code, err.may_have_run) == ("UNAVAILABLE", False)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.target, copy.cause, copy.may_have_run) == (
        Unreachable,
        "h:1",
        "refused",
        False,
    )


class MarkedSyncError(grpc.RpcError):  # type: ignore[misc]  # grpcio has no type hints
    """A sync-API error carrying scout's mark, as grpc's sync Call returns it."""

    def code(self) -> grpc.StatusCode:
        return S.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return "no slot"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return NOTHING_RAN


def test_the_mark_is_read_from_sync_errors_too() -> None:
    err = from_rpc_error(MarkedSyncError(), "h")
    assert isinstance(err, Overloaded)
    assert not err.may_have_run
    assert from_rpc_error(SyncCallError(), "h").may_have_run


def test_errors_made_before_sending_and_command_failures() -> None:
    assert not InvalidRequest("bad host").may_have_run
    assert CommandFailed(Result(exit_code=1)).may_have_run  # it ran
    assert "may_have_run=True" in repr(from_rpc_error(aio_error(S.ABORTED), "h"))


def test_errors_survive_pickling_for_multiprocessing_users() -> None:
    err = pickle.loads(pickle.dumps(from_rpc_error(aio_error(S.ABORTED), "h")))
    assert isinstance(err, Aborted)
    assert (str(err), err.code, err.host, err.may_have_run) == ("boom", "ABORTED", "h", True)
    refused = from_rpc_error(aio_error(S.UNAVAILABLE, trailing=NOTHING_RAN), "h")
    assert not pickle.loads(pickle.dumps(refused)).may_have_run
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
    assert ExecOptions().deadline(5.0) is None
    assert ExecOptions(timeout=10.0).deadline(5.0) == 15.0
    assert ExecOptions(timeout=10.0, rpc_timeout=2.0).deadline(5.0) == 2.0
    assert ExecOptions(rpc_timeout=2.0).deadline(5.0) == 2.0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"timeout": 0}, "timeout must be positive"),
        ({"rpc_timeout": -1}, "rpc_timeout must be positive"),
        ({"max_output_bytes": -1}, "max_output_bytes"),
        ({"terminal_size": (80,)}, "columns, rows"),
    ],
)
def test_options_refuse_values_the_server_would_refuse(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExecOptions(**fields)


def test_request_sets_timeout_only_when_given() -> None:
    options = ExecOptions(timeout=1.25, env={"A": "1"}, terminal_size=(100, 40))
    request = options.request("h", "ls")
    assert request.HasField("timeout")
    assert request.timeout.ToMilliseconds() == 1250
    assert dict(request.env) == {"A": "1"}
    assert (request.terminal_size.columns, request.terminal_size.rows) == (100, 40)
    assert not ExecOptions().request("h", "ls").HasField("timeout")
    assert not ExecOptions().request("h", "ls").HasField("terminal_size")


def test_options_keep_their_own_copy_of_env() -> None:
    env = {"A": "1"}
    options = ExecOptions(env=env)
    env["B"] = "2"
    assert dict(options.env) == {"A": "1"}
    with pytest.raises(TypeError):
        options.env["C"] = "3"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout = 3  # type: ignore[misc]
