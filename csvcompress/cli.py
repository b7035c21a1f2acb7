"""Command line: serve, demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Iterable, Sequence

from . import logs
from .config import LogSettings, load_settings
from .errors import ConfigError

log = logging.getLogger("csvcompress")


def setup_logging(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    logs.configure(LogSettings(level=level, format=fmt), secrets)


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    settings = load_settings(args.config)
    setup_logging(settings.log.level, settings.log.format, logs.settings_secrets(settings))
    try:
        return asyncio.run(serve(settings, lambda line: print(line, flush=True)))
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers were in place
        return 130


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    setup_logging("warning")
    return run_demo(args.config, rows=args.rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csvcompress", description=__doc__)
    parser.add_argument(
        "--config", help="settings file (default: $CSVCOMPRESS_CONFIG or ./config.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service")
    serve.set_defaults(func=_serve)
    demo = sub.add_parser("demo", help="run a sample job end to end, offline")
    demo.add_argument("--rows", type=int, default=5, help="rows in the sample CSV")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"csvcompress: configuration error: {exc.message}", file=sys.stderr)
        return 2
    return code
