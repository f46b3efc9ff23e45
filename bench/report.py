"""BENCHMARKS.md: the machine, the method, a table per scenario, the targets, the findings.

Everything in it is generated from one invocation's results, so rerunning `make bench`
replaces it whole; nothing in it is written by hand. The one fixed part is FINDINGS: what
one-off investigations (a profile, a garbage-collection log) found, kept as text once the
tools that produced them left the default path.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field

import asyncssh
import grpc
import psutil
from google.protobuf import __version__ as protobuf_version

from .results import Section, Verdict


def _run(argv: list[str]) -> str:
    """A command's output (stdout and stderr), or "" if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout + done.stderr).strip()


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    lscpu = _run(["lscpu"])
    fields = dict(re.findall(r"^([^:\n]+):\s*(.+)$", lscpu, re.MULTILINE))
    sshd = _run(["/usr/sbin/sshd", "-V"]).splitlines()
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "CPU": fields.get("Model name", platform.processor() or "?"),
        "CPUs (lscpu / nproc)": f"{fields.get('CPU(s)', '?')} / {_run(['nproc']) or '?'}",
        "threads per core": fields.get("Thread(s) per core", "?"),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "asyncssh": asyncssh.__version__,
        "grpcio": grpc.__version__,
        "protobuf": protobuf_version,
        "OpenSSH": sshd[0] if sshd else "?",
        "scout commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


def load_average() -> str:
    """The 1-minute load average, a hint of how shared the machine was."""
    return f"{os.getloadavg()[0]:.2f}"


@dataclass
class Report:
    """One invocation's results, ready to write."""

    mode: str
    command: str
    started: float
    finished: float
    machine: dict[str, str]
    load_start: str
    load_end: str
    sections: list[Section]
    failures: list[str] = field(default_factory=list)

    @property
    def verdicts(self) -> list[Verdict]:
        """Every target of every scenario, in order."""
        return [v for s in self.sections for v in s.verdicts]


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


_METHOD = """\
- **Targets**, each in its own process: a protocol-only asyncssh server (`bench/fakessh.py`:
  real SSH key exchange, authentication and channels, but `exec` answers from memory and
  spawns nothing) listening on 200 loopback addresses 127.0.0.2… (one "host" each), with a
  connect delay injected before authentication; and a real OpenSSH `sshd` on 127.0.0.1
  (`testkit/sshd.py`, default `MaxSessions 10` and `MaxStartups`).
- **Server under test**: `scout-server --config <generated TOML> --listen 127.0.0.1:0`, a
  fresh process per scenario (per run where the scenario needs a cold pool), ready when the
  gRPC health service says SERVING. Its CPU time and RSS are read with psutil.
- **Load generators** (`bench/loadgen.py`), a separate process per measurement, real gRPC
  calls through the generated stubs: *closed loop* (N callers back to back), *open loop*
  (arrivals on a fixed schedule, latency from the scheduled time, so queueing shows),
  *burst* (N at once, makespan). Percentiles are nearest-rank over successful requests;
  failures are counted by gRPC status code (or exception, for the baselines).
- **Baselines**, driven by the same generator in the same invocation: *raw asyncssh* on
  connections opened beforehand (no pool, no gRPC hop: the floor of what SSH costs) and
  the *naive pool* (`bench/naive.py`): the seed's "current" design, one global
  `asyncio.Lock` held across `asyncssh.connect()`, one connection per host, no bounds.
  Both use the cipher scout negotiates (learned at the start from the SSH server's side),
  so a ratio measures scout, not a cipher choice. A third reference, *gRPC alone*
  (`bench/grpcfloor.py`), is a grpc.aio ExecService that answers without SSH: the cost
  of the gRPC hop by itself.
- **CPU per request**: each process's CPU time (psutil, user + system, reaped children
  included) over the measured window, divided by the requests finished in it, for the load
  generator, the server under test and the SSH server's whole process tree.
- Runs of different backends are interleaved and tables show **medians** of the runs.
  Ratios compare medians. Load generator, server and SSH target share the same 2 cores,
  as the issue's targets assume; other work on the machine adds noise (see load average)."""


FINDINGS = """\
## Where scout's time goes (recorded findings)

Not measured by this run: what two one-off investigations found, kept as text (their
tools, `bench/profiled.py` and `bench/pauses.py`, are in the history before issue 10).

- **cProfile of the scenario-1 load** (818 requests, profiled in the measured window only,
  timed by the process CPU clock; 932 µs of server CPU per Execute unprofiled): asyncssh's
  Python code 38 % (~355 µs per request), asyncio's Python code 21 % (~200 µs), other C
  functions and builtins 13 %, scout's own server code 8 % (~72 µs), asyncio's C tasks and
  grpc's Cython core 8 %, system calls 4 %, OpenSSL 1 %, protobuf 0.2 %. Per request: 27
  event-loop callbacks, 5 tasks, 9 futures, 2 timers, 10 SSH packets received and 6 sent.
  Most of the server's CPU is SSH protocol work and event-loop machinery, not scout's code.
- **Garbage collection and the latency tail**: the ladder's highest held rung (1,000 req/s)
  rerun for 8 s against a server logging its collections saw no full (generation 2)
  collection in the window, so the tail of the ladder's latencies is not GC pauses."""


MOVED = """\
## What moved, and why

Written by hand for each change that can move a number (the tables above are this run's).

- **Issues 8-11** (hardening, every exit path, the pool as one assignment step, TLS,
  callers, audit): no scenario moved beyond the machine's noise. Against the report before
  them (a run of the old code on another day): server CPU per Execute 932 -> 782 us; the
  same-day runs of the old code by the bench rewrite gave 745-778 us, so the change is the
  day, not the code. Scenario 1's ratio to raw (0.29x; 0.31-0.35x for the old code the
  same day), scenario 3's highest rung held (500 here; the old code flipped between 500
  and 1,000 run to run), scenario 4 (0.77x; 0.69-0.72x before), 5 (336 req/s; 271-333
  before), 6 (0.47x; 0.39-0.64x before) and 7 (40 KiB per connection; 42-43 before) are
  within their run-to-run spread. Per request, the new code adds a task for the channel
  open (so an open can outlive a caller that gave up) and an authentication step; it
  saves the trampoline and some bookkeeping of the old pool.
- **Issue 12, scenario 8 (new)**: ExecuteMany to 200 hosts, max_parallel 50, against raw
  asyncssh with a Semaphore(50) (the rig's raw path, a session that only counts bytes: a
  stricter floor than `conn.run`). First run: warm 114 against 69 ms (1.65x, target 1.25x),
  cold 596 against 440 ms (1.35x); no per-host error, at most 50 channels at once. Warm,
  scout's server spends ~450 us of CPU per host (790 us per Execute in scenario 1: one RPC
  carries 200 commands) and the raw client ~300 us, each process busy ~80-90 % of its
  makespan: 1.25x leaves scout ~75 us per host beyond the SSH work. A warm run lasts
  ~100 ms, so noise is large (smoke runs: 0.94x to 2.9x). The raw cold client now closes
  its connections after the clock, not inside it: 8 interleaved A/B bursts of scenario 2's
  100 hosts gave 214 ms (old) and 223 ms (new) medians, no difference."""


def render(report: Report) -> str:
    """The whole Markdown document."""
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(report.started))
    minutes = (report.finished - report.started) / 60
    lines = [
        "# scout benchmarks",
        "",
        f"Generated by `{report.command}` ({report.mode} mode) on {when}, in {minutes:.1f} "
        "minutes. Rerun with `make bench` (quick, a few minutes) or `make bench-full` "
        "(longer windows, more runs). This file is generated; edit `bench/report.py`.",
        "",
        "## Targets (issues 5 and 12)",
        "",
    ]
    lines += _table(
        ["scenario", "target", "measured", "result"],
        [[v.scenario, v.target, v.figure, f"**{v.mark}**"] for v in report.verdicts],
    )
    if report.failures:
        lines += ["", "Scenarios that failed to run:", ""]
        lines += [f"- {f}" for f in report.failures]
    lines += ["", "## Machine", ""]
    lines += _table(["", ""], [[k, v] for k, v in report.machine.items()])
    lines += [
        "",
        f"1-minute load average: {report.load_start} at the start, {report.load_end} at the "
        "end (2 would mean both cores busy on average).",
        "",
        "## Method",
        "",
        _METHOD,
        "",
        "Commands: `make bench` = `.venv/bin/python -m bench --quick`; `make bench-full` = "
        "`.venv/bin/python -m bench --full`; one scenario: `python -m bench --quick --only 3`.",
    ]
    for section in report.sections:
        lines += ["", f"## {section.title}", "", section.what, ""]
        lines += _table(section.columns, section.rows)
        if section.notes:
            lines += [""] + [f"{note}  " for note in section.notes]
    lines += ["", FINDINGS, "", MOVED]
    lines += ["", "## Closing note", ""]
    for v in report.verdicts:
        lines.append(f"- {v.scenario}: {v.target}: measured {v.figure}, **{v.mark}**.")
        if v.why:
            lines.append(f"  Why: {v.why}")
    if any(v.met is False for v in report.verdicts):
        lines += [
            "",
            "Where a target is missed, the findings above show where the server's time goes.",
        ]
    return "\n".join(lines) + "\n"
