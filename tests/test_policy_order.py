"""A refusal names the real reason: host, then command, then the method (server/callers.py).

A caller whose policy has `stream = false` used to hear "may not use Stream" for a
forbidden host or command too, which hid the reason and made the CLI's fallback to
Execute (allowed) impossible to tell from a refusal.
"""

from __future__ import annotations

import pytest

from scout.v1 import exec_pb2
from server.callers import Gate
from server.config import CallerConfig, Config
from server.errors import PermissionDenied
from server.live import LiveConfig

BATCH = CallerConfig(name="batch", hosts=("web*",), commands=("uptime",), stream=False)


@pytest.mark.parametrize(
    ("method", "host", "command", "says"),
    [
        ("Stream", "db1", "uptime", "may not run commands on 'db1' (hosts: web*)"),
        ("Stream", "web1", "rm -rf /", "may not run argv 'rm -rf /' (commands: uptime)"),
        ("Stream", "web1", "uptime", "may not use Stream (its policy has stream = false)"),
        ("Execute", "db1", "uptime", "may not run commands on 'db1' (hosts: web*)"),
    ],
)
def test_a_refusal_names_the_rule_that_refused(
    method: str, host: str, command: str, says: str
) -> None:
    with pytest.raises(PermissionDenied) as info:
        gate = Gate(LiveConfig(Config(callers=(BATCH,))))
        gate.authorize(BATCH, method, exec_pb2.ExecuteRequest(host=host, argv=command.split()))
    assert info.value.message == f"caller batch {says}"
