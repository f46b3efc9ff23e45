"""What an idempotency key is, and what makes two requests under it the same request.

Checked before anything runs (`check_durable`, from the servicer's admission): a key is
1-128 of A-Z a-z 0-9 . _ : - (it sits in log and audit lines as it is), `detach_grace`
needs a key and stays under `[durable] max_detach_grace`. The fingerprint is what the
store keeps to tell a retry (the same request) from a reuse (ALREADY_EXISTS).
"""

from __future__ import annotations

import hashlib
import json
import re

from scout.v1 import exec_pb2

from .config import DurableSettings
from .errors import InvalidRequest
from .requests import duration_seconds

KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_key(key: str, name: str = "idempotency_key") -> None:
    """A key must be 1-128 of A-Z a-z 0-9 . _ : - (so it can sit in a log line as is)."""
    if not KEY.fullmatch(key):
        shown = repr(key[:32]) + ("..." if len(key) > 32 else "")
        raise InvalidRequest(
            f"{name}: 1-128 characters of A-Z a-z 0-9 . _ : -, got {shown} ({len(key)} chars)"
        )


def check_durable(settings: DurableSettings, request: exec_pb2.ExecuteRequest) -> None:
    """A request's key and detach_grace, checked before anything runs."""
    if request.idempotency_key:
        check_key(request.idempotency_key)
    detach_grace(settings, request)


def detach_grace(settings: DurableSettings, request: exec_pb2.ExecuteRequest) -> float:
    """The request's detach_grace in seconds (0: none), checked against the maximum."""
    if not request.HasField("detach_grace"):
        return 0.0
    seconds = duration_seconds("detach_grace", request.detach_grace)
    if not request.idempotency_key:
        raise InvalidRequest("detach_grace: only with an idempotency_key (to attach back to)")
    if seconds < 0:
        raise InvalidRequest(f"detach_grace: must not be negative, got {seconds:g}s")
    if seconds > settings.max_detach_grace:
        raise InvalidRequest(
            f"detach_grace: at most {settings.max_detach_grace:g}s on this server "
            f"([durable] max_detach_grace), got {seconds:g}s"
        )
    return seconds


def fingerprint(host: str, request: exec_pb2.ExecuteRequest) -> str:
    """What makes two requests the same request: host, command or argv, env, working_dir,
    stdin (its digest) and pty."""
    stdin = hashlib.sha256(request.stdin).hexdigest() if request.stdin else ""
    env = sorted(request.env.items())
    # a JSON list: unambiguous, and one C call
    what: list[object] = [host, request.command, list(request.argv), env, request.working_dir]
    what += [stdin, request.pty]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()
