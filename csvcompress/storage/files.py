"""Where the uploaded and output CSVs are kept: the seam that lets them leave the machine.

In single mode they stay on disk beside the database (`LocalFiles`), and the store
records their paths, exactly as before. In distributed mode the API stores an
upload and any worker writes its output, so both live in the S3 bucket
(`storage.s3.S3Files`) and the store records an "s3://bucket/key" reference.

The callers (the upload, the output writer, the output download, retention) do not
know which: they keep a finished local file and get a reference, read a reference
through a local copy, serve it from disk when there is one or as a stream, and
delete references.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import aiofiles

log = logging.getLogger(__name__)

# Bytes read at a time when a CSV is streamed.
STREAM_CHUNK = 256 * 1024


class CsvFiles(Protocol):
    def keep_blocking(self, local: Path, name: str) -> str:
        """Keep the finished file `local` as `name` ("inputs/<id>.csv"); the reference the
        store records. Runs in a worker thread; the local file may be moved away."""
        ...

    def local_copy_blocking(self, ref: str) -> AbstractContextManager[Path]:
        """A local file holding `ref`'s content for the `with` block (in a worker thread)."""
        ...

    def local_file(self, ref: str) -> Path | None:
        """The file on this machine that is `ref`, or None when it lives elsewhere."""
        ...

    def stream(self, ref: str) -> AsyncIterator[bytes]:
        """`ref`'s content in chunks (for one that has no local file)."""
        ...

    async def delete(self, refs: Sequence[str]) -> None:
        """Remove these files; missing ones are fine, failures are logged, never raised."""


class LocalFiles:
    """The files stay where they were written: the reference is the path."""

    def keep_blocking(self, local: Path, name: str) -> str:
        return str(local)

    @contextlib.contextmanager
    def local_copy_blocking(self, ref: str) -> Iterator[Path]:
        yield Path(ref)

    def local_file(self, ref: str) -> Path:
        return Path(ref)

    async def stream(self, ref: str) -> AsyncIterator[bytes]:
        async with aiofiles.open(ref, "rb") as f:
            while chunk := await f.read(STREAM_CHUNK):
                yield chunk

    async def delete(self, refs: Sequence[str]) -> None:
        await asyncio.to_thread(unlink_all, [Path(ref) for ref in refs])


def unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            # A file we cannot remove must not keep the rows (and the next files) alive.
            log.warning("could not remove %s: %s", path, exc.strerror or exc)
