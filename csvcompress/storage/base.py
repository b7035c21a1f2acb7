"""The storage interface every backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable


class Storage(Protocol):
    """Keeps output images under a key and says where the public can fetch them."""

    name: str

    async def start(self) -> None:
        """Check settings and open what the backend needs; raise ConfigError if unusable."""

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store `data` under `key` (overwriting: a retried put is harmless); return its URL.

        Raises StorageError; StorageRejected when the backend refuses every write (bad
        credentials), which fails the request's remaining images at once.
        """
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with `prefix` (a request's images)."""

    async def check(self) -> None:
        """Raise StorageError if the backend cannot take writes now (health checks)."""

    def local_file(self, key: str) -> Path | None:
        """How the object under `key` is served: the file on disk that the service itself
        serves at /files/{key}, or None when this backend serves nothing there (its URLs
        point elsewhere, or it keeps nothing): /files/ then answers 404.

        Raises StorageError for a key that is not safe (one that would leave the root).
        The file may not exist; the caller checks.
        """
        ...

    async def close(self) -> None:
        """Release connections."""


@runtime_checkable
class BlockingPut(Protocol):
    """Offered by backends whose writes are local and quick (local disk, null).

    The worker then stores from the CPU thread that encoded the image, right
    after encoding: one thread hand-off per image instead of two, which is
    measurable at tens of images per second on a small machine.
    """

    def put_blocking(self, key: str, data: bytes, content_type: str) -> str:
        """What `put` does, synchronously, in the calling thread; raises StorageError."""
        ...
