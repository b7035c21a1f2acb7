"""Cloudinary: output images uploaded to a Cloudinary product environment.

Credentials are read by the cloudinary package's own configuration: the
CLOUDINARY_URL environment variable (cloudinary://api_key:api_secret@cloud_name,
query parameters such as ?upload_prefix=... included), with any key set in
[storage.cloudinary] taking precedence. Missing or malformed credentials are a
ConfigError when the backend is created, so the service does not start.

Each upload is signed with the SDK's own signing (cloudinary.utils.sign_request)
and POSTed as multipart with an aiohttp session of this backend's own, so no
thread is held per upload, connections are kept alive and pooled up to
`concurrency`, and a 429's Retry-After header can be read. (The SDK's blocking
uploader in the executor was measured against this: see tests/bench_cloudinary.py.)
This session is not the guarded image-fetch session: Cloudinary's API is a fixed,
configured host, not a URL from an uploaded CSV.

A key "<request_id>/<row>-<position>.<ext>" becomes the public ID
"<request_id>/<row>-<position>" in `folder`, uploaded with overwrite=true: a
retried upload, or one repeated after a crash, replaces the same asset instead of
adding another. The URL handed back is the response's secure_url.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import aiohttp
import certifi
from tenacity import RetryCallState

from csvcompress.config import CloudinarySettings
from csvcompress.errors import ConfigError, StorageError, StorageFailed, StorageRejected
from csvcompress.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_API = "https://api.cloudinary.com"
API_VERSION = "v1_1"
REJECTED_CREDENTIALS = "Cloudinary rejected the credentials"
CREDENTIALS_HELP = (
    "set CLOUDINARY_URL=cloudinary://<api_key>:<api_secret>@<cloud_name> "
    "or cloud_name, api_key and api_secret in [storage.cloudinary]"
)
# Cloudinary answers 420 as well as 429 when an account's rate limit is reached.
RATE_LIMITED = frozenset({420, 429})
REFUSED = frozenset({401, 403})
# The longest back-off between tries, before any Retry-After.
MAX_BACKOFF = 30.0

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Credentials:
    cloud_name: str
    api_key: str
    api_secret: str = field(repr=False)
    api_base: str = DEFAULT_API
    signature_algorithm: str = "sha1"
    signature_version: int = 2

    @property
    def signing_options(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "signature_algorithm": self.signature_algorithm,
            "signature_version": self.signature_version,
        }

    def url(self, *path: str) -> str:
        return "/".join([self.api_base, API_VERSION, self.cloud_name, *path])


def resolve_credentials(settings: CloudinarySettings) -> Credentials:
    """CLOUDINARY_URL as the SDK reads it, overridden by non-empty settings; or ConfigError.

    The SDK is imported here, not at module level: `import cloudinary` itself raises
    on a malformed CLOUDINARY_URL, and that must not break a service using local disk.
    """
    try:
        import cloudinary

        config = cloudinary.Config()
    except ValueError as exc:
        # The SDK's message names the problem without repeating the URL (and its secret).
        raise ConfigError(f"CLOUDINARY_URL is not valid: {exc}") from None
    overrides = {
        name: value
        for name in ("cloud_name", "api_key", "api_secret", "upload_prefix")
        if (value := getattr(settings, name))
    }
    config.update(**overrides)
    missing = [n for n in ("cloud_name", "api_key", "api_secret") if not getattr(config, n)]
    if missing:
        raise ConfigError(
            f"storage.cloudinary: no {', '.join(missing)} for Cloudinary: {CREDENTIALS_HELP}"
        )
    api_base = str(config.upload_prefix or DEFAULT_API).rstrip("/")
    if not api_base.startswith(("http://", "https://")):
        raise ConfigError("Cloudinary upload_prefix: must start with http:// or https://")
    try:
        version = int(config.signature_version or 2)
    except (TypeError, ValueError):
        raise ConfigError("CLOUDINARY_URL: signature_version must be a whole number") from None
    return Credentials(
        cloud_name=str(config.cloud_name),
        api_key=str(config.api_key),
        api_secret=str(config.api_secret),
        api_base=api_base,
        signature_algorithm=str(config.signature_algorithm or "sha1"),
        signature_version=version,
    )


class _Transient(StorageError):
    """A failure worth another try here: connection error, timeout, 5xx, rate limit."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CloudinaryStorage:
    name = "cloudinary"

    def __init__(self, settings: CloudinarySettings) -> None:
        settings.validate()
        self._settings = settings
        self._credentials = resolve_credentials(settings)
        # Safe to import now: resolve_credentials has loaded the SDK's configuration.
        from cloudinary.utils import sign_request

        self._sign: Callable[[JsonObject, JsonObject], JsonObject] = sign_request
        self._folder = settings.folder.strip("/")
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._retry = Backoff.exponential(
            settings.attempts, settings.backoff, max_delay=MAX_BACKOFF
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.concurrency,
            ssl=ssl.create_default_context(cafile=certifi.where()),
        )
        # Its own plain session: trust_env=False so proxy variables meant for others are ignored.
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            # Each call is limited by asyncio.timeout in _send, once it has a slot.
            timeout=aiohttp.ClientTimeout(total=None),
            headers={"User-Agent": "csvcompress (cloudinary storage)"},
        )
        log.info(
            "storing images on Cloudinary: cloud %s, folder %r, API %s",
            self._credentials.cloud_name,
            self._folder,
            self._credentials.api_base,
        )

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = _checked_key(key)
        # Anything not an image is a "raw" resource, whose public ID keeps its extension.
        image = content_type.startswith("image/")
        resource_type = "image" if image else "raw"
        public_id = self._in_folder(str(path.with_suffix("")) if image else key)
        url = self._credentials.url(resource_type, "upload")

        async def upload() -> JsonObject:
            form = self._upload_form(public_id, path.name, data, content_type)
            return await self._send("POST", url, data=form)

        answer = await self._retrying(f"uploading {key}", upload)
        secure_url = answer.get("secure_url")
        if not isinstance(secure_url, str) or not secure_url.startswith("https://"):
            raise StorageFailed("Cloudinary's answer has no secure_url")
        return secure_url

    def _upload_form(
        self, public_id: str, filename: str, data: bytes, content_type: str
    ) -> aiohttp.FormData:
        # Signed at each try, so a long Retry-After never makes a stale timestamp.
        params = self._sign(
            {"timestamp": int(time.time()), "public_id": public_id, "overwrite": True},
            self._credentials.signing_options,
        )
        form = aiohttp.FormData()
        for name, value in params.items():
            form.add_field(name, str(value))
        form.add_field("file", data, filename=filename, content_type=content_type)
        return form

    def _in_folder(self, name: str) -> str:
        return f"{self._folder}/{name}" if self._folder else name

    async def delete_prefix(self, prefix: str) -> None:
        """Delete a request's assets (images and raw files) through the Admin API."""
        base = f"{self._in_folder(str(_checked_key(prefix.rstrip('/'))))}/"
        for resource_type in ("image", "raw"):
            url = self._credentials.url("resources", resource_type, "upload")
            cursor = ""
            while True:
                params = {"prefix": base} | ({"next_cursor": cursor} if cursor else {})
                delete = functools.partial(
                    self._send, "DELETE", url, params=params, headers=self._auth
                )
                answer = await self._retrying(f"deleting {base}", delete)
                cursor = str(answer.get("next_cursor") or "")
                if not cursor:
                    break

    async def check(self) -> None:
        """Ping the Admin API with the credentials."""

        async def ping() -> JsonObject:
            return await self._send("GET", self._credentials.url("ping"), headers=self._auth)

        await self._retrying("ping", ping)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def local_file(self, key: str) -> None:
        """Cloudinary serves its own URLs; the service serves no file for it."""
        return None

    @property
    def _auth(self) -> dict[str, str]:
        """The Admin API's HTTP Basic authentication header (aiohttp.BasicAuth is deprecated)."""
        pair = f"{self._credentials.api_key}:{self._credentials.api_secret}"
        return {"Authorization": f"Basic {base64.b64encode(pair.encode()).decode('ascii')}"}

    async def _retrying(self, what: str, call: Callable[[], Awaitable[JsonObject]]) -> JsonObject:
        self._started()  # before trying: not being started is no reason to try again

        async def in_slot() -> JsonObject:
            async with self._slots:
                return await call()

        try:
            return await self._retry.run(in_slot, before_sleep=functools.partial(_log_retry, what))
        except _Transient as exc:
            attempts = self._retry.attempts
            tries = f" (after {attempts} attempts)" if attempts > 1 else ""
            # Retried enough here: the caller should not start over.
            raise StorageFailed(f"{exc.message}{tries}") from exc

    def _started(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise StorageError("Cloudinary storage is not started")
        return self._session

    async def _send(self, method: str, url: str, **kwargs: Any) -> JsonObject:
        session = self._started()
        timeout = self._settings.timeout
        try:
            async with (
                asyncio.timeout(timeout),
                session.request(method, url, **kwargs) as resp,
            ):
                body = await resp.read()
                return _answer(resp.status, resp.headers.get("Retry-After"), body)
        except TimeoutError:
            raise _Transient(f"Cloudinary did not answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise _Transient(f"could not reach Cloudinary: {exc}") from None


def _answer(status: int, retry_after: str | None, body: bytes) -> JsonObject:
    """The JSON object of a successful answer, or the StorageError its status stands for."""
    if 200 <= status < 300:
        parsed = _json_object(body)
        if parsed is None:
            raise StorageFailed(f"Cloudinary answered HTTP {status} without a JSON object")
        return parsed
    detail = _error_message(body)
    if status in REFUSED:
        # Cloudinary's reason ("Invalid Signature", "Unknown API key") for whoever debugs;
        # the request fails once, with the one message, in jobs.
        log.debug("Cloudinary answered HTTP %d: %s", status, detail)
        raise StorageRejected(REJECTED_CREDENTIALS)
    said = f": {detail}" if detail else ""
    if status in RATE_LIMITED:
        raise _Transient(f"Cloudinary rate limit (HTTP {status})", parse_retry_after(retry_after))
    if status >= 500:
        raise _Transient(f"Cloudinary failed with HTTP {status}{said}")
    raise StorageFailed(f"Cloudinary refused it with HTTP {status}{said}")


def _json_object(body: bytes) -> JsonObject | None:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _error_message(body: bytes) -> str:
    """Cloudinary's {"error": {"message": ...}}, or nothing."""
    error = (_json_object(body) or {}).get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return message[:300] if isinstance(message, str) else ""


def _checked_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    # Keys are made by the service, but one must never reach outside its request's folder.
    if not path.parts or any(p in ("..", "/") or p.startswith(".") for p in path.parts):
        raise StorageFailed(f"invalid storage key: {key!r}")
    return path


def _log_retry(what: str, state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.info(
        "Cloudinary: %s failed on attempt %d (%s), retrying in %.1f s",
        what,
        state.attempt_number,
        exc,
        wait,
    )
