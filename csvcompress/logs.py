"""Logs: one line per event, readable text or JSON, with the request ID, never a secret.

The request a line is about comes from a context variable that the workers and
the HTTP handlers set (`request_context`), so code deep down logs as usual and
the line still says which request it belongs to. A record may also carry it
explicitly with ``extra={"request_id": ...}``.

Secrets are removed from the finished line, whatever produced it (a message,
an argument, an exception's text): the values configured (API key, Cloudinary
key and secret, webhook secret, CLOUDINARY_URL), anything registered later
with `add_secret`, and text shaped like a credential (``Bearer …``,
``whsec_…``, ``Authorization: Basic …``, ``cloudinary://key:secret@…``,
``api_secret=…``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_log import AccessLogger as AiohttpAccessLogger
from aiohttp.web_protocol import RequestPayloadError
from pythonjsonlogger.json import JsonFormatter

from csvcompress.config import LogSettings, Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REDACTED = "[redacted]"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(request_id)s"
JSON_RENAMES = {"levelname": "level", "name": "logger"}

# Credential-shaped text, redacted whether or not its value is known. Group 1 is kept.
SECRET_PATTERNS = (
    re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?basic\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(cloudinary://[^\s:/@]*:)[^\s@]+(?=@)"),
    re.compile(r"()\bwhsec_[A-Za-z0-9+/=_-]+"),
    re.compile(
        r"(?i)(\b(?:api_secret|api_key|secret|signature)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;]+"
    ),
)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Lines logged inside the block carry `request_id`."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class Redactor:
    """Replaces known secret values and credential-shaped text with [redacted]."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secret: str) -> None:
        if not secret:
            return
        # JSON lines carry the value escaped; redact that spelling too.
        escaped = json.dumps(secret)[1:-1]
        with self._lock:
            known = set(self._secrets) | {secret, escaped}
            # Longest first, so a secret containing another is removed whole.
            self._secrets = tuple(sorted(known, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in SECRET_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


REDACTOR = Redactor()


def add_secret(secret: str) -> None:
    """Never log `secret` (e.g. a webhook secret generated at start-up)."""
    REDACTOR.add(secret)


def settings_secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value the settings and the environment hold."""
    env = os.environ if environ is None else environ
    cloudinary = settings.storage.cloudinary
    found = [
        settings.server.api_key,
        settings.webhook.secret,
        cloudinary.api_key,
        cloudinary.api_secret,
    ]
    url = env.get("CLOUDINARY_URL", "")
    if url:
        parts = urlsplit(url)
        found += [url, parts.username or "", parts.password or ""]
    return [s for s in found if s]


class RequestIdFilter(logging.Filter):
    """Gives every record a `request_id` attribute: its own, the context's, or None."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class AccessLogger(AiohttpAccessLogger):
    """aiohttp's access log line, carrying the request ID the URL names."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        request_id = _named_request(request)
        if request_id is None:
            super().log(request, response, time)
            return
        with request_context(request_id):
            super().log(request, response, time)


def _named_request(request: web.BaseRequest) -> str | None:
    """The request ID the URL names, if it was routed at all: a request aiohttp refused
    before routing (a malformed request line) has no match_info, and asking raises
    AssertionError, not AttributeError."""
    try:
        match_info = request.match_info  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):
        return None
    found = match_info.get("request_id") if match_info is not None else None
    return found if isinstance(found, str) else None


CLIENT_FAULTS = (HttpProcessingError, RequestPayloadError, ConnectionError)
"""What a client alone causes (a malformed request, a body that does not decode, going
away): one INFO line each, never a traceback, so no one can flood the log."""


class ClientFaultFilter(logging.Filter):
    """On aiohttp's server logger: a client's fault becomes one INFO line without its
    traceback (aiohttp logs each at ERROR, with the parser's stack)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_FAULTS):
            reason = " ".join(str(exc).split()) or type(exc).__name__
            record.msg = f"{record.getMessage()}: {reason}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


def quiet_client_faults() -> None:
    """Install ClientFaultFilter on aiohttp's server logger (once, whoever calls)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaultFilter) for f in server.filters):
        server.addFilter(ClientFaultFilter())


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then removes secrets from the whole line."""

    def __init__(self, inner: logging.Formatter, redactor: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=True)
    return TextFormatter()


def configure(
    settings: LogSettings, secrets: Iterable[str] = (), stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log line to `stream` (stderr) in the configured format; returns the handler.

    Called once by the command line. A handler installed by an earlier call is replaced.
    """
    for secret in secrets:
        REDACTOR.add(secret)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("csvcompress")
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(RedactingFormatter(make_formatter(settings.format), REDACTOR))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "csvcompress"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # libvips reports every finished thread pool at INFO: one line per image, no event.
    logging.getLogger("pyvips").setLevel(max(logging.WARNING, root.level))
    return handler
