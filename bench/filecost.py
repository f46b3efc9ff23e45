"""What a transfer costs each process: throughput and CPU per run, scout's Upload or Download.

`python -m bench.filecost [down|up] [RUNS]`: the bench's rig (the loopback OpenSSH host,
one scout-server in its own process), 256 MiB moved RUNS times (default 4) by the Python
client in this process; per run the MiB/s and the CPU seconds of the scout server, this
client and sshd (its processes together). To A/B a change, run it against two trees one
after the other, alternating, and compare per-run medians: single runs move by ±25 % on a
shared machine.

`python -m bench.filecost floor [RUNS]`: the least CPU any gateway built from scout's
parts must spend on 256 MiB, each way, against scp's wall time in the same run. The
parts, each measured alone: asyncssh's SFTP get or put on its own connection (this
process's CPU, local file included) with sshd's CPU beside it; SHA-256 of the bytes
twice (the server hashes what it moves, the client checks it); a bare grpc.aio stream
of the bytes as 1 MiB messages (bench.bulkfloor: both processes' CPU). Their sum over
the machine's cores is the shortest wall time such a transfer can take, however little
scout adds: each part at its fastest run, so the bound is generous.

Not a scenario of `make bench` (scenario 13 compares scout with scp, sftp and asyncssh):
a one-off measure of where a transfer's CPU goes, for changes to the files path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil

from client import Client
from scout.allocator import keep_freed_memory
from testkit.sshd import login_user

from . import bulkfloor
from .files import _median, _owned_dir, _random_file, _run, _ssh_options, raw_sftp
from .loadgen import tree_cpu
from .rig import QUICK, Rig, start_rig
from .specs import GRPC_OPTIONS

SIZE = 256 * 2**20


@contextlib.asynccontextmanager
async def _transfers() -> AsyncIterator[tuple[Rig, Path, Path]]:
    """The bench's rig, a local file of SIZE random bytes and a remote directory the sshd
    login user owns, holding a copy of it as source.bin; all removed on exit."""
    rig = await start_rig(QUICK)
    remote = _owned_dir()
    try:
        local = rig.workdir / "local.bin"
        await asyncio.to_thread(_random_file, local, SIZE)
        source = remote / "source.bin"
        await asyncio.to_thread(shutil.copyfile, local, source)
        user = pwd.getpwnam(login_user())
        os.chown(source, user.pw_uid, user.pw_gid)
        yield rig, local, remote
    finally:
        await rig.close()
        shutil.rmtree(remote, ignore_errors=True)


async def measure(way: str, runs: int) -> list[dict[str, float]]:
    """One dict per run: MiB/s and the CPU seconds of each process."""
    async with _transfers() as (rig, local, remote):
        source = remote / "source.bin"
        server = await rig.scout([rig.sshd_host], rig.sshd_auth())
        (_, port), *_ = server.endpoints
        sshd = rig.sshd_pid
        rows = []
        for _ in range(runs):
            server_cpu, sshd_cpu = tree_cpu(server.pid), tree_cpu(sshd)
            client_cpu = time.process_time()
            began = time.perf_counter()
            async with Client(f"127.0.0.1:{port}", channel_options=GRPC_OPTIONS) as client:
                if way == "down":
                    await client.download("openssh", str(source)).to_file(rig.workdir / "back")
                else:
                    await client.upload("openssh", str(remote / "up.bin"), local)
            wall = time.perf_counter() - began
            rows.append(
                {
                    "MiB/s": SIZE / wall / 2**20,
                    "server": tree_cpu(server.pid) - server_cpu,
                    "client": time.process_time() - client_cpu,
                    "sshd": tree_cpu(sshd) - sshd_cpu,
                }
            )
        return rows


async def raw_costs(runs: int) -> dict[str, list[dict[str, float]]]:
    """Per way ("down", "up"), per run: scp's wall seconds, asyncssh's wall seconds, its
    CPU (this process) and sshd's, runs interleaved."""
    async with _transfers() as (rig, local, remote):
        back, source = rig.workdir / "back.bin", remote / "source.bin"
        where = f"{rig.sshd.user}@{rig.sshd.address}"
        scp = ["scp", *_ssh_options(rig)]
        ways = {
            "down": ([*scp, f"{where}:{source}", str(back)], False, str(back), str(source)),
            "up": ([*scp, str(local), f"{where}:{remote / 'scp.bin'}"], True, str(local),
                   str(remote / "raw.bin")),
        }  # fmt: skip
        rows: dict[str, list[dict[str, float]]] = {way: [] for way in ways}
        for _ in range(runs):
            for way, (argv, put, here, there) in ways.items():
                began = time.perf_counter()
                await asyncio.to_thread(_run, argv)
                scp_wall = time.perf_counter() - began
                async with _sshd_meter(rig.sshd_pid) as sshd_cpu:
                    own_cpu, began = time.process_time(), time.perf_counter()
                    await raw_sftp(rig, put, here, there)
                    wall, own_cpu = time.perf_counter() - began, time.process_time() - own_cpu
                row = {"scp": scp_wall, "raw": wall, "asyncssh": own_cpu, "sshd": sshd_cpu[0]}
                rows[way].append(row)
        return rows


@contextlib.asynccontextmanager
async def _sshd_meter(pid: int) -> AsyncIterator[list[float]]:
    """sshd's CPU seconds over the block, in the list it yields (set on exit). A
    connection's sshd processes exit with it and their time is not added to the listener's,
    so each descendant's is sampled every 20 ms and its last sample counts: a process's
    last 20 ms may be missed."""
    listener = psutil.Process(pid)
    seen: dict[int, float] = {}

    def sample() -> None:
        for proc in [listener, *listener.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                seen[proc.pid] = t.user + t.system

    async def sampling() -> None:
        while True:
            sample()
            await asyncio.sleep(0.02)

    sample()
    started = dict(seen)  # processes alive before the block: only their growth counts
    result: list[float] = []
    task = asyncio.create_task(sampling())
    try:
        yield result
    finally:
        task.cancel()
        sample()
        result.append(sum(cpu - started.get(p, 0.0) for p, cpu in seen.items()))


def _sha256_cpu() -> float:
    """CPU seconds to hash SIZE bytes once (the fastest of three)."""
    data = os.urandom(2**20)
    best = float("inf")
    for _ in range(3):
        began, digest = time.process_time(), hashlib.sha256()
        for _ in range(SIZE // len(data)):
            digest.update(data)
        best = min(best, time.process_time() - began)
    return best


def floor(runs: int) -> None:
    """Print each part's CPU and the bound it sets on a gateway's throughput."""
    cores = len(os.sched_getaffinity(0))
    grpc_rows = bulkfloor.measure(runs)
    grpc_cpu = min(server + client for _, server, client in grpc_rows)
    sha = _sha256_cpu()
    mib = SIZE / 2**20
    print(f"{cores} cores; per {mib:.0f} MiB, fastest of {runs} runs each:")
    print(f"  SHA-256 once {sha:.2f} s CPU; a bare gRPC stream {grpc_cpu:.2f} s (both processes)")
    for way, rows in asyncio.run(raw_costs(runs)).items():
        ssh = min(r["asyncssh"] + r["sshd"] for r in rows)
        need = ssh + 2 * sha + grpc_cpu
        scp, raw = _median([r["scp"] for r in rows]), _median([r["raw"] for r in rows])
        best = mib / (need / cores)
        print(
            f"{way}: scp {mib / scp:.0f} MiB/s, asyncssh {mib / raw:.0f} MiB/s (medians); "
            f"asyncssh + sshd {ssh:.2f} s CPU; with the hashes and gRPC {need:.2f} s, so at "
            f"best {need / cores:.2f} s on {cores} cores: {best:.0f} MiB/s, "
            f"{best / (mib / scp):.2f}x scp"
        )


def main() -> None:
    """Print one line per run (or the floor's lines)."""
    keep_freed_memory()  # the client runs here: as `scout cp` does
    way = sys.argv[1] if len(sys.argv) > 1 else "down"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    if way not in ("down", "up", "floor"):
        raise SystemExit("usage: python -m bench.filecost [down|up|floor] [RUNS]")
    if way == "floor":
        floor(runs)
        return
    for row in asyncio.run(measure(way, runs)):
        print(
            f"{way} {row['MiB/s']:5.0f} MiB/s  CPU s per {SIZE // 2**20} MiB: server "
            f"{row['server']:.2f}  client {row['client']:.2f}  sshd {row['sshd']:.2f}"
        )


if __name__ == "__main__":
    main()
