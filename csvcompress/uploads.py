"""Taking an upload in: stream it to disk, validate it, store the request.

The body is written to disk as it arrives, never held whole in memory, and
refused as soon as it passes the size limit. Validation and the database
insert run in a thread so a 100,000-row file does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiofiles
from aiohttp import BodyPartReader, web

from . import csv_input, db
from .config import LimitSettings, Settings
from .errors import BadRequest, PayloadTooLarge

FILE_FIELD = "file"
WEBHOOK_FIELD = "webhook_url"
MAX_WEBHOOK_URL_LENGTH = 2048
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Accepted:
    request_id: str
    rows: int
    images: int


def new_request_id() -> str:
    # uuid4: 122 random bits, so an ID can be shared without being guessable.
    return uuid.uuid4().hex


def check_webhook_url(url: str) -> str:
    url = url.strip()
    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        raise BadRequest(f"webhook_url is longer than {MAX_WEBHOOK_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("webhook_url must be an absolute http:// or https:// URL")
    return url


async def receive(request: web.Request, settings: Settings) -> tuple[Path, str | None]:
    """Stream the multipart body's CSV to a file; returns (path, webhook URL)."""
    limits = settings.limits
    if request.content_length is not None and request.content_length > limits.max_upload_bytes:
        raise _too_large(limits)
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "send the CSV as multipart/form-data with the file in a field named 'file'"
        )
    uploads = settings.data_dir / "uploads"
    await asyncio.to_thread(uploads.mkdir, parents=True, exist_ok=True)
    webhook = request.query.get(WEBHOOK_FIELD) or None
    path: Path | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == FILE_FIELD and path is None:
                path = uploads / f"{new_request_id()}.csv.part"
                await _save(part, path, limits)
            elif part.name == WEBHOOK_FIELD:
                text = (await part.read_chunk(MAX_WEBHOOK_URL_LENGTH + 1)).decode(errors="replace")
                webhook = text or webhook
    except BaseException:
        if path is not None:
            await asyncio.to_thread(_unlink_quietly, path)
        raise
    if path is None:
        raise BadRequest("no file: send the CSV in a form field named 'file'")
    if webhook is not None and webhook.strip() == "":
        webhook = None
    try:
        return path, (check_webhook_url(webhook) if webhook else None)
    except BadRequest:
        await asyncio.to_thread(_unlink_quietly, path)
        raise


async def _save(part: BodyPartReader, path: Path, limits: LimitSettings) -> None:
    size = 0
    async with aiofiles.open(path, "wb") as f:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > limits.max_upload_bytes:
                raise _too_large(limits)
            await f.write(chunk)


def _too_large(limits: LimitSettings) -> PayloadTooLarge:
    return PayloadTooLarge(f"the file is larger than the limit of {limits.max_upload_bytes} bytes")


def ingest(part_path: Path, settings: Settings, webhook_url: str | None) -> Accepted:
    """Validate the saved CSV and store the request (runs in a thread).

    One pass over the file: each row is stored as soon as it is checked, in one
    transaction that is committed only if the whole file passes. On any problem
    the transaction is rolled back, the file removed, and nothing is stored.
    """
    request_id = new_request_id()
    final = part_path.with_name(f"{request_id}.csv")
    try:
        with db.RequestInserter(settings.database.path, request_id) as inserter:

            def store(index: int, url_cell: str) -> None:
                inserter.add(index, csv_input.split_urls(url_cell))

            summary = csv_input.validate(part_path, settings.limits, on_row=store)
            os.replace(part_path, final)
            images = inserter.finish(
                input_path=str(final), webhook_url=webhook_url, rows=summary.rows
            )
    except BaseException:
        _unlink_quietly(part_path)
        _unlink_quietly(final)
        raise
    return Accepted(request_id=request_id, rows=summary.rows, images=images)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
