"""Local disk, served by the service itself under /files/."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

import aiofiles
import aiofiles.os

from csvcompress.errors import StorageError, StorageFull

# What a write that failed for lack of space says.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class LocalStorage:
    name = "local"

    def __init__(self, root: str | Path, base_url: str) -> None:
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")

    async def start(self) -> None:
        await aiofiles.os.makedirs(self.root, exist_ok=True)

    def path_for(self, key: str) -> Path:
        parts = PurePosixPath(key).parts
        # Keys are made by the service, but a key must never climb out of the root.
        if not parts or any(p in ("..", "/") or p.startswith(".") for p in parts):
            raise StorageError(f"invalid storage key: {key!r}")
        return self.root.joinpath(*parts)

    def local_file(self, key: str) -> Path:
        """The file /files/{key} serves; raises StorageError for a key that leaves the root."""
        return self.path_for(key)

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        # One trip to a thread for the whole write: each aiofiles call (makedirs, open,
        # write, close, rename) was a trip of its own, five per image, and every trip
        # takes the event loop's and the GIL's time.
        return await asyncio.to_thread(self.put_blocking, key, data, content_type)

    def put_blocking(self, key: str, data: bytes, content_type: str) -> str:
        path = self.path_for(key)
        try:
            _write_atomically(path, data)
        except OSError as exc:
            error = StorageFull if exc.errno in DISK_FULL else StorageError
            raise error(f"could not write {key}: {exc.strerror or exc}") from exc
        return f"{self.base_url}/{key}"

    async def delete_prefix(self, prefix: str) -> None:
        target = self.path_for(prefix.rstrip("/"))
        await asyncio.to_thread(shutil.rmtree, target, True)

    async def check(self) -> None:
        probe = self.root / f".health.{uuid.uuid4().hex}"
        try:
            await aiofiles.os.makedirs(self.root, exist_ok=True)
            async with aiofiles.open(probe, "wb") as f:
                await f.write(b"ok")
            await aiofiles.os.remove(probe)
        except OSError as exc:
            reason = exc.strerror or exc
            raise StorageError(f"storage directory {self.root} is not writable: {reason}") from exc

    async def close(self) -> None:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename: a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            f = open(tmp, "wb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            # A request's first image: its folder is made once, not checked on every write.
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")  # noqa: SIM115
        with f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    # Cleanup after a failed write: whatever stopped the write may stop this too.
    with contextlib.suppress(OSError):
        os.unlink(path)
