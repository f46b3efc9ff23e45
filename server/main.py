"""`scout-server`: run the service from a config file, or the self-contained demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import tempfile
from pathlib import Path

from .app import start
from .config import Config, ConfigError, load

log = logging.getLogger("scout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="scout-server", description="Run shell commands on SSH hosts over gRPC."
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--listen", help="HOST:PORT to serve on (overrides the config)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="add host 'local': an embedded SSH server on loopback running commands here",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    if args.config is None and not args.demo:
        parser.error("--config FILE is required (or --demo for the embedded demo)")
    return args


async def serve(args: argparse.Namespace) -> None:
    """Start, wait for SIGTERM or Ctrl-C, stop gracefully."""
    config = load(args.config) if args.config else Config()
    async with contextlib.AsyncExitStack() as stack:
        demo = None
        if args.demo:
            from .demo import demo_host_config, help_text, start_demo

            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scout-demo-")))
            demo = await start_demo(state)
            stack.push_async_callback(demo.close)
            host = demo_host_config(demo)
            config = dataclasses.replace(config, hosts={**config.hosts, host.name: host})
        app = await start(config, args.listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        listen = args.listen or config.listen
        if demo is not None:
            sys.stdout.write(help_text(demo, listen))
            sys.stdout.flush()
        await stop.wait()
        log.info("shutting down (grace %.1fs)", config.shutdown_grace)
        await app.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the scout-server console script and `python -m server`."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args))
    except ConfigError as exc:
        sys.stderr.write(f"scout-server: config: {exc}\n")
        sys.exit(2)
    except OSError as exc:
        sys.stderr.write(f"scout-server: {exc}\n")
        sys.exit(1)
