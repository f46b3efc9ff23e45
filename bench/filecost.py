"""What a transfer costs each process: throughput and CPU per run, scout's Upload or Download.

`python -m bench.filecost [down|up] [RUNS]`: the bench's rig (the loopback OpenSSH host,
one scout-server in its own process), 256 MiB moved RUNS times (default 4) by the Python
client in this process; per run the MiB/s and the CPU seconds of the scout server, this
client and sshd (its processes together). To A/B a change, run it against two trees one
after the other, alternating, and compare per-run medians: single runs move by ±25 % on a
shared machine.

Not a scenario of `make bench` (scenario 13 compares scout with scp, sftp and asyncssh):
a one-off measure of where a transfer's CPU goes, for changes to the files path.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
import time

from client import Client
from scout.allocator import keep_freed_memory
from testkit.sshd import login_user

from .files import _owned_dir, _random_file
from .loadgen import tree_cpu
from .rig import QUICK, start_rig
from .specs import GRPC_OPTIONS

SIZE = 256 * 2**20


async def measure(way: str, runs: int) -> list[dict[str, float]]:
    """One dict per run: MiB/s and the CPU seconds of each process."""
    rig = await start_rig(QUICK)
    remote = _owned_dir()
    try:
        local = rig.workdir / "local.bin"
        await asyncio.to_thread(_random_file, local, SIZE)
        source = remote / "source.bin"
        await asyncio.to_thread(shutil.copyfile, local, source)
        user = pwd.getpwnam(login_user())
        os.chown(source, user.pw_uid, user.pw_gid)
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
    finally:
        await rig.close()
        shutil.rmtree(remote, ignore_errors=True)


def main() -> None:
    """Print one line per run."""
    keep_freed_memory()  # the client runs here: as `scout cp` does
    way = sys.argv[1] if len(sys.argv) > 1 else "down"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    if way not in ("down", "up"):
        raise SystemExit("usage: python -m bench.filecost [down|up] [RUNS]")
    for row in asyncio.run(measure(way, runs)):
        print(
            f"{way} {row['MiB/s']:5.0f} MiB/s  CPU s per {SIZE // 2**20} MiB: server "
            f"{row['server']:.2f}  client {row['client']:.2f}  sshd {row['sshd']:.2f}"
        )


if __name__ == "__main__":
    main()
