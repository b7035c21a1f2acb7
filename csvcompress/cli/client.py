"""The HTTP client the command line uses: upload, status, download, and the progress display.

Every failure to get an answer becomes ClientError with a message fit to print; a
refused CSV carries its problems. Nothing here prints except Progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiofiles
import aiohttp

from csvcompress.errors import Problem
from csvcompress.models import UNFINISHED_STATUSES

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
DOWNLOAD_CHUNK = 256 * 1024
UNREACHABLE_PATIENCE = 60.0
"""Seconds `wait` keeps polling a service that stopped answering."""


class ClientError(Exception):
    """The service could not be reached or said no."""

    def __init__(
        self, message: str, *, status: int | None = None, problems: list[Problem] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.problems = problems or []


def server_url(text: str) -> str:
    """The service's base URL from --server: `host:port` means `http://host:port`.

    Raises ClientError, with a line fit to print, for anything but an http(s) URL.
    """
    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ClientError(
            f"--server must be an http(s) URL such as http://127.0.0.1:8080, not {text!r}"
        )
    return url.rstrip("/")


def check_output(dest: Path) -> None:
    """Raise ClientError unless the output CSV can be written at `dest` (before uploading)."""
    folder = dest.parent
    if dest.is_dir():
        raise ClientError(f"cannot save the output CSV to {dest}: it is a folder")
    if not folder.is_dir():
        raise ClientError(f"cannot save the output CSV to {dest}: no folder {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ClientError(f"cannot save the output CSV to {dest}: {folder} is not writable")


def problem_line(problem: Problem) -> str:
    """`line 3, Input Image Urls: not an http(s) URL: ...`"""
    where = f"line {problem.line}" + (f", {problem.column}" if problem.column else "")
    return f"{where}: {problem.message}"


def is_finished(doc: dict[str, Any]) -> bool:
    """Any state the service does not call unfinished is final, including ones added later."""
    return str(doc.get("status")) not in UNFINISHED_STATUSES


class Client:
    """One session to one service; use as `async with Client(server, api_key) as client`."""

    def __init__(self, server: str, api_key: str = "") -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": "csvcompress-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client in `async with`")
        return self._session

    @contextlib.asynccontextmanager
    async def _call(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[Any]:
        """A response with a 2xx status; anything else raises ClientError."""
        try:
            async with self.session.request(method, url, **kwargs) as resp:
                if resp.status >= 400:
                    raise await _refusal(resp)
                yield resp
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(f"cannot reach {self.server}: {_reason(exc)}") from None
        except aiohttp.ClientError as exc:  # a bad answer, an unusable URL
            raise ClientError(f"{self.server}: {exc.__class__.__name__}: {exc}") from None
        except TimeoutError:
            raise ClientError(f"{self.server} did not answer in time") from None

    async def upload(self, csv_file: IO[bytes], filename: str, webhook_url: str | None) -> Any:
        """POST /upload; returns the 202 document."""
        form = aiohttp.FormData()
        # aiohttp reads the file in its executor while sending, so it is never held whole.
        form.add_field("file", csv_file, filename=filename, content_type="text/csv")
        if webhook_url:
            form.add_field("webhook_url", webhook_url)
        async with self._call("POST", f"{self.server}/upload", data=form) as resp:
            return await resp.json()

    async def status(self, request_id: str) -> Any:
        async with self._call("GET", f"{self.server}/status/{request_id}") as resp:
            return await resp.json()

    async def wait(
        self, request_id: str, interval: float, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Poll the status until the request is finished; returns the last document."""
        lost_since: float | None = None
        while True:
            try:
                doc: dict[str, Any] = await self.status(request_id)
            except ClientError as exc:
                # The service may be restarting (it resumes the request): keep asking a while.
                now = time.monotonic()
                lost_since = lost_since or now
                if exc.status is not None or now - lost_since > UNREACHABLE_PATIENCE:
                    raise
                await asyncio.sleep(max(interval, 1.0))
                continue
            lost_since = None
            if progress is not None:
                progress.update(doc)
            if is_finished(doc):
                return doc
            await asyncio.sleep(interval)

    async def download(self, url: str, dest: Path) -> int:
        """Save url to dest (via a temporary file beside it); returns the byte count."""
        partial = dest.with_name(f".{dest.name}.part")
        size = 0
        try:
            async with (
                self._call("GET", url) as resp,
                aiofiles.open(partial, "wb") as out,
            ):
                async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                    await out.write(chunk)
                    size += len(chunk)
            await asyncio.to_thread(os.replace, partial, dest)
        except OSError as exc:
            raise ClientError(f"cannot save the output CSV to {dest}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(partial.unlink)
        return size


async def _refusal(resp: aiohttp.ClientResponse) -> ClientError:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    if not isinstance(body, dict) or "error" not in body:
        return ClientError(f"HTTP {resp.status} {resp.reason or ''}".strip(), status=resp.status)
    problems = [
        Problem(int(p.get("line", 0)), str(p.get("column", "")), str(p.get("message", "")))
        for p in body.get("problems") or []
        if isinstance(p, dict)
    ]
    return ClientError(str(body["error"]), status=resp.status, problems=problems)


def _reason(exc: aiohttp.ClientConnectionError) -> str:
    cause = getattr(exc, "os_error", None) or exc.__cause__
    if isinstance(cause, OSError):
        # asyncio's "Connect call failed (...)" hides the reason its errno names.
        if cause.errno and cause.errno > 0:
            return os.strerror(cause.errno).lower()
        if cause.strerror:
            return cause.strerror.lower()
    return str(cause or exc) or type(exc).__name__


# --- progress -----------------------------------------------------------------------------

RATE_WINDOW = 15.0
QUIET_LINE_EVERY = 10.0


@dataclass
class RateMeter:
    """Images per second over the last RATE_WINDOW seconds of updates."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, done: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        then, done_then = self.samples[0]
        if now - then < 1.0:
            return None
        return (done - done_then) / (now - then)


def format_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def format_bytes(n: float) -> str:
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{sign}{value:.0f} {unit}" if unit == "bytes" else f"{sign}{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


class Progress:
    """Shows a request's progress: one redrawn line on a terminal, a line now and then if not."""

    def __init__(self, out: IO[str], *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.fancy = self.tty and str(getattr(out, "encoding", "")).lower().startswith("utf")
        self.meter = RateMeter()
        self._last_line = 0.0
        self._last_status = ""
        self._drawn = False

    def update(self, doc: dict[str, Any]) -> None:
        images = doc["images"]
        done = images["succeeded"] + images["failed"]
        rate = self.meter.add(done)
        line = self.describe(doc, rate)
        if self.tty:
            width = shutil.get_terminal_size().columns
            self.out.write("\r" + line[: width - 1] + "\x1b[K")
            self._drawn = True
        else:
            now = time.monotonic()
            changed = doc["status"] != self._last_status
            if changed or now - self._last_line >= QUIET_LINE_EVERY or is_finished(doc):
                self.out.write(line + "\n")
                self._last_line = now
        self._last_status = doc["status"]
        self.out.flush()

    def close(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False

    def describe(self, doc: dict[str, Any], rate: float | None) -> str:
        images = doc["images"]
        total, failed, pending = images["total"], images["failed"], images["pending"]
        done = images["succeeded"] + failed
        fraction = done / total if total else 1.0
        parts = [f"{self.bar(fraction)} {fraction:4.0%}", f"{done}/{total} images"]
        if failed:
            parts.append(f"{failed} failed")
        if is_finished(doc):
            parts.append(str(doc["status"]))
        elif rate is not None and rate > 0:
            parts.append(f"{rate:.1f} images/s, ~{format_duration(pending / rate)} left")
        else:
            parts.append(str(doc["status"]))
        return "  ".join(parts)

    def bar(self, fraction: float, width: int = 24) -> str:
        filled = round(fraction * width)
        if not self.fancy:
            return f"[{'#' * filled}{'-' * (width - filled)}]"
        return "▕" + "█" * filled + "░" * (width - filled) + "▏"


# --- the commands ---------------------------------------------------------------------------

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_ERROR = 2


@dataclass(frozen=True)
class SubmitOptions:
    csv_path: Path
    webhook_url: str | None = None
    wait: bool = False
    output: Path | None = None
    interval: float = 1.0


def outcome(doc: dict[str, Any]) -> int:
    """0 when every image succeeded, 1 when some failed or the request did."""
    ok = doc["status"] == "complete" and doc["images"]["failed"] == 0
    return EXIT_OK if ok else EXIT_SOME_FAILED


async def submit(
    server: str, api_key: str, options: SubmitOptions, out: IO[str], err: IO[str]
) -> int:
    """Upload a CSV, print its request ID; with `wait`, follow it and download the output."""
    try:
        csv_file = await asyncio.to_thread(options.csv_path.open, "rb")
    except OSError as exc:
        err.write(f"csvcompress: cannot read {options.csv_path}: {exc.strerror}\n")
        return EXIT_ERROR
    try:
        if options.wait and options.output is not None:
            # Found out now, not after the whole job has run.
            await asyncio.to_thread(check_output, options.output)
        async with Client(server, api_key) as client:
            accepted = await client.upload(csv_file, options.csv_path.name, options.webhook_url)
            request_id = str(accepted["request_id"])
            out.write(f"{request_id}\n")
            out.flush()
            if not options.wait:
                return EXIT_OK
            err.write(f"{accepted['rows']} rows, {accepted['images']} images; processing…\n")
            progress = Progress(err)
            try:
                doc = await client.wait(request_id, options.interval, progress)
            finally:
                progress.close()
            if doc.get("output_csv_url"):
                dest = options.output or Path(f"{request_id}.csv")
                size = await client.download(doc["output_csv_url"], dest)
                err.write(f"output CSV saved to {dest} ({format_bytes(size)})\n")
            err.write(summary(doc) + "\n")
            return outcome(doc)
    except ClientError as exc:
        report(exc, err)
        return EXIT_ERROR
    finally:
        await asyncio.to_thread(csv_file.close)


async def show_status(
    server: str, api_key: str, request_id: str, as_json: bool, out: IO[str], err: IO[str]
) -> int:
    try:
        async with Client(server, api_key) as client:
            doc = await client.status(request_id)
    except ClientError as exc:
        report(exc, err)
        return EXIT_ERROR
    if as_json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(format_status(doc))
    return EXIT_OK


def report(exc: ClientError, err: IO[str]) -> None:
    err.write(f"csvcompress: {exc.message}\n")
    for problem in exc.problems:
        err.write(problem_line(problem) + "\n")


def summary(doc: dict[str, Any]) -> str:
    images = doc["images"]
    if doc["status"] != "complete":
        return f"request {doc['status']}: {doc.get('error') or 'no output'}"
    if images["failed"]:
        return f"complete: {images['failed']} of {images['total']} images failed"
    return f"complete: all {images['total']} images compressed, {_saved(doc)}"


def _saved(doc: dict[str, Any]) -> str:
    size = doc["bytes"]
    share = f" ({size['saved'] / size['input']:.0%})" if size["input"] else ""
    return f"{format_bytes(size['saved'])} saved{share}"


def format_status(doc: dict[str, Any]) -> str:
    """The status document as aligned `name  value` lines."""
    images, size = doc["images"], doc["bytes"]
    lines = [
        ("request", doc["request_id"]),
        ("status", doc["status"]),
        ("created", doc["created_at"]),
        ("updated", doc["updated_at"]),
        ("rows", str(doc["rows"])),
        (
            "images",
            f"{images['total']} total: {images['succeeded']} succeeded, "
            f"{images['failed']} failed, {images['pending']} pending",
        ),
        (
            "bytes",
            f"{format_bytes(size['input'])} in, {format_bytes(size['output'])} out, " + _saved(doc),
        ),
    ]
    if doc.get("output_csv_url"):
        lines.append(("output", doc["output_csv_url"]))
    hook = doc.get("webhook")
    if hook:
        tries = f"{hook['attempts']} attempt" + ("" if hook["attempts"] == 1 else "s")
        note = f": {hook['last_error']}" if hook.get("last_error") else ""
        lines.append(("webhook", f"{hook['url']} ({hook['state']}, {tries}{note})"))
    if doc.get("error"):
        lines.append(("error", doc["error"]))
    width = max(len(name) for name, _ in lines)
    return "".join(f"{name:<{width}}  {value}\n" for name, value in lines)
