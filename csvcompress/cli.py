"""Command line: serve, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from .config import load_settings
from .errors import ConfigError

log = logging.getLogger("csvcompress")


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app

    settings = load_settings(args.config)
    setup_logging(settings.log.level)
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        print=lambda _msg: print(
            f"csvcompress serving on {settings.server.base_url} (Ctrl+C to stop)", flush=True
        ),
    )
    return 0


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
