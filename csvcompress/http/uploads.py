"""POST /upload: stream the CSV to disk, validate it, store the request, queue it.

The body is written to disk as it arrives, never held whole in memory, and
refused as soon as it passes the size limit: every byte of the body counts
(the file, other fields, the multipart framing), whether or not it is declared
in Content-Length, so a chunked body that never ends is cut off too.
Validation and the database insert run in a thread so a 100,000-row file
does not stall the event loop.

A webhook URL is checked against the network guard before the upload is
accepted: its host is resolved and every address it stands for must be one
the service may connect to (see netguard.check_destination).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import unquote, urlsplit

import aiofiles
from aiohttp import BodyPartReader, MultipartReader, StreamReader, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from yarl import URL

from csvcompress import csv_input
from csvcompress.config import LimitSettings, Settings
from csvcompress.documents import upload_accepted_document
from csvcompress.errors import (
    AddressNotAllowed,
    BadRequest,
    InsufficientStorage,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
)
from csvcompress.http.keys import SERVICE
from csvcompress.pipeline.netguard import NetGuard, check_destination
from csvcompress.storage import CsvFiles, LocalFiles
from csvcompress.store.base import Store

FILE_FIELD = "file"
WEBHOOK_FIELD = "webhook_url"
MAX_WEBHOOK_URL_LENGTH = 2048
# The uploaded file name kept for listings (longer names are cut).
MAX_FILE_NAME = 255
CHUNK = 256 * 1024
# Seconds a webhook host may take to resolve at upload before the upload is refused.
WEBHOOK_RESOLVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Accepted:
    request_id: str
    rows: int
    images: int


class UploadSlots:
    """How many uploads are being received at once, capped: each holds a connection, a
    file being written and a thread while it is validated."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if self.in_progress >= self.limit:
            raise ServiceUnavailable(
                f"{self.limit} uploads are in progress already; try again shortly",
                retry_after=RETRY_AFTER_BUSY,
            )
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)
RETRY_AFTER_BUSY = 5
"""Seconds a client refused for too many uploads in progress is told to wait."""


async def upload(request: web.Request) -> web.Response:
    """202 with the new request (its status URL also in Location); processing has started."""
    service = request.app[SERVICE]
    settings = service.settings
    with request.app[UPLOAD_SLOTS].take():
        part_path, webhook_url, file_name = await _receive_in_time(request, settings)
        try:
            accepted = await asyncio.to_thread(
                ingest, part_path, settings, service.store, webhook_url, file_name, service.files
            )
        except OSError as exc:
            raise disk_error(exc) from None
    await service.dispatcher.submit(accepted.request_id)
    doc = upload_accepted_document(
        accepted.request_id, accepted.rows, accepted.images, settings.server.base_url
    )
    return web.json_response(doc, status=202, headers={"Location": doc["status_url"]})


def new_request_id() -> str:
    # uuid4: 122 random bits, so an ID can be shared without being guessable.
    return uuid.uuid4().hex


def check_webhook_url(url: str) -> str:
    """The URL, trimmed, or BadRequest saying what is wrong with it.

    Judged whole before anything resolves or stores it: no control character (a CR/LF
    would be stored and shown raw), a port from 1 to 65535, and a host that is a valid
    IP literal or a name the IDNA codec takes (no empty label, none over 63 characters).
    """
    url = url.strip()
    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        raise BadRequest(f"webhook_url is longer than {MAX_WEBHOOK_URL_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise BadRequest("webhook_url must not contain control characters (CR, LF, tab, ...)")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", a port out of range
        raise BadRequest(f"webhook_url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest("webhook_url must be an absolute http:// or https:// URL")
    if port == 0:
        raise BadRequest("webhook_url port must be from 1 to 65535")
    _check_webhook_host(host)
    return url


def _check_webhook_host(host: str) -> None:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadRequest(f"webhook_url has an invalid IPv6 address: {host}") from None
        return
    try:
        host.encode("idna")
    except UnicodeError:
        raise BadRequest(
            "webhook_url has an invalid host name: each dot-separated label must be "
            "1 to 63 characters"
        ) from None


async def check_webhook_destination(url: str, guard: NetGuard) -> None:
    """Refuse (400) a webhook URL whose host is or resolves to an address the guard refuses.

    Delivery is checked again when it connects; this tells the user now.
    """
    try:
        parsed = URL(url)
    except ValueError:
        raise BadRequest("webhook_url must be an absolute http:// or https:// URL") from None
    host = parsed.raw_host or ""
    prefix = "webhook_url not allowed"
    try:
        async with asyncio.timeout(WEBHOOK_RESOLVE_TIMEOUT):
            await check_destination(guard, host, parsed.port or 0)
    except AddressNotAllowed as exc:
        raise BadRequest(f"{prefix}: {exc.message}") from None
    except TimeoutError:
        raise BadRequest(
            f"{prefix}: looking up {host} took longer than {WEBHOOK_RESOLVE_TIMEOUT:g} s"
        ) from None
    except (OSError, ValueError):  # ValueError: a name the resolver's IDNA codec refuses
        raise BadRequest(f"{prefix}: cannot resolve {host}") from None


async def _receive_in_time(
    request: web.Request, settings: Settings
) -> tuple[Path, str | None, str | None]:
    """receive(), cut off (408) once the body has taken `limits.upload_timeout` seconds."""
    limit = settings.limits.upload_timeout
    try:
        async with asyncio.timeout(limit):
            return await receive(request, settings)
    except TimeoutError:
        raise RequestTimeout(f"the upload took longer than {limit:g} s; it was cut off") from None
    except OSError as exc:
        raise disk_error(exc) from None


def disk_error(exc: OSError) -> Exception:
    """What an upload's OSError means to the client: a full disk is 507, not 500."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(
            "the service's disk is full; the upload was not stored. Try again later"
        )
    return exc


async def receive(request: web.Request, settings: Settings) -> tuple[Path, str | None, str | None]:
    """Stream the multipart body's CSV to a file; returns (path, webhook URL, file name)."""
    limits = settings.limits
    if request.content_length is not None and request.content_length > limits.max_upload_bytes:
        raise _too_large(limits)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "send the CSV as multipart/form-data with the file in a field named 'file'"
        )
    uploads = settings.uploads_dir
    await asyncio.to_thread(uploads.mkdir, parents=True, exist_ok=True)
    form = _Form(webhook=request.query.get(WEBHOOK_FIELD) or None)
    try:
        await _read_form(request, limits, uploads, form)
        if form.path is None:
            raise BadRequest("no file: send the CSV in a form field named 'file'")
        webhook = form.webhook.strip() if form.webhook else None
        if webhook:
            webhook = check_webhook_url(webhook)
            await check_webhook_destination(webhook, NetGuard(settings.fetch))
    except BaseException:
        if form.path is not None:
            await asyncio.to_thread(_unlink_quietly, form.path)
        raise
    return form.path, webhook or None, form.file_name


@dataclass
class _Form:
    webhook: str | None
    path: Path | None = None
    file_name: str | None = None


def _file_name(sent: str | None) -> str | None:
    """The uploaded file's own name, as a listing shows it: no folders, no control
    characters, at most MAX_FILE_NAME characters."""
    # aiohttp's client (the CLI) percent-encodes the name; browsers send it as it is.
    name = unquote(sent or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:MAX_FILE_NAME]
    return name or None


async def _read_form(
    request: web.Request, limits: LimitSettings, uploads: Path, form: _Form
) -> None:
    body = _CappedBody(request.content, limits)
    try:
        reader = MultipartReader(request.headers, cast(StreamReader, body))
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == FILE_FIELD and form.path is None:
                form.path = uploads / f"{new_request_id()}.csv.part"
                form.file_name = _file_name(part.filename)
                await _save(part, form.path)
            elif part.name == WEBHOOK_FIELD:
                text = (await part.read_chunk(MAX_WEBHOOK_URL_LENGTH + 1)).decode(errors="replace")
                form.webhook = text or form.webhook
    except (ValueError, BadHttpMessage) as exc:
        # aiohttp's multipart reader says "malformed" with these.
        raise BadRequest(f"the multipart/form-data body is malformed: {exc}") from None
    except RequestPayloadError:
        # The body could not be decoded as its Content-Encoding says (aiohttp decodes it).
        encoding = request.headers.get("Content-Encoding", "")
        raise BadRequest(
            f"the body could not be decoded as its Content-Encoding ({encoding}) says"
        ) from None


class _CappedBody:
    """The request body as the multipart reader takes it, refused past the upload limit.

    Every byte the reader takes counts: the file, fields and parts we skip,
    the preamble and the part headers. aiohttp's MultipartReader and
    BodyPartReader use exactly these four methods of their stream (see the
    test of an endless preamble in tests/http/test_uploads.py).
    """

    def __init__(self, stream: StreamReader, limits: LimitSettings) -> None:
        self._stream = stream
        self._limits = limits
        self._taken = 0

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        return self._take(await self._stream.readline(max_line_length=max_line_length))

    async def read(self, n: int = -1) -> bytes:
        return self._take(await self._stream.read(n))

    def unread_data(self, data: bytes) -> None:
        self._taken -= len(data)
        with warnings.catch_warnings():
            # Deprecated in aiohttp, and called by its own multipart reader.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._stream.unread_data(data)

    def at_eof(self) -> bool:
        return self._stream.at_eof()

    def _take(self, data: bytes) -> bytes:
        self._taken += len(data)
        if self._taken > self._limits.max_upload_bytes:
            raise _too_large(self._limits)
        return data


async def _save(part: BodyPartReader, path: Path) -> None:
    async with aiofiles.open(path, "wb") as f:
        while chunk := await part.read_chunk(CHUNK):
            await f.write(chunk)


def _too_large(limits: LimitSettings) -> PayloadTooLarge:
    return PayloadTooLarge(f"the file is larger than the limit of {limits.max_upload_bytes} bytes")


def ingest(
    part_path: Path,
    settings: Settings,
    store: Store,
    webhook_url: str | None,
    file_name: str | None = None,
    files: CsvFiles | None = None,
) -> Accepted:
    """Validate the saved CSV and store the request (runs in a thread).

    The accepted file is kept by `files` (where every process can read it) before the
    request is committed, so a stored request always has its input.

    One pass over the file: each row is stored as soon as it is checked, in one
    transaction that is committed only if the whole file passes. On any problem
    the transaction is rolled back, the file removed, and nothing is stored.
    """
    request_id = new_request_id()
    final = part_path.with_name(f"{request_id}.csv")
    try:
        with store.request_writer(request_id) as inserter:

            def add_row(index: int, url_cell: str) -> None:
                inserter.add(index, csv_input.split_urls(url_cell))

            summary = csv_input.validate(part_path, settings.limits, on_row=add_row)
            os.replace(part_path, final)
            kept = (files or LocalFiles()).keep_blocking(final, f"inputs/{request_id}.csv")
            images = inserter.finish(
                input_path=kept, webhook_url=webhook_url, rows=summary.rows, file_name=file_name
            )
    except BaseException:
        _unlink_quietly(part_path)
        _unlink_quietly(final)
        raise
    return Accepted(request_id=request_id, rows=summary.rows, images=images)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
