"""Worker processes: N copies of the server on one port, started and watched by a supervisor.

`scout-server --workers N` (config `workers`, N > 1) makes the process a supervisor:

- It binds the listen address first, alone, so a port someone else holds (another scout
  included) fails as it does for one process; only then does it set SO_REUSEPORT on that
  socket, which lets its workers bind the same address. It never listens: the kernel
  spreads incoming connections over the workers' listening sockets, and the bound socket
  keeps the port reserved while a worker restarts. Port 0 becomes the port the kernel
  picked, which every worker is given.
- Each worker is `python -m scout.server --worker-fd FD`, a fresh interpreter. Not
  multiprocessing: its spawn re-imports the main module in each child, and
  `server/__main__.py` runs the server when imported; and a plain command line is what
  `ps` shows. Over a socketpair (FD) the worker receives its start (its index, and the
  configuration the supervisor read and checked once, with its share of the limits, so a
  worker started again serves what the others serve even if the file changed meanwhile),
  answers "ready", then its metrics when asked. The supervisor holds the only other end:
  when the supervisor dies however it dies, the worker reads EOF and shuts down as on
  SIGTERM (no prctl, no race with a parent that died before the child looked).
- A worker that dies is started again, at most RESTART_LIMIT times in RESTART_WINDOW
  seconds; one more and the supervisor stops every worker and exits 1.
- SIGTERM and SIGINT are passed on to every worker as SIGTERM, and mean what they mean to
  one process: the first drains, the second skips the grace, the third exits at once.
  SIGHUP is passed on (each worker reloads its share of the file, `worker_config`), and
  the supervisor reads the file again, off its loop, for the workers it starts later.
  Workers run in sessions of their own, so a Ctrl-C on a terminal reaches them once,
  through the supervisor.

- Keyed commands (server.durable) are owned by one worker, but a retry or an `attach`
  lands on whichever worker the kernel picks. The supervisor makes one owner group id, a
  random secret and a private socket folder (0700, temporary, removed at exit) and gives
  each worker its owner id with them (`ForwardingPlan` in the start); each worker serves
  its siblings on `FOLDER/ID.sock`, and forwards a call for a sibling's key there
  (server.forwarding). When a worker dies, the supervisor removes its socket, so its
  siblings judge its keys by its heartbeat instead.

The limits a config promises for the whole server are shared out by `share`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import pickle
import secrets
import signal
import socket
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import (
    WORKERS_AUTO,
    Config,
    ConfigError,
    check_exposure,
    listening_line,
    metrics_warnings,
)
from .configfile import available_cores, load
from .forwarding import ForwardingPlan
from .metrics import MetricsServer
from .workermetrics import Aggregate

log = logging.getLogger(__name__)

RESTART_LIMIT = 5  # restarts allowed within RESTART_WINDOW seconds; one more stops all
RESTART_WINDOW = 60.0
SCRAPE_TIMEOUT = 2.0  # seconds a worker has to hand over its metrics for one scrape
_LENGTH = struct.Struct("!Q")  # the start message's length, before it
# The folder this package was imported from, and its name: `scout.server` when installed,
# `server` in the repository (`python -m server`); workers start the same way.
PACKAGE = __package__ or "server"
PACKAGE_ROOT = str(Path(__file__).absolute().parents[PACKAGE.count(".") + 1])


@dataclass(frozen=True)
class WorkerStart:
    """What a worker is told at start: its place, and the config it serves."""

    index: int  # 0 .. count - 1: the `worker` field of its log lines
    count: int
    config: Config  # listen on the reserved port, limits shared, no [metrics] listen
    config_file: Path | None  # re-read on SIGHUP, for the inventory
    forwarding: ForwardingPlan | None = None  # its owner id, its siblings' sockets and secret


def count(config: Config) -> int:
    """How many workers to run: the configured number, or for "auto" one per core this
    process may use, but no more than every shared limit can be split among (see share)."""
    if config.workers != WORKERS_AUTO:
        return config.workers
    cores = available_cores()
    fits, why = 1, ""
    for n in range(cores, 1, -1):
        try:
            share(config, n)
        except ConfigError as exc:
            why = why or str(exc)
            continue
        fits = n
        break
    if fits < cores:
        log.warning("workers = auto: %d for %d cores, because %s", fits, cores, why)
    return fits


def worker_config(fresh: Config, start: WorkerStart) -> Config:
    """A reloaded config file as one worker serves it: its share of the limits, on the
    port and with the settings the supervisor started it with (those take a restart)."""
    return dataclasses.replace(
        share(fresh, start.count),
        listen=start.config.listen,
        workers=start.config.workers,
        metrics=dataclasses.replace(fresh.metrics, listen=start.config.metrics.listen),
    )


def share(config: Config, workers: int) -> Config:
    """One worker's config: each process-wide limit divided among the workers (floor
    division), so that together they never exceed what the config promises.

    What is shared: `max_concurrent_rpcs`, each caller's `max_in_flight`, `[pool]
    max_connections`, `max_connections_per_host` and `max_concurrent_handshakes` (a host
    sees every worker's connections), `[exec] max_buffered_output_bytes`, `[server]
    max_introspection_streams`. A limit too small to give every worker a usable share is
    refused (ConfigError: exit 2), naming it.
    """

    def part(name: str, value: int, least: int = 1) -> int:
        if value // workers < least:
            raise ConfigError(
                f"{name} = {value} cannot be shared by {workers} workers: each worker needs "
                f"at least {least}, and together they may use at most {value}. Raise it to "
                f"{least * workers} or more, or run fewer workers"
            )
        return value // workers

    pool, exec_ = config.pool, config.exec
    return dataclasses.replace(
        config,
        max_concurrent_rpcs=part("max_concurrent_rpcs", config.max_concurrent_rpcs),
        callers=tuple(
            dataclasses.replace(
                c, max_in_flight=part(f"callers[{c.name}].max_in_flight", c.max_in_flight)
            )
            for c in config.callers
        ),
        pool=dataclasses.replace(
            pool,
            max_connections=part("pool.max_connections", pool.max_connections),
            max_connections_per_host=part(
                "pool.max_connections_per_host", pool.max_connections_per_host
            ),
            max_concurrent_handshakes=part(
                "pool.max_concurrent_handshakes", pool.max_concurrent_handshakes
            ),
        ),
        exec=dataclasses.replace(
            exec_,
            max_buffered_output_bytes=part(
                "exec.max_buffered_output_bytes",
                exec_.max_buffered_output_bytes,
                least=4 * exec_.max_output_bytes,  # one full Execute response, as one process
            ),
        ),
        server=dataclasses.replace(
            config.server,
            max_introspection_streams=part(
                "server.max_introspection_streams", config.server.max_introspection_streams
            ),
        ),
    )


def _short_temp() -> str:
    """Where the workers' socket folder goes: the temp folder, unless its path is too long
    for a Unix socket path (108 bytes on Linux, with the folder and a 32-digit id), then
    /tmp."""
    base = tempfile.gettempdir()
    return base if len(base) + len("/scout-workers-12345678/") + 37 < 108 else "/tmp"


def reserve(listen: str) -> socket.socket:
    """The listen address bound by this process alone, then opened to its workers."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError):
        raise OSError(f"cannot listen on {listen} (not an address of this machine)") from None
    try:
        sock.bind(address)  # without SO_REUSEPORT: fails if anyone holds the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # now our workers may join
    except OSError:
        sock.close()
        raise OSError(
            f"cannot listen on {listen} (in use, or not an address of this machine)"
        ) from None
    return sock


def receive_start(sock: socket.socket) -> WorkerStart:
    """In a worker: read the start the supervisor wrote on the socketpair."""
    size = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))[0]
    start = pickle.loads(_read_exactly(sock, size))  # our own parent, on our own socketpair
    assert isinstance(start, WorkerStart)
    return start


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError("the supervisor closed the socket before the start was read")
        data += chunk
    return bytes(data)


async def answer_supervisor(
    sock: socket.socket, metrics: Callable[[], bytes], gone: Callable[[], None]
) -> None:
    """In a worker: say "ready", hand over the metrics when asked; at EOF (the supervisor
    is gone) call `gone`."""
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    try:
        writer.write(b"ready\n")
        while line := await reader.readline():
            ident = int(line.split()[1])  # b"metrics ID"
            body = metrics()
            writer.write(b"%d %d\n" % (ident, len(body)) + body)
            await writer.drain()
    except (ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()
    gone()


class Worker:
    """The supervisor's handle on one worker process and its socketpair."""

    _serials = itertools.count()

    def __init__(
        self,
        index: int,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.index = index
        self.serial = next(self._serials)  # unlike a pid, never reused
        self.process = process
        self.ready = False
        self.reloads = 0  # the supervisor's SIGHUPs before this worker was started
        self.socket: Path | None = None  # where it serves its siblings (server.forwarding)
        self._writer = writer
        self._ids = itertools.count()
        self._answers: dict[int, asyncio.Future[bytes]] = {}
        self._started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._reading = asyncio.ensure_future(self._read(reader))

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    async def started(self) -> bool:
        """Whether the worker came up ("ready"), rather than exiting first."""
        return await asyncio.shield(self._started)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            self.ready = await reader.readline() == b"ready\n"
            self._started.set_result(self.ready)
            while self.ready and (head := await reader.readline()):
                ident, size = map(int, head.split())
                body = await reader.readexactly(size)
                future = self._answers.pop(ident, None)
                if future is not None and not future.done():
                    future.set_result(body)
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ready = False
            if not self._started.done():
                self._started.set_result(False)
            self._writer.close()

    async def scrape(self) -> bytes | None:
        """The worker's metrics text, or None if it does not answer in time."""
        if not self.ready or self._writer.is_closing():
            return None
        ident = next(self._ids)
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._answers[ident] = answer
        try:
            self._writer.write(b"metrics %d\n" % ident)
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                return await answer
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._answers.pop(ident, None)

    def signal(self, sig: int) -> None:
        """Send sig unless the process is gone."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait(self) -> int:
        """Its exit status (negative: the signal that ended it), once its pipe is read out."""
        code = await self.process.wait()
        await self._reading
        return code


async def spawn(start: WorkerStart, log_level: str, log_format: str) -> Worker:
    """Start `python -m scout.server --worker-fd FD` (or `server`, as this process was
    imported) and write its start on the socketpair.

    `-P` keeps the working folder off its module path (a folder named `server` there
    must not be imported); PYTHONPATH names the folder this process imported from.
    """
    mine, theirs = socket.socketpair()
    try:
        path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            PACKAGE,
            "--worker-fd",
            str(theirs.fileno()),
            "--log-level",
            log_level,
            "--log-format",
            log_format,
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": path},
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=mine)
    data = pickle.dumps(start)
    writer.write(_LENGTH.pack(len(data)) + data)
    return Worker(start.index, process, reader, writer)


def _status(code: int) -> str:
    """An exit status in words."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class Supervisor:
    """Starts `count` workers on one port, restarts those that die, passes signals on,
    serves their summed metrics, and returns the exit status once all have stopped."""

    def __init__(
        self,
        config: Config,
        count: int,
        config_file: Path | None,
        log_level: str,
        log_format: str,
    ) -> None:
        self.config = config  # the whole server's; a worker gets share(config, count)
        self.count = count
        self.config_file = config_file
        self.log_args = (log_level, log_format)
        self.workers: dict[int, Worker] = {}
        self.aggregate = Aggregate()
        self.metrics: MetricsServer | None = None
        self.signals = 0
        self.stopping = False
        self.status = 0
        self.reloads = 0
        self._restarts: collections.deque[float] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.group = uuid.uuid4().hex  # the owner group of every worker (server.forwarding)
        self._secret = secrets.token_hex(32)  # proves a call on a worker's socket forwarded
        self._sockets: Path | None = None  # the private folder of the workers' sockets
        check_exposure(config, config.listen)  # as a worker would, but once, before any
        for warning in metrics_warnings(config):  # /metrics is the supervisor's alone
            log.warning("%s", warning)
        self._worker_config = share(config, count)  # checked before anything starts

    async def run(self) -> int:
        """Serve until a signal (or a restart too many) stops every worker; the exit status."""
        listen = self.config.listen
        with (
            reserve(listen) as held,
            tempfile.TemporaryDirectory(
                prefix="scout-workers-", dir=_short_temp(), ignore_cleanup_errors=True
            ) as d,
        ):
            self._sockets = Path(d)  # 0700, ours alone; removed when every worker is gone
            port = held.getsockname()[1]
            self._worker_config = dataclasses.replace(
                self._worker_config,
                listen=f"{listen.rpartition(':')[0]}:{port}",
                metrics=dataclasses.replace(self.config.metrics, listen=""),
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._signalled, sig)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            try:
                if self.config.metrics.listen:  # first: a port in use fails before any worker
                    self.metrics = MetricsServer(self.exposition)
                    await self.metrics.start(self.config.metrics.listen)
                await self._serve(listen, port)
            except BaseException:
                self._stop()  # they would see EOF anyway; this says it first
                raise
            finally:
                if self.metrics is not None:
                    await self.metrics.stop()
        log.info("stopped: every worker has exited")
        return self.status

    async def _serve(self, listen: str, port: int) -> None:
        # The first worker alone: a config or file error is then reported once, not N times.
        first = await self._spawn(0)
        started = {first: await first.started()}
        if started[first] and not self.stopping:
            rest = [await self._spawn(i) for i in range(1, self.count)]
            oks = await asyncio.gather(*(w.started() for w in rest))
            started.update(zip(rest, oks, strict=True))
        for worker, ok in started.items():
            if ok:
                self._caught_up(worker)
        failed = next((w for w, ok in started.items() if not ok), None)
        if failed is not None and not self.stopping:
            code = await failed.wait()
            log.error("worker %d could not start (%s); stopping", failed.index, _status(code))
            self.status = code if code > 0 else 1
            self._stop()
        elif not self.stopping:
            log.info(
                "listening on %s, %d workers", listening_line(self.config, listen, port), self.count
            )
        await asyncio.gather(*(self._keep(w) for w in list(self.workers.values())))

    async def _spawn(self, index: int) -> Worker:
        assert self._sockets is not None
        plan = ForwardingPlan(self.group, uuid.uuid4().hex, self._sockets, self._secret)
        start = WorkerStart(index, self.count, self._worker_config, self.config_file, plan)
        worker = await spawn(start, *self.log_args)
        worker.socket = plan.socket(plan.id)
        worker.reloads = self.reloads
        self.workers[index] = worker
        if self.stopping:  # a stop came while it was being started
            worker.signal(signal.SIGTERM)
        log.info("worker %d started (pid %d)", index, worker.pid)
        return worker

    async def _keep(self, worker: Worker) -> None:
        """Keep worker's place filled until the server stops."""
        while True:
            code = await worker.wait()
            self.aggregate.retire(worker.serial)
            if worker.socket is not None:  # one it killed leaves it: nobody answers there
                worker.socket.unlink(missing_ok=True)
            if self.stopping:
                if code not in (0, -signal.SIGTERM) and self.status == 0:
                    log.error("worker %d exited with %s", worker.index, _status(code))
                    self.status = 1
                return
            if not self._may_restart():
                log.error(
                    "worker %d (pid %d) exited with %s: that is %d restarts in %gs, more than "
                    "the %d allowed; stopping the server",
                    worker.index,
                    worker.pid,
                    _status(code),
                    RESTART_LIMIT + 1,
                    RESTART_WINDOW,
                    RESTART_LIMIT,
                )
                self.status = 1
                self._stop()
                return
            log.warning(
                "worker %d (pid %d) exited with %s; starting it again",
                worker.index,
                worker.pid,
                _status(code),
            )
            self.aggregate.restarts += 1
            try:
                worker = await self._spawn(worker.index)
            except OSError as exc:  # no process to be had (fork failed): stop in order
                log.error(  # noqa: TRY400 - the reason is enough, no traceback
                    "worker %d could not be started again (%s); stopping", worker.index, exc
                )
                self.status = 1
                self._stop()
                return
            if await worker.started():
                log.info("worker %d ready again (pid %d)", worker.index, worker.pid)
                self._caught_up(worker)

    def _caught_up(self, worker: Worker) -> None:
        """A worker just came up: pass on a SIGHUP that came while it was starting."""
        if self.reloads > worker.reloads:
            worker.signal(signal.SIGHUP)

    def _may_restart(self) -> bool:
        """Whether one more restart stays within RESTART_LIMIT per RESTART_WINDOW."""
        now = time.monotonic()
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
            self._restarts.popleft()
        if len(self._restarts) >= RESTART_LIMIT:
            return False
        self._restarts.append(now)
        return True

    def _signalled(self, sig: int) -> None:
        """SIGTERM or SIGINT: the first drains, the second skips the grace, a third exits."""
        self.signals += 1
        if self.signals == 1:
            log.info(
                "shutting down (grace %.1fs); signal again to skip the grace",
                self.config.shutdown_grace,
            )
        elif self.signals == 2:
            log.warning("second signal: in-flight calls end now; a third exits at once")
        self._stop()
        if self.signals >= 3:
            os._exit(128 + sig)

    def _stop(self) -> None:
        """Tell every worker to stop (SIGTERM: each counts it as one process would)."""
        self.stopping = True
        for worker in self.workers.values():
            worker.signal(signal.SIGTERM)

    def _reload(self) -> None:
        """SIGHUP: every worker reloads; the new config is kept for workers started later."""
        log.info("SIGHUP: passing it to every worker")
        self.reloads += 1
        for worker in self.workers.values():
            if worker.ready:
                worker.signal(signal.SIGHUP)
        if self.config_file is not None:
            task = asyncio.get_running_loop().create_task(self._reload_later(self.config_file))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reload_later(self, path: Path) -> None:
        """Read the file off the loop; what a worker started later serves (each running
        worker reads it itself, and keeps what takes a restart)."""
        try:
            fresh = await asyncio.to_thread(load, path)
            later = share(fresh, self.count)
        except ConfigError as exc:
            log.error("config not reloaded for workers started later: %s", exc)  # noqa: TRY400
            return
        current = self._worker_config
        self._worker_config = dataclasses.replace(
            later,
            listen=current.listen,
            workers=current.workers,
            pool=current.pool,
            tls=current.tls,
            metrics=dataclasses.replace(later.metrics, listen=current.metrics.listen),
        )

    async def exposition(self) -> bytes:
        """The whole server's metrics: every live worker's, summed, and the supervisor's."""
        live = [w for w in self.workers.values() if w.ready]
        texts = await asyncio.gather(*(w.scrape() for w in live))
        return self.aggregate.render(
            {w.serial: text for w, text in zip(live, texts, strict=True)}, live=len(live)
        )
