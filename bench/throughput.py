"""Scenarios 1, 4 and 6: warm throughput on one host, against the raw asyncssh floor.

1. One protocol-only host, warm, 50 closed-loop callers: scout against raw asyncssh and
   the naive pool. What scout's gRPC hop and pool cost when SSH itself is nearly free.
4. One real OpenSSH host (MaxSessions 10), 50 callers: scout must spread them over
   several connections without a single refused-channel error reaching a caller. The
   floor is the best of a few hand-tuned raw clients (K connections, worker w on w % K).
6. Stream: a large output to a fast reader, scout's Stream against a raw asyncssh
   session that only counts bytes.
"""

from __future__ import annotations

import math
from typing import Any

from .results import Section, error_count, errors_text, latency_cells, median_of, num, ratio, times
from .rig import Mode, Rig

CALLERS = 50
COMMAND = "echo ok"
_RAW_FAKE_CONNS = 7  # what scout opens for 50 callers at 8 channels per connection
_RAW_SSHD_CONNS = (6, 8, 10)  # at most 9, 7 and 5 sessions per connection
_GCM = "aes128-gcm@openssh.com"
_CHACHA = "chacha20-poly1305@openssh.com"
_COLUMNS = ["backend", "req/s", "P50 ms", "P95 ms", "P99 ms", "max ms", "errors"]


_CPU_COLUMNS = ["CPU µs/req: load gen.", "server", "SSH server", "total"]


def _total_cpu(results: list[dict[str, Any]]) -> float:
    """Median CPU µs per request of load generator, server and SSH server together."""
    parts = [median_of(results, f"{p}_cpu_us_per_req") for p in ("loadgen", "server", "target")]
    return sum(c for c in parts if not math.isnan(c))


def _row(label: str, results: list[dict[str, Any]]) -> list[str]:
    """Throughput, latency, errors, then CPU per request by process and in total."""
    row = [label, num(median_of(results, "throughput")), *latency_cells(results)]
    row.append(errors_text(results))
    cpu = [median_of(results, f"{p}_cpu_us_per_req") for p in ("loadgen", "server", "target")]
    row += [num(c) for c in cpu]
    row.append(num(_total_cpu(results)))
    return row


async def single_host(rig: Rig, mode: Mode) -> Section:
    """Scenario 1: one warm protocol-only host, 50 callers."""
    host = rig.fake_hosts[0]
    section = Section(
        "s1",
        "1. Single host, warm, 50 callers",
        f"One protocol-only SSH host (answers `exec` from memory), {CALLERS} closed-loop "
        f"callers, {mode.warmup:g} s warm-up then {mode.duration:g} s measured, "
        f"{mode.runs} runs interleaved. Raw asyncssh uses {_RAW_FAKE_CONNS} connections "
        "opened beforehand (as many as scout opens for 50 callers); the naive pool one. "
        "The baselines use the cipher scout negotiates, except the row that names another. "
        "*gRPC alone* is a grpc.aio ExecService that answers at once with no SSH behind it "
        "(`bench/grpcfloor.py`): the gRPC hop's own cost. CPU per request: the server "
        "process's, the load generator's (for raw asyncssh that is the SSH client work) "
        "and the SSH server's; on 2 cores, the total bounds the throughput.",
        [*_COLUMNS, *_CPU_COLUMNS],
    )
    server = await rig.scout([host], rig.fake_login)
    floor = await rig.grpc_floor()
    common = {
        "target_pid": rig.fake.pid,
        "hosts": [host],
        "command": COMMAND,
        "mode": "closed",
        "concurrency": CALLERS,
        "warmup": mode.warmup,
        "duration": mode.duration,
    }
    auth = rig.auth(rig.fake_login)
    other = _CHACHA if rig.scout_cipher != _CHACHA else _GCM
    other_label = f"raw asyncssh, {other}"
    specs = {
        "scout": {**common, "backend": "scout", "target": server.target, "server_pid": server.pid},
        "raw asyncssh": {**common, "backend": "raw", "auth": auth, "per_host": _RAW_FAKE_CONNS},
        "naive global-lock pool": {**common, "backend": "naive", "auth": auth},
        other_label: {
            **common,
            "backend": "raw",
            "auth": rig.auth(rig.fake_login, [other]),
            "per_host": _RAW_FAKE_CONNS,
        },
        "gRPC alone, no SSH": {
            **common,
            "backend": "scout",
            "target": f"127.0.0.1:{floor.ready['port']}",
            "server_pid": floor.pid,
        },
    }
    try:
        results = await rig.repeat("s1", mode.runs, specs)
    finally:
        await server.stop()
        await floor.stop()
    section.rows = [_row(label, rs) for label, rs in results.items()]
    rate = {label: median_of(rs, "throughput") for label, rs in results.items()}
    share = ratio(rate["scout"], rate["raw asyncssh"])
    cpu = median_of(results["scout"], "server_cpu_us_per_req")
    grpc_us = median_of(results["gRPC alone, no SSH"], "server_cpu_us_per_req")
    ssh_us = median_of(results["raw asyncssh"], "loadgen_cpu_us_per_req")
    section.notes.append(f"scout / raw asyncssh throughput: **{times(share)}**")
    section.notes.append(
        f"scout's server CPU per Execute, {num(cpu)} µs ≈ gRPC hop {num(grpc_us)} µs (the "
        f"gRPC-alone server) + SSH client work {num(ssh_us)} µs (the raw client's own CPU) "
        f"+ **{num(cpu - grpc_us - ssh_us)} µs** of scout's own (pool, service, command "
        "layer, and the asyncio tasks between them)."
    )
    section.notes.append(
        f"scout negotiates {rig.scout_cipher or 'an unknown cipher'}, and the baselines "
        f"use the same. The raw client on {other} instead runs at "
        f"{times(ratio(rate[other_label], rate['raw asyncssh']))} that throughput: the "
        "cipher alone moves asyncssh's cost per command a lot (chacha20-poly1305 takes "
        "several cryptography calls per packet, AES-GCM one)."
    )
    total = {label: _total_cpu(rs) for label, rs in results.items()}
    own = cpu - grpc_us - ssh_us
    cpu_share = ratio(total["raw asyncssh"], total["scout"])
    section.verdict(
        "throughput ≥ 0.6 of raw asyncssh",
        times(share),
        None if math.isnan(share) else share >= 0.6,
        f"all three processes together spend {num(total['scout'])} µs of CPU per request "
        f"through scout and {num(total['raw asyncssh'])} µs with the raw client; on 2 busy "
        f"cores throughput goes as the inverse, {times(cpu_share)}. "
        f"scout's one server process alone needs {num(cpu)} µs per request, so it tops out "
        f"near {num(1e6 / cpu if cpu else math.nan)} req/s on one core.",
    )
    section.verdict(
        "server CPU per Execute ≤ 400 µs",
        f"{num(cpu)} µs",
        None if math.isnan(cpu) else cpu <= 400,
        f"the gRPC hop alone costs {num(grpc_us)} µs (a grpc.aio server answering without "
        f"SSH) and the SSH client work alone {num(ssh_us)} µs (raw asyncssh, same cipher): "
        f"{num(grpc_us + ssh_us)} µs before any scout code, so 400 µs is below the floor of "
        f"grpc.aio + asyncssh on this CPU. scout's own share is about {num(own)} µs; the "
        "profile below shows where.",
    )
    section.raw = {
        "results": results,
        "ratio": share,
        "cpu_us": cpu,
        "grpc_floor_us": grpc_us,
        "ssh_floor_us": ssh_us,
    }
    return section


async def openssh_host(rig: Rig, mode: Mode) -> Section:
    """Scenario 4: one real sshd (MaxSessions 10), 50 callers."""
    host = rig.sshd_host
    section = Section(
        "s4",
        "4. Real OpenSSH, one host, 50 callers",
        f"OpenSSH sshd on loopback with its default `MaxSessions 10`, {CALLERS} closed-loop "
        f"callers running `{COMMAND}` (sshd forks a shell for each), {mode.warmup:g} s warm-up "
        f"then {mode.duration:g} s measured, {mode.runs} runs. Raw asyncssh is hand-tuned: "
        "K connections opened beforehand, caller w always on connection w % K; the best K "
        "without errors is the floor. The naive pool has one connection per host. "
        f"Login: {rig.sshd_note}. CPU per request as in scenario 1; the SSH server's "
        "is sshd's whole process tree, the shells it forks included.",
        [*_COLUMNS, *_CPU_COLUMNS],
    )
    server = await rig.scout([host], rig.sshd_login)
    common = {
        "target_pid": rig.sshd_pid,
        "hosts": [host],
        "command": COMMAND,
        "mode": "closed",
        "concurrency": CALLERS,
        "warmup": mode.warmup,
        "duration": mode.duration,
    }
    auth = rig.auth(rig.sshd_login)
    specs: dict[str, dict[str, Any]] = {
        "scout": {**common, "backend": "scout", "target": server.target, "server_pid": server.pid}
    }
    for k in _RAW_SSHD_CONNS:
        specs[f"raw asyncssh, {k} connections"] = {
            **common,
            "backend": "raw",
            "auth": auth,
            "per_host": k,
        }
    specs["naive global-lock pool"] = {**common, "backend": "naive", "auth": auth}
    try:
        results = await rig.repeat("s4", mode.runs, specs)
    finally:
        await server.stop()
    section.rows = [_row(label, rs) for label, rs in results.items()]
    clean_raw = {
        label: median_of(rs, "throughput")
        for label, rs in results.items()
        if label.startswith("raw") and error_count(rs) == 0
    }
    best_label = max(clean_raw, key=lambda k: clean_raw[k], default="")
    best = clean_raw.get(best_label, math.nan)
    scout_rate = median_of(results["scout"], "throughput")
    share = ratio(scout_rate, best)
    scout_errors = error_count(results["scout"])
    section.notes.append(
        f"best raw client without errors: {best_label or 'none'}; "
        f"scout / best raw: **{times(share)}**"
    )
    section.verdict("zero errors", f"{scout_errors} errors", scout_errors == 0)
    scout_total = _total_cpu(results["scout"])
    raw_total = _total_cpu(results[best_label]) if best_label else math.nan
    sshd_us = median_of(results["scout"], "target_cpu_us_per_req")
    section.verdict(
        "throughput ≥ 0.9 of the best raw client",
        times(share),
        None if math.isnan(share) else share >= 0.9,
        f"sshd's process tree spends {num(sshd_us)} µs of CPU per command (it forks a "
        f"shell each time), and all processes together {num(scout_total)} µs per request "
        f"through scout against {num(raw_total)} µs with the raw client: scout's server "
        f"({num(median_of(results['scout'], 'server_cpu_us_per_req'))} µs) and its gRPC "
        "client come on top of the same sshd work, and on 2 saturated cores throughput "
        f"goes as the inverse ({times(ratio(raw_total, scout_total))}).",
    )
    section.raw = {"results": results, "ratio": share, "best_raw": best_label}
    return section


async def stream(rig: Rig, mode: Mode) -> Section:
    """Scenario 6: Stream throughput from sshd to a fast reader."""
    host = rig.sshd_host
    size = mode.stream_bytes
    command = f"head -c {size} /dev/zero"
    section = Section(
        "s6",
        "6. Stream throughput",
        f"`{command}` ({size / 2**20:,.0f} MiB) on the OpenSSH host, read as fast as "
        "possible: scout's `Stream` (every chunk through scout, then gRPC to the reader) "
        f"against a raw asyncssh session that only counts bytes. {mode.runs} runs.",
        ["backend", "MiB/s", "seconds", "errors"],
    )
    server = await rig.scout([host], rig.sshd_login)
    common = {"hosts": [host], "command": command, "mode": "sequence", "timeout": 600.0}
    specs = {
        "scout Stream": {
            **common,
            "backend": "scout",
            "op": "stream",
            "target": server.target,
            "server_pid": server.pid,
        },
        "raw asyncssh read": {**common, "backend": "raw", "auth": rig.auth(rig.sshd_login)},
    }
    try:
        results = await rig.repeat("s6", mode.runs, specs)
    finally:
        await server.stop()
    for label, rs in results.items():
        section.rows.append(
            [label, num(median_of(rs, "mib_s")), num(median_of(rs, "elapsed"), 2), errors_text(rs)]
        )
    share = ratio(
        median_of(results["scout Stream"], "mib_s"),
        median_of(results["raw asyncssh read"], "mib_s"),
    )
    section.notes.append(f"scout / raw asyncssh: **{times(share)}**")
    section.verdict(
        "≥ 0.5 of raw asyncssh read throughput",
        times(share),
        None if math.isnan(share) else share >= 0.5,
    )
    section.raw = {"results": results, "ratio": share}
    return section
