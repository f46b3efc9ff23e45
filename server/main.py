"""`scout-server`: run the service from a config file, or the self-contained demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import quiet

quiet.silence_known_warnings()  # before .app imports asyncssh, which would warn

from scout.allocator import keep_freed_memory  # noqa: E402

from . import fdlimit, logs  # noqa: E402
from .app import App, start  # noqa: E402
from .config import Config, ConfigError, HostConfig, is_loopback  # noqa: E402
from .configfile import load, workers_value  # noqa: E402
from .metrics import exposition  # noqa: E402
from .tokens import add_token_commands, hash_token_command, new_token_command  # noqa: E402
from .workers import (  # noqa: E402
    Supervisor,
    WorkerStart,
    answer_supervisor,
    count,
    receive_start,
    worker_config,
)

log = logging.getLogger("scout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="scout-server",
        description="Run shell commands on SSH hosts over gRPC: serve from --config FILE "
        "(or --demo), or run one of the subcommands.",
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--listen", help="HOST:PORT to serve on (overrides the config)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="add host 'local': an embedded SSH server on loopback running commands here",
    )
    parser.add_argument("--metrics", help="HOST:PORT to serve /metrics on (overrides [metrics])")
    parser.add_argument(
        "--workers",
        type=_workers,
        help="processes serving the port: a number, or auto (one per core); "
        "overrides the config's workers (default 1)",
    )
    parser.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # server.workers
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text or json lines (default: text on a terminal, json otherwise)",
    )
    commands = parser.add_subparsers(dest="command", metavar="{hash-token,new-token}")
    add_token_commands(commands)
    args = parser.parse_args(argv)
    if args.command is None and args.config is None and not args.demo and args.worker_fd is None:
        parser.error("--config FILE is required (or --demo for the embedded demo)")
    return args


def _workers(text: str) -> int:
    """--workers: as the config's `workers`."""
    try:
        return workers_value("--workers", int(text) if text.isdigit() else text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers: ")) from None


def configured(args: argparse.Namespace) -> Config:
    """The config file (or the defaults), with what the command line overrides."""
    config = load(args.config) if args.config else Config()
    if args.metrics:
        config = dataclasses.replace(
            config, metrics=dataclasses.replace(config.metrics, listen=args.metrics)
        )
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    return dataclasses.replace(config, listen=args.listen or config.listen)


async def serve(args: argparse.Namespace, config: Config) -> None:
    """One process: start; SIGHUP reloads; SIGTERM or Ctrl-C stops gracefully."""
    listen = config.listen
    stops, serving = _stops(), _sighup()  # before the start: signals while it starts
    async with contextlib.AsyncExitStack() as stack:
        demo = demo_host = None
        if args.demo:
            # Lazy on purpose (not a cycle): the demo, a local SSH server, loads only with
            # --demo (tests/test_imports.py lists the imports allowed inside functions).
            from .demo import DEMO_HOST, demo_host_config, help_text, start_demo

            if DEMO_HOST in config.hosts:
                raise ConfigError(
                    f"hosts.{DEMO_HOST}: --demo adds its own host {DEMO_HOST!r}; rename yours"
                )
            if not is_loopback(listen):
                raise ConfigError(
                    f"--demo serves a shell of this machine, so it listens on loopback only, "
                    f"not {listen}"
                )
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scout-demo-")))
            demo = await start_demo(state)
            stack.push_async_callback(demo.close)
            demo_host = demo_host_config(demo)
            config = _with_demo(config, demo_host, state)
        loader = None
        if args.config:

            def loader() -> Config:
                """The file again, with the command line's overrides and the demo host."""
                fresh = configured(args)
                return _with_demo(fresh, demo_host, state) if demo_host else fresh

        app = await start(config, listen, loader)
        serving(app)
        if demo is not None:
            sys.stdout.write(help_text(demo, listen, app.metrics.port if app.metrics else None))
            sys.stdout.flush()
        await _until_stopped(app, stops)


def _with_demo(config: Config, host: HostConfig, state: Path) -> Config:
    """config with one more host (the demo's) and, unless the config names one, the
    keyed commands' store in the demo's own state directory (gone when the demo stops)."""
    durable = config.durable
    if not durable.store:
        durable = dataclasses.replace(durable, store=f"sqlite:{state / 'durable.sqlite3'}")
    return dataclasses.replace(config, hosts={**config.hosts, host.name: host}, durable=durable)


async def serve_worker(start_: WorkerStart, link: socket.socket) -> None:
    """One worker of a supervisor (server.workers): serve the shared port as one process
    would, and stop also when the supervisor is gone."""
    config = start_.config
    path = start_.config_file
    stops, serving = _stops(), _sighup()  # a stop while starting still drains, after it
    loader = (lambda: worker_config(load(path), start_)) if path else None
    app = await start(config, None, loader, shared_port=True, forwarding=start_.forwarding)
    serving(app)

    def orphaned() -> None:
        log.warning("the supervisor is gone: shutting down")
        stops.put_nowait(signal.SIGTERM)

    answering = asyncio.ensure_future(answer_supervisor(link, exposition(app.counted()), orphaned))
    await _until_stopped(app, stops)
    answering.cancel()


def _sighup() -> Callable[[App], None]:
    """SIGHUP handled from now on: one that comes while the server starts (after its
    listening line a supervisor or a test may send it at once) is not the default action,
    which ends the process, but a reload run once the server serves."""
    loop = asyncio.get_running_loop()
    early: list[bool] = []
    loop.add_signal_handler(signal.SIGHUP, early.append, True)

    def serving(app: App) -> None:
        loop.add_signal_handler(signal.SIGHUP, _reload, app)
        if early:
            _reload(app)

    return serving


def _stops() -> asyncio.Queue[int]:
    """SIGTERM and SIGINT, queued from now on."""
    stops = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stops.put_nowait, sig)
    return stops


async def _until_stopped(app: App, stops: asyncio.Queue[int]) -> None:
    """The first stop drains (the grace), a second ends calls now, a third exits at once."""
    await stops.get()
    log.info(
        "shutting down (grace %.1fs); signal again to skip the grace", app.config.shutdown_grace
    )
    loop = asyncio.get_running_loop()
    stopping = asyncio.ensure_future(app.stop())
    forced = asyncio.ensure_future(stops.get())
    await asyncio.wait({stopping, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.warning("second signal: in-flight calls end now; a third exits at once")
        loop.add_signal_handler(signal.SIGTERM, os._exit, 128 + signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, os._exit, 128 + signal.SIGINT)
        await app.server.stop(0)
    forced.cancel()
    await stopping


_reloads: set[asyncio.Task[None]] = set()


def _reload(app: App) -> None:
    """SIGHUP: re-read what can change without a restart (in a task: the file is read off
    the loop, which goes on serving meanwhile); never stop the server."""
    log.info("SIGHUP: reloading")
    task = asyncio.get_running_loop().create_task(_reload_logged(app))
    _reloads.add(task)
    task.add_done_callback(_reloads.discard)


async def _reload_logged(app: App) -> None:
    try:
        await app.reload()
    except Exception:
        log.exception("reload failed; serving with what was loaded before")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the scout-server console script and `python -m server`."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "hash-token":
        sys.exit(hash_token_command())
    if args.command == "new-token":
        sys.exit(new_token_command())
    keep_freed_memory()  # before the first large message (workers too)
    if args.worker_fd is not None:
        _worker_main(args)
        return
    logs.setup(args.log_level, args.log_format)
    quiet.route_warnings_to_logging()
    with _errors_exit():
        config = configured(args)
        fdlimit.check(fdlimit.raise_soft_limit(), config.pool.max_connections)
        workers = count(config)
        if workers > 1:
            if args.demo:
                raise ConfigError(
                    "--demo serves its shell from one process: run it without workers "
                    f"({workers} asked for)"
                )
            supervisor = Supervisor(
                config,
                workers,
                args.config,
                args.log_level,
                logs.resolved_format(args.log_format),
            )
            sys.exit(asyncio.run(supervisor.run()))
        asyncio.run(serve(args, config))


def _worker_main(args: argparse.Namespace) -> None:
    """`--worker-fd FD`: one worker process (server.workers); its start comes on FD."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is passed on once it serves
    link = socket.socket(fileno=args.worker_fd)
    start_ = receive_start(link)
    logs.setup(args.log_level, args.log_format, worker=start_.index)
    quiet.route_warnings_to_logging()
    with _errors_exit():
        asyncio.run(serve_worker(start_, link))


@contextlib.contextmanager
def _errors_exit() -> Iterator[None]:
    """A bad config exits 2, a system error (a port in use) 1, each with one line."""
    try:
        yield
    except ConfigError as exc:
        sys.stderr.write(f"scout-server: config: {exc}\n")
        sys.exit(2)
    except OSError as exc:
        sys.stderr.write(f"scout-server: {exc}\n")
        sys.exit(1)
