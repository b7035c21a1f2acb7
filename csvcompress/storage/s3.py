"""S3: output images in any S3-compatible object store (AWS S3, SeaweedFS, MinIO, R2...).

Through obstore (Python bindings of the Rust `object_store` crate used by Arrow and
DataFusion) rather than aiobotocore: its async calls run on its own Rust runtime,
so a put costs the event loop one await and no Python-side signing or XML; it has a
handful of small wheels and no pins on our aiohttp (aiobotocore pins exact botocore
releases and an aiohttp range, which would tie our HTTP stack to AWS's release
cadence); and it ships type stubs, so mypy checks every call. Its clients retry
transient errors (5xx, connection resets) with back-off themselves.

Credentials are read from the standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
environment variables by obstore itself, never from config.toml. A key
"<request_id>/<row>-<position>.<ext>" is stored as "<prefix>/<key>" with its
Content-Type, overwriting: a retried put (a chunk redone after a worker died)
replaces the same object. The URL handed out is "<public_url>/<prefix>/<key>".
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path, PurePosixPath

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from csvcompress.config import S3Settings
from csvcompress.errors import ConfigError, StorageError, StorageRejected
from csvcompress.storage.files import STREAM_CHUNK, LocalFiles

# Seconds one S3 call may take, and to connect.
TIMEOUT = timedelta(seconds=60)
CONNECT_TIMEOUT = timedelta(seconds=10)
# Keys deleted per DeleteObjects call (S3's own limit is 1,000).
DELETE_BATCH = 1000
HEALTH_KEY = ".health"

log = logging.getLogger(__name__)


class S3Storage:
    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        settings.validate()
        if not settings.bucket:
            raise ConfigError('storage.s3.bucket: is required with backend = "s3"')
        self._settings = settings
        self._prefix = settings.prefix.strip("/")
        base = settings.public_url or (
            f"{settings.endpoint_url.rstrip('/')}/{settings.bucket}"
            if settings.endpoint_url
            else f"https://{settings.bucket}.s3.{settings.region}.amazonaws.com"
        )
        self.base_url = base.rstrip("/")
        self._store: S3Store | None = None

    async def start(self) -> None:
        self._store = connect(self._settings)

    def object_key(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not parts or any(p in ("..", "/") or p.startswith(".") for p in parts):
            raise StorageError(f"invalid storage key: {key!r}")
        return f"{self._prefix}/{key}" if self._prefix else key

    @property
    def _client(self) -> S3Store:
        if self._store is None:
            raise RuntimeError("the S3 storage is not started")
        return self._store

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self.object_key(key)
        try:
            await obstore.put_async(
                self._client, path, data, attributes={"Content-Type": content_type}
            )
        except (PermissionDeniedError, UnauthenticatedError) as exc:
            raise StorageRejected(f"S3 refused the write: {_first_line(exc)}") from exc
        except BaseError as exc:
            raise StorageError(f"could not store {key} in S3: {_first_line(exc)}") from exc
        return f"{self.base_url}/{path}"

    async def delete_prefix(self, prefix: str) -> None:
        root = self.object_key(prefix.rstrip("/")) + "/"
        try:
            async for batch in obstore.list(self._client, root, chunk_size=DELETE_BATCH):
                await obstore.delete_async(self._client, [meta["path"] for meta in batch])
        except BaseError as exc:
            raise StorageError(f"could not delete {prefix} from S3: {_first_line(exc)}") from exc

    async def check(self) -> None:
        probe = f"{self._prefix}/{HEALTH_KEY}.{uuid.uuid4().hex}".lstrip("/")
        try:
            await obstore.put_async(self._client, probe, b"ok")
            await obstore.delete_async(self._client, probe)
        except BaseError as exc:
            raise StorageError(f"S3 does not take writes: {_first_line(exc)}") from exc

    def local_file(self, key: str) -> None:
        """The images are served by the object store (or a CDN before it), not by us."""
        return None

    async def close(self) -> None:
        self._store = None


def connect(settings: S3Settings) -> S3Store:
    """An obstore client for the bucket; credentials from the AWS_* environment variables."""
    extra = {"endpoint": settings.endpoint_url} if settings.endpoint_url else {}
    try:
        return S3Store(
            settings.bucket,
            region=settings.region,
            # Path-style ("<endpoint>/<bucket>/<key>"): what self-hosted stores answer.
            virtual_hosted_style_request=False,
            client_options={
                "allow_http": settings.endpoint_url.startswith("http://"),
                "timeout": TIMEOUT,
                "connect_timeout": CONNECT_TIMEOUT,
            },
            **extra,  # type: ignore[arg-type]
        )
    except BaseError as exc:
        raise ConfigError(f"storage.s3: {exc}") from None


class S3Files:
    """The uploaded and output CSVs in the bucket (distributed mode), under <prefix>/csv/.

    A reference is "s3://<bucket>/<key>"; anything else is a local path (a request
    stored before the switch to distributed mode) and is handled as LocalFiles does.
    """

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._root = "/".join(p for p in (settings.prefix.strip("/"), "csv") if p)
        self._scheme = f"s3://{settings.bucket}/"
        self._local = LocalFiles()
        self._client: S3Store | None = None

    @property
    def _store(self) -> S3Store:
        if self._client is None:
            self._client = connect(self._settings)
        return self._client

    def _key(self, ref: str) -> str | None:
        return ref[len(self._scheme) :] if ref.startswith(self._scheme) else None

    def keep_blocking(self, local: Path, name: str) -> str:
        key = f"{self._root}/{name}"
        try:
            obstore.put(self._store, key, local, attributes={"Content-Type": "text/csv"})
        except BaseError as exc:
            raise StorageError(f"could not keep {name} in S3: {_first_line(exc)}") from exc
        with contextlib.suppress(OSError):
            local.unlink()
        return f"{self._scheme}{key}"

    @contextlib.contextmanager
    def local_copy_blocking(self, ref: str) -> Iterator[Path]:
        key = self._key(ref)
        if key is None:
            yield Path(ref)
            return
        fd, name = tempfile.mkstemp(suffix=".csv", prefix="csvcompress-")
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    for chunk in obstore.get(self._store, key).stream(STREAM_CHUNK):
                        f.write(chunk)
                except BaseError as exc:
                    raise StorageError(f"could not read {ref}: {_first_line(exc)}") from exc
            yield Path(name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)

    def local_file(self, ref: str) -> Path | None:
        return None if self._key(ref) is not None else Path(ref)

    async def stream(self, ref: str) -> AsyncIterator[bytes]:
        key = self._key(ref)
        if key is None:
            async for chunk in self._local.stream(ref):
                yield chunk
            return
        try:
            result = await obstore.get_async(self._store, key)
            async for chunk in result.stream(STREAM_CHUNK):
                yield bytes(chunk)
        except BaseError as exc:
            raise StorageError(f"could not read {ref}: {_first_line(exc)}") from exc

    async def delete(self, refs: Sequence[str]) -> None:
        keys = [key for ref in refs if (key := self._key(ref)) is not None]
        await self._local.delete([ref for ref in refs if self._key(ref) is None])
        if keys:
            try:
                await obstore.delete_async(self._store, keys)
            except BaseError as exc:
                log.warning("could not remove %s from S3: %s", ", ".join(keys), _first_line(exc))


def _first_line(exc: BaseException) -> str:
    """obstore's messages carry the whole error chain over many lines; the first says it."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
