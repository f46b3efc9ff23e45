"""A real redis-server on loopback, started by the tests themselves (Debian's package).

Its temp dir holds its config (persistence off: no RDB, no AOF) and its log. redis
cannot report a port-0 bind, so start_redis() picks a free port, and picks again when
redis says the port was taken meanwhile; it returns once redis answers PING. stop() and
start() again bring the same server down and back on the same port (a store that goes
away and returns), with its data gone, as persistence is off; pause() and resume() make
it hang and come back.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port
from .processes import stop

REDIS_SERVER = Path("/usr/bin/redis-server")
START_TIMEOUT = 10.0
BIND_ATTEMPTS = 5


class RedisError(RuntimeError):
    """redis-server is missing or would not start; the message says what to do."""


@dataclass
class RedisServer:
    """One redis-server process on 127.0.0.1, password optional."""

    directory: Path
    port: int = 0
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis://[:password@]127.0.0.1:PORT/0"""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """What redis wrote to its log so far."""
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            'save ""',
            "appendonly no",
            f"dir {self.directory}",
            f"logfile {self.directory / 'redis.log'}",
            "daemonize no",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        path = self.directory / "redis.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _answers(self) -> bool:
        """Whether redis answers PING (a password-protected one answers NOAUTH: up too)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def start(self) -> None:
        """Start redis on its port (a fresh one if it has none) and wait for PING."""
        if not REDIS_SERVER.exists():
            raise RedisError(f"{REDIS_SERVER} not found: apt-get install redis-server")
        fresh = self.port == 0
        for _ in range(BIND_ATTEMPTS if fresh else 1):
            if fresh:
                self.port = free_port()
            if self._launch():
                return
        raise RedisError(f"redis-server found no free port; its log:\n{self.log}")

    def _launch(self) -> bool:
        """Start redis; False when its port was taken, raise on other failures."""
        logged = len(self.log)
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), str(self._write_config())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                if "Address already in use" in self.log[logged:]:
                    return False
                raise RedisError(f"redis-server exited at start; its log:\n{self.log}")
            if self._answers():
                return True
            time.sleep(0.02)
        self.stop()
        raise RedisError(f"redis-server did not answer within {START_TIMEOUT}s:\n{self.log}")

    def pause(self) -> None:
        """SIGSTOP redis: connections stay open (and new ones are accepted by the kernel),
        but nothing answers: a hung server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT what pause() stopped."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop redis (its connections drop; its data is gone)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a paused one would not hear TERM
            stop(self.process, timeout=5.0)
            self.process = None


def start_redis(directory: Path, password: str | None = None) -> RedisServer:
    """Start a redis-server with its files in directory; stop() it."""
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory, password=password)
    server.start()
    return server
