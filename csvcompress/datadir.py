"""The data directory: held by one service at a time, and checked before anything opens.

`DataDirLock` takes an OS file lock (flock) on `<data dir>/csvcompress.lock` for as long as
the service runs, with the holder's process ID written in it: a second service on the
same database would work the same requests twice, so it stops at start saying which
process holds the directory. The OS releases the lock when the process ends, however it
ends, so a crash never leaves a stale lock behind.

Creating the lock file is also the first write to the directory: an unreadable,
read-only or missing-parent directory stops the start there, named, before the database
is opened.

`remove_partial_uploads` deletes `uploads/*.csv.part`, the files of uploads a kill or a
vanished client cut short: all of them at start (no upload is in progress yet), and
those older than the upload time limit in each retention sweep.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from csvcompress.errors import StartupError

log = logging.getLogger(__name__)

LOCK_NAME = "csvcompress.lock"
PARTIAL_UPLOAD_GLOB = "*.csv.part"


def access_advice(path: Path, exc: OSError) -> str:
    """One line saying what went wrong with `path` and what to do about it."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system; choose a writable [database] path"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left for {path}; free some space or choose another [database] path"
    return (
        f"cannot use {path}: {reason}; give the user running csvcompress (uid {os.getuid()}) "
        "read and write access to it, or choose another [database] path"
    )


class DataDirLock:
    """An exclusive, process-lifetime lock on a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise StartupError naming the directory and its holder."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StartupError(access_advice(directory, exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StartupError(
                f"the data directory {directory} is in use by another csvcompress "
                f"({holder}); stop it first, or give this one another [database] path"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def remove_partial_uploads(uploads_dir: Path, older_than: float | None = None) -> int:
    """Delete the partial upload files (all, or those unchanged for `older_than` seconds)."""
    if not uploads_dir.is_dir():
        return 0
    cutoff = None if older_than is None else time.time() - older_than
    removed = 0
    for path in uploads_dir.glob(PARTIAL_UPLOAD_GLOB):
        with contextlib.suppress(FileNotFoundError):
            if cutoff is not None and path.stat().st_mtime > cutoff:
                continue
            path.unlink()
            removed += 1
    if removed:
        log.info("removed %d partial upload file(s) left in %s", removed, uploads_dir)
    return removed
