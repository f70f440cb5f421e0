"""The ``weijian`` command. Subcommands grow with the platform; each prints what it is doing."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from simulators.cli import add_simulate_parser
from weijian.admin_cli import add_parsers
from weijian.config import Settings, load_settings

log = logging.getLogger("weijian")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {"data_dir": Path(args.data_dir)} if getattr(args, "data_dir", None) else {}
    return load_settings(args.config, **overrides)


def _setup_logging(level: str, to_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = []
    if to_file is not None:
        to_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(to_file, encoding="utf-8"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


async def _until_signalled(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(settings: Settings) -> None:
    from weijian.platform import Platform

    stop = asyncio.Event()
    async with Platform(settings):
        log.info("platform running; Ctrl-C or SIGTERM stops it")
        await _until_signalled(stop)
        log.info("stopping")


def cmd_serve(args: argparse.Namespace) -> int:
    from weijian.workers import supervise, worker_argv, worker_settings

    settings = _settings(args)
    _setup_logging(args.log_level)
    if args.workers > 1 and args.worker_index is None:
        return supervise(
            lambda i: worker_argv(args.config, args.log_level, args.data_dir, i, args.workers),
            args.workers,
        )
    if args.worker_index is not None:
        settings = worker_settings(settings, args.worker_index)
    asyncio.run(_serve(settings))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from weijian.demo import run_demo

    settings = _settings(args)
    _setup_logging(args.log_level, None if args.no_table else settings.data_dir / "weijian.log")
    return asyncio.run(run_demo(settings, args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weijian", description="Weijian: IoT monitoring for public-health supervision."
    )
    parser.add_argument("--config", type=Path, help="settings file (YAML); WEIJIAN_* env vars too")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="embedded demo: local Mosquitto + InfluxDB, platform, simulated devices, live table",
    )
    run.add_argument("--data-dir", help="where servers, spool and logs live (default .weijian)")
    run.add_argument("--scenario", default="demo", help="scenario name or YAML path (default demo)")
    run.add_argument("--no-table", action="store_true", help="log to the terminal, no table")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser("serve", help="run the platform services against configured servers")
    serve.add_argument("--data-dir", help="spool and dead-letter directory (default .weijian)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="platform processes sharing the MQTT load (one per core); default 1",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)
    add_parsers(sub)
    add_simulate_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "handler"):
            logging.basicConfig(level=getattr(logging, args.log_level.upper()))
            logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations are not news
            return int(args.handler(args, _settings(args)))
        return int(args.func(args))
    except ValidationError as exc:
        print(f"weijian: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError, OSError) as exc:  # a clear problem (ports, servers, ids)
        print(f"weijian: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
