"""Command line: serve, worker, migrate, demo, and the client commands submit and status."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from csvcompress import logs
from csvcompress.cli.client import ClientError, server_url
from csvcompress.config import LogSettings, load_settings
from csvcompress.errors import ConfigError, StartupError

log = logging.getLogger("csvcompress")

API_KEY_ENV = "CSVCOMPRESS_API_KEY"


def setup_logging(level: str = "info", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    logs.configure(LogSettings(level=level, format=fmt), secrets)


def _serve(args: argparse.Namespace) -> int:
    from csvcompress.cli.serve import serve

    settings = load_settings(args.config)
    setup_logging(settings.log.level, settings.log.format, logs.settings_secrets(settings))
    try:
        return asyncio.run(serve(settings, lambda line: print(line, flush=True)))
    except KeyboardInterrupt:  # Ctrl+C before the signal handlers were in place
        return 130


def _worker(args: argparse.Namespace) -> int:
    from csvcompress.cli.worker import run_worker

    settings = load_settings(args.config)
    setup_logging(settings.log.level, settings.log.format, logs.settings_secrets(settings))
    try:
        return asyncio.run(run_worker(settings, lambda line: print(line, flush=True)))
    except KeyboardInterrupt:
        return 130


def _migrate(args: argparse.Namespace) -> int:
    from csvcompress.cli.worker import migrate

    settings = load_settings(args.config)
    setup_logging(settings.log.level, settings.log.format, logs.settings_secrets(settings))
    print(migrate(settings), flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from csvcompress.cli.demo import run_demo

    setup_logging("warning")
    return run_demo(args.config, rows=args.rows, keep=Path(args.keep))


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """The server URL and API key: options, then $CSVCOMPRESS_API_KEY, then the settings."""
    server: str | None = server_url(args.server) if args.server is not None else None
    key: str = args.api_key or os.environ.get(API_KEY_ENV, "")
    if server is None or not key:
        settings = load_settings(args.config)
        server = server or settings.server.base_url
        key = key or settings.server.api_key
    return server, key


def _submit(args: argparse.Namespace) -> int:
    from csvcompress.cli.client import SubmitOptions, submit

    server, key = _target(args)
    options = SubmitOptions(
        csv_path=Path(args.file),
        webhook_url=args.webhook,
        wait=args.wait,
        output=Path(args.output) if args.output else None,
        interval=args.interval,
    )
    return asyncio.run(submit(server, key, options, sys.stdout, sys.stderr))


def _status(args: argparse.Namespace) -> int:
    from csvcompress.cli.client import show_status

    server, key = _target(args)
    return asyncio.run(show_status(server, key, args.request_id, args.json, sys.stdout, sys.stderr))


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="service URL (default: the settings' server URL)")
    parser.add_argument(
        "--api-key", help=f"API key, if the service needs one (default: ${API_KEY_ENV})"
    )


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csvcompress", description=__doc__)
    parser.add_argument(
        "--config", help="settings file (default: $CSVCOMPRESS_CONFIG or ./config.toml)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service")
    serve.set_defaults(func=_serve)
    worker = sub.add_parser(
        "worker", help='distributed mode: process queued images ([cluster] mode = "distributed")'
    )
    worker.set_defaults(func=_worker)
    migrate = sub.add_parser(
        "migrate", help="create or upgrade the database schema (PostgreSQL: the queue's too)"
    )
    migrate.set_defaults(func=_migrate)
    demo = sub.add_parser("demo", help="run a sample job end to end, offline")
    demo.add_argument("--rows", type=int, default=5, help="rows in the sample CSV")
    demo.add_argument(
        "--keep",
        metavar="DIR",
        default="csvcompress-demo",
        help="where the demo's files are kept (default: ./csvcompress-demo, replaced each run)",
    )
    demo.set_defaults(func=_demo)

    submit = sub.add_parser(
        "submit",
        help="upload a CSV to a running service",
        description="Upload a CSV and print its request ID. Exit status: 0 accepted (with "
        "--wait: complete, every image compressed); 1 with --wait, the request finished but "
        "not every image was compressed (complete with failed images, failed or cancelled); "
        "2 refused or an error (the file, the output path, the service unreachable, a 4xx/5xx).",
    )
    submit.add_argument("file", help="the CSV to upload")
    submit.add_argument("--webhook", metavar="URL", help="URL to POST to when it finishes")
    _add_client_options(submit)
    submit.add_argument(
        "--wait", action="store_true", help="show progress until done, then download the output"
    )
    submit.add_argument(
        "--output", metavar="FILE", help="where --wait saves the output CSV (default: ID.csv)"
    )
    submit.add_argument(
        "--interval", type=_positive, default=1.0, metavar="SECONDS", help="polling interval"
    )
    submit.set_defaults(func=_submit)

    status = sub.add_parser(
        "status",
        help="show a request's status",
        description="Show a request's status. Exit status: 0 the status was shown, whatever "
        "the request's state; 2 an error (unknown request, the service unreachable, a 4xx/5xx).",
    )
    status.add_argument("request_id", help="the ID printed by submit")
    status.add_argument("--json", action="store_true", help="print the raw status document")
    _add_client_options(status)
    status.set_defaults(func=_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"csvcompress: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except ClientError as exc:  # a bad option value (--server), said in one line
        print(f"csvcompress: {exc.message}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"csvcompress: cannot start: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncsvcompress: interrupted (a submitted request goes on)", file=sys.stderr)
        return 130
    return code
