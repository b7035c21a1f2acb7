"""SQLite schema and the queries, named for what they do.

One aiosqlite connection serves the event loop. Writes that belong together
run under one lock inside an explicit transaction, so statements from other
coroutines never slip into (or roll back with) somebody else's transaction.

Work that scans many rows (ingesting a 300,000-URL upload, streaming results
into the output CSV) runs in a worker thread on a connection of its own, so the
event loop stays free; WAL mode lets those readers and the writer overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from csvcompress.models import (
    DeliveryRecord,
    DeliveryState,
    ImageCounts,
    ImageJob,
    ImageRecord,
    ImageResult,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
INSERT_CHUNK = 5_000
# Rows deleted per transaction when a request is removed, so workers are not held up.
DELETE_CHUNK = 5_000

# Each entry moves the schema one version forward; PRAGMA user_version says where a file is.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        requestId TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        webhookUrl TEXT,
        outputFilePath TEXT,
        error TEXT,
        input_path TEXT NOT NULL,
        rows INTEGER NOT NULL,
        images_total INTEGER NOT NULL,
        images_succeeded INTEGER NOT NULL DEFAULT 0,
        images_failed INTEGER NOT NULL DEFAULT 0,
        bytes_in INTEGER NOT NULL DEFAULT 0,
        bytes_out INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX requests_by_status ON requests(status);
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        row INTEGER NOT NULL,
        position INTEGER NOT NULL,
        url TEXT NOT NULL,
        -- A repeated URL shares the result of its first occurrence (source_id).
        source_id INTEGER,
        status TEXT NOT NULL DEFAULT 'pending',
        output_url TEXT,
        error TEXT,
        error_code TEXT,
        bytes_in INTEGER NOT NULL DEFAULT 0,
        bytes_out INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT
    );
    CREATE INDEX images_by_request ON images(request_id, id);
    CREATE INDEX images_by_source ON images(source_id) WHERE source_id IS NOT NULL;
    CREATE TABLE deliveries (
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
    CREATE INDEX deliveries_by_request ON deliveries(request_id);
    """,
    # 2: cancelling requests, retention sweeps, health checks.
    """
    ALTER TABLE requests ADD COLUMN images_skipped INTEGER NOT NULL DEFAULT 0;
    -- Retention looks for finished requests by status and age; lookups by status alone
    -- use the same index, so the older one goes.
    CREATE INDEX requests_by_status_updated ON requests(status, updated_at);
    DROP INDEX requests_by_status;
    -- /healthz proves the database takes writes by committing this one row.
    CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at TEXT NOT NULL);
    """,
)

FINISHED_STATUSES = tuple(s for s in RequestStatus if s.finished)
UNFINISHED_STATUSES = tuple(s for s in RequestStatus if not s.finished)
# What the output CSV says about an image its request's cancellation left unprocessed.
SKIPPED_REASON = "skipped: the request was cancelled"


def _marks(values: Sequence[object]) -> str:
    """The "?, ?, ?" of an IN clause with one parameter per value."""
    return ", ".join("?" * len(values))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
    # the last commits, which the resume logic redoes anyway.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect_sync(path: str | Path) -> sqlite3.Connection:
    """A plain connection for work done in a thread."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    _configure(conn)
    return conn


def migrate_sync(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns the version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        log.info("migrating database to schema version %d", number)
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)


_REQUEST_COLUMNS = (
    "requestId, status, webhookUrl, outputFilePath, error, rows, created_at, updated_at, "
    "bytes_in, bytes_out"
)


# Above every requests.id: where a newest-first listing starts.
_NO_CURSOR = 2**63 - 1

_DELIVERY_COLUMNS = "id, request_id, url, state, attempts, next_attempt_at, last_status, last_error"


def _delivery_from_row(row: Sequence[Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row[0],
        request_id=row[1],
        url=row[2],
        state=DeliveryState(row[3]),
        attempts=row[4],
        next_attempt_at=row[5],
        last_status=row[6],
        last_error=row[7],
    )


def _request_from_row(row: Sequence[Any]) -> RequestRecord:
    return RequestRecord(
        id=row[0],
        status=RequestStatus(row[1]),
        webhook_url=row[2],
        output_file_path=row[3],
        error=row[4],
        rows=row[5],
        created_at=row[6],
        updated_at=row[7],
        bytes_in=row[8],
        bytes_out=row[9],
    )


class Database:
    """The service's one connection and every query it runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._migrate)
        conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    def _migrate(self) -> None:
        with closing(connect_sync(self.path)) as conn:
            migrate_sync(conn)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run a query to its end in one call on the connection's thread.

        Every read goes through here: a statement left open across an await (a cursor
        read with fetchone, then closed later) would pin its snapshot for every other
        statement on this shared connection, so a read could miss an upload committed
        meanwhile, and BEGIN IMMEDIATE would fail at once with SQLITE_BUSY_SNAPSHOT.
        """
        return list(await self.conn.execute_fetchall(sql, params))

    async def _row(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            await self.conn.execute("COMMIT")

    # --- requests ---------------------------------------------------------------

    async def get_request(self, request_id: str) -> RequestRecord | None:
        row = await self._row(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE requestId = ?", (request_id,)
        )
        return _request_from_row(row) if row else None

    async def get_request_with_counts(
        self, request_id: str
    ) -> tuple[RequestRecord, ImageCounts] | None:
        """get_request and get_counts in one query: one trip to the database thread, not two."""
        row = await self._row(
            f"SELECT {_REQUEST_COLUMNS}, images_total, images_succeeded, images_failed, "
            "images_skipped FROM requests WHERE requestId = ?",
            (request_id,),
        )
        if row is None:
            return None
        return _request_from_row(row), ImageCounts(*row[-4:])

    async def get_counts(self, request_id: str) -> ImageCounts:
        row = await self._row(
            "SELECT images_total, images_succeeded, images_failed, images_skipped FROM requests "
            "WHERE requestId = ?",
            (request_id,),
        )
        if row is None:
            return ImageCounts()
        return ImageCounts(total=row[0], succeeded=row[1], failed=row[2], skipped=row[3])

    async def list_requests(
        self, *, status: RequestStatus | None, before: int | None, limit: int
    ) -> list[tuple[int, RequestRecord, ImageCounts]]:
        """Requests newest first, as (position for the next page's `before`, record, counts)."""
        where = ["id < ?"]
        params: list[int | str] = [before if before is not None else _NO_CURSOR]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        rows = await self._rows(
            "SELECT id, images_total, images_succeeded, images_failed, images_skipped, "
            f"{_REQUEST_COLUMNS} FROM requests WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            (row[0], _request_from_row(row[5:]), ImageCounts(row[1], row[2], row[3], row[4]))
            for row in rows
        ]

    async def unfinished_request_ids(self) -> list[str]:
        """Requests to resume at start, oldest first."""
        rows = await self._rows(
            "SELECT requestId FROM requests WHERE status IN (?, ?) ORDER BY id",
            (RequestStatus.PENDING, RequestStatus.PROCESSING),
        )
        return [row[0] for row in rows]

    async def mark_processing(self, request_id: str) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE requests SET status = ?, updated_at = ? WHERE requestId = ? AND status = ?",
                (RequestStatus.PROCESSING, now_iso(), request_id, RequestStatus.PENDING),
            )

    async def finish_request(
        self,
        request_id: str,
        status: RequestStatus,
        *,
        output_file_path: str | None = None,
        error: str | None = None,
    ) -> None:
        async with self.transaction() as conn:
            # A request cancelled while it was being finished stays cancelled.
            await conn.execute(
                "UPDATE requests SET status = CASE WHEN status = ? THEN status ELSE ? END, "
                "outputFilePath = ?, error = ?, updated_at = ? WHERE requestId = ?",
                (RequestStatus.CANCELLED, status, output_file_path, error, now_iso(), request_id),
            )

    # --- cancelling, retrying and removing requests --------------------------------

    async def cancel_request(self, request_id: str) -> bool:
        """Mark an unfinished request cancelled and skip its pending images.

        False when the request is unknown or already finished.
        """
        stamp = now_iso()
        async with self.transaction() as conn:
            cur = await conn.execute(
                f"UPDATE requests SET status = ?, updated_at = ? WHERE requestId = ? "
                f"AND status IN ({_marks(UNFINISHED_STATUSES)})",
                (RequestStatus.CANCELLED, stamp, request_id, *UNFINISHED_STATUSES),
            )
            if cur.rowcount == 0:
                return False
            cur = await conn.execute(
                "UPDATE images SET status = ?, error = ?, error_code = ?, updated_at = ? "
                "WHERE request_id = ? AND status = ?",
                (
                    ImageStatus.SKIPPED,
                    SKIPPED_REASON,
                    "cancelled",
                    stamp,
                    request_id,
                    ImageStatus.PENDING,
                ),
            )
            await conn.execute(
                "UPDATE requests SET images_skipped = images_skipped + ? WHERE requestId = ?",
                (cur.rowcount, request_id),
            )
        return True

    async def requeue(self, request_id: str) -> int | None:
        """Put a finished request's failed and skipped images back to pending.

        The request becomes pending again, without output CSV or webhook delivery
        (the next finish queues a new one). Returns how many
        images were re-queued, or None when the request is unknown or not finished.
        """
        stamp = now_iso()
        async with self.transaction() as conn:
            cur = await conn.execute(
                "UPDATE requests SET status = ?, outputFilePath = NULL, error = NULL, "
                "images_failed = 0, images_skipped = 0, updated_at = ? WHERE requestId = ? "
                f"AND status IN ({_marks(FINISHED_STATUSES)})",
                (RequestStatus.PENDING, stamp, request_id, *FINISHED_STATUSES),
            )
            if cur.rowcount == 0:
                return None
            # The event sent for the earlier finish is superseded (one not delivered yet is
            # dropped): when the request finishes again, a new event is queued.
            await conn.execute("DELETE FROM deliveries WHERE request_id = ?", (request_id,))
            cur = await conn.execute(
                "UPDATE images SET status = ?, output_url = NULL, error = NULL, "
                "error_code = NULL, bytes_in = 0, bytes_out = 0, updated_at = ? "
                "WHERE request_id = ? AND status IN (?, ?)",
                (
                    ImageStatus.PENDING,
                    stamp,
                    request_id,
                    ImageStatus.FAILED,
                    ImageStatus.SKIPPED,
                ),
            )
            return int(cur.rowcount)

    async def finished_before(self, cutoff: str, limit: int) -> list[str]:
        """Ids of finished requests last updated before `cutoff` (an ISO time), oldest first."""
        rows = await self._rows(
            f"SELECT requestId FROM requests WHERE status IN ({_marks(FINISHED_STATUSES)}) "
            "AND updated_at < ? ORDER BY updated_at LIMIT ?",
            (*FINISHED_STATUSES, cutoff, limit),
        )
        return [row[0] for row in rows]

    async def request_files(self, request_id: str) -> list[str]:
        """The files a request keeps beside the database: its uploaded and output CSVs."""
        row = await self._row(
            "SELECT input_path, outputFilePath FROM requests WHERE requestId = ?", (request_id,)
        )
        return [path for path in row or () if path]

    async def delete_request(self, request_id: str) -> None:
        """Remove a request's rows: images in chunks (the workers keep writing), then the rest."""
        while True:
            async with self.transaction() as conn:
                cur = await conn.execute(
                    "DELETE FROM images WHERE id IN "
                    "(SELECT id FROM images WHERE request_id = ? LIMIT ?)",
                    (request_id, DELETE_CHUNK),
                )
            if cur.rowcount < DELETE_CHUNK:
                break
        async with self.transaction() as conn:
            await conn.execute("DELETE FROM deliveries WHERE request_id = ?", (request_id,))
            await conn.execute("DELETE FROM requests WHERE requestId = ?", (request_id,))

    # --- figures for /metrics ------------------------------------------------------

    async def requests_by_status(self) -> dict[RequestStatus, int]:
        """How many requests are in each status (every status listed, zeros included)."""
        counts = dict.fromkeys(RequestStatus, 0)
        for status, count in await self._rows(
            "SELECT status, count(*) FROM requests GROUP BY status"
        ):
            counts[RequestStatus(status)] = count
        return counts

    async def queued_images(self) -> int:
        """Images of unfinished requests that have no result yet."""
        row = await self._row(
            "SELECT coalesce(sum(images_total - images_succeeded - images_failed - "
            f"images_skipped), 0) FROM requests WHERE status IN ({_marks(UNFINISHED_STATUSES)})",
            UNFINISHED_STATUSES,
        )
        return int(row[0]) if row else 0

    # --- images -----------------------------------------------------------------

    async def pending_jobs(self, request_id: str, after_id: int, limit: int) -> list[ImageJob]:
        """The next pending distinct URLs of a request, in input order."""
        rows = await self._rows(
            "SELECT id, row, position, url, attempts FROM images "
            "WHERE request_id = ? AND id > ? AND status = ? AND source_id IS NULL "
            "ORDER BY id LIMIT ?",
            (request_id, after_id, ImageStatus.PENDING, limit),
        )
        return [ImageJob(r[0], request_id, r[1], r[2], r[3], r[4]) for r in rows]

    async def record_image(self, job: ImageJob, result: ImageResult) -> int:
        """Store one image's result, for it and its repeats; returns how many images that was."""
        stamp = now_iso()
        async with self.transaction() as conn:
            cur = await conn.execute(_RECORD_IMAGE, _record_image_params(job, result, stamp))
            changed = cur.rowcount
            if not changed:
                # The request was cancelled (or deleted) while this image was in flight.
                return 0
            await conn.execute(_COUNT_RESULTS, _count_results_params(job, result, changed, stamp))
        return changed

    async def image_page(self, request_id: str, after: int, limit: int) -> list[ImageRecord]:
        """A request's images in input order, from the first with an id above `after`."""
        rows = await self._rows(
            "SELECT id, row, position, url, status, output_url, error, error_code, bytes_in, "
            "bytes_out FROM images WHERE request_id = ? AND id > ? ORDER BY id LIMIT ?",
            (request_id, after, limit),
        )
        return [
            ImageRecord(
                id=row[0],
                row=row[1],
                position=row[2],
                url=row[3],
                status=ImageStatus(row[4]),
                output_url=row[5],
                error=row[6],
                error_code=row[7],
                bytes_in=row[8],
                bytes_out=row[9],
            )
            for row in rows
        ]

    # --- webhook deliveries -----------------------------------------------------

    async def add_delivery(
        self,
        delivery_id: str,
        request_id: str,
        event_type: str,
        url: str,
        payload: str,
        *,
        next_attempt_at: float | None = None,
    ) -> None:
        stamp = now_iso()
        async with self.transaction() as conn:
            await conn.execute(
                "INSERT INTO deliveries (id, request_id, event_type, url, payload, state, "
                "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery_id,
                    request_id,
                    event_type,
                    url,
                    payload,
                    DeliveryState.PENDING,
                    time.time() if next_attempt_at is None else next_attempt_at,
                    stamp,
                    stamp,
                ),
            )

    async def latest_delivery(self, request_id: str) -> DeliveryRecord | None:
        row = await self._row(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE request_id = ? "
            "ORDER BY created_at DESC, rowid DESC LIMIT 1",
            (request_id,),
        )
        return _delivery_from_row(row) if row else None

    async def get_delivery(self, delivery_id: str) -> tuple[DeliveryRecord, str] | None:
        """A delivery and its payload."""
        row = await self._row(
            f"SELECT {_DELIVERY_COLUMNS}, payload FROM deliveries WHERE id = ?", (delivery_id,)
        )
        return (_delivery_from_row(row), str(row[-1])) if row else None

    async def due_delivery_ids(self) -> list[tuple[str, float]]:
        """Pending deliveries with the time each is due, soonest first."""
        rows = await self._rows(
            "SELECT id, next_attempt_at FROM deliveries WHERE state = ? ORDER BY next_attempt_at",
            (DeliveryState.PENDING,),
        )
        return [(row[0], float(row[1] or 0)) for row in rows]

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        state: DeliveryState,
        next_attempt_at: float | None,
        last_status: int | None,
        last_error: str | None,
    ) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, "
                "last_status = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (state, next_attempt_at, last_status, last_error, now_iso(), delivery_id),
            )

    async def next_pending_deliveries(
        self, exclude: Collection[str], limit: int
    ) -> list[tuple[str, float]]:
        """Up to `limit` pending deliveries not in `exclude`, with due times, soonest first."""
        marks = ", ".join("?" * len(exclude))
        rows = await self._rows(
            "SELECT id, next_attempt_at FROM deliveries WHERE state = ? "
            f"AND id NOT IN ({marks}) ORDER BY next_attempt_at LIMIT ?",
            (DeliveryState.PENDING, *exclude, limit),
        )
        return [(row[0], float(row[1] or 0)) for row in rows]

    async def requeue_delivery(self, delivery_id: str, next_attempt_at: float) -> None:
        """Start a delivery over: pending, no attempts made, first attempt at `next_attempt_at`."""
        async with self.transaction() as conn:
            await conn.execute(
                "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, "
                "last_status = NULL, last_error = NULL, updated_at = ? WHERE id = ?",
                (DeliveryState.PENDING, next_attempt_at, now_iso(), delivery_id),
            )

    async def finished_requests_without_delivery(self) -> list[str]:
        """Finished requests with a webhook URL whose delivery was never created (a crash
        between finishing the request and queueing its webhook), oldest first."""
        rows = await self._rows(
            "SELECT requestId FROM requests r WHERE status IN (?, ?, ?) "
            "AND coalesce(webhookUrl, '') <> '' "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.request_id = r.requestId) "
            "ORDER BY id",
            (RequestStatus.COMPLETE, RequestStatus.FAILED, RequestStatus.CANCELLED),
        )
        return [row[0] for row in rows]


# --- recording results (shared by record_image and record_images_sync) -------------

# One image's result, for it and its repeats, unless already recorded.
_RECORD_IMAGE = (
    "UPDATE images SET status = ?, output_url = ?, error = ?, error_code = ?, "
    "bytes_in = ?, bytes_out = ?, attempts = attempts + 1, updated_at = ? "
    "WHERE (id = ? OR source_id = ?) AND status = ?"
)
_COUNT_RESULTS = (
    "UPDATE requests SET images_succeeded = images_succeeded + ?, "
    "images_failed = images_failed + ?, bytes_in = bytes_in + ?, "
    "bytes_out = bytes_out + ?, updated_at = ? WHERE requestId = ?"
)


def _record_image_params(job: ImageJob, result: ImageResult, stamp: str) -> tuple[Any, ...]:
    return (
        result.status,
        result.output_url,
        result.error,
        result.error_code,
        result.bytes_in,
        result.bytes_out,
        stamp,
        job.id,
        job.id,
        ImageStatus.PENDING,
    )


def _count_results_params(
    job: ImageJob, result: ImageResult, changed: int, stamp: str
) -> tuple[Any, ...]:
    ok = result.status is ImageStatus.SUCCEEDED
    # Bytes are counted once per distinct image: repeats are not re-downloaded.
    return (
        changed if ok else 0,
        0 if ok else changed,
        result.bytes_in if ok else 0,
        result.bytes_out if ok else 0,
        stamp,
        job.request_id,
    )


# --- work done in a thread -------------------------------------------------------


class NotWritable(Exception):
    """The database, or a file it needs, cannot be written."""


def check_writable_sync(path: str | Path, timeout: float) -> None:
    """Raise NotWritable or sqlite3.Error unless the database takes writes now and after a restart.

    Two checks, because one connection cannot see everything. The files and their
    directory must be writable for this process (a file made read-only or a
    read-only file system shows here; SQLite itself would not notice until the
    next start, as it reuses the file descriptor it already has open). And a real
    write must commit, on a fresh connection, within `timeout` seconds (a full
    disk, an I/O error or a lock held elsewhere shows there).
    """
    path = Path(path)
    wal, shm = (path.with_name(f"{path.name}{suffix}") for suffix in ("-wal", "-shm"))
    needed = [path, path.parent] + [f for f in (wal, shm) if f.exists()]
    for target in needed:
        # os.access, not open(): closing a descriptor of the database would drop the
        # locks the service's own connections hold on it.
        if not os.access(target, os.W_OK):
            raise NotWritable(f"{target} is read-only")
    uri = f"{path.resolve().as_uri()}?mode=rw"
    with closing(sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)) as conn:
        # Durable like the service's own writes (WAL + NORMAL): no fsync per probe.
        conn.execute("PRAGMA synchronous = NORMAL")
        # On an error the connection closes with the transaction open: SQLite rolls it back.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)", (now_iso(),))
        conn.execute("COMMIT")


def record_images_sync(
    conn: sqlite3.Connection, results: Sequence[tuple[ImageJob, ImageResult]]
) -> list[int]:
    """record_image for many images in one transaction; how many images each one was.

    One commit for a batch instead of one per image, on a connection of the
    caller's (see recorder.py), so results do not queue with the reads.
    """
    stamp = now_iso()
    changed: list[int] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for job, result in results:
            count = conn.execute(_RECORD_IMAGE, _record_image_params(job, result, stamp)).rowcount
            if count:  # 0: the request was cancelled (or deleted) while the image was in flight
                conn.execute(_COUNT_RESULTS, _count_results_params(job, result, count, stamp))
            changed.append(count)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return changed


def insert_request_sync(
    db_path: str | Path,
    *,
    request_id: str,
    input_path: str,
    webhook_url: str | None,
    rows: int,
    urls: Iterable[tuple[int, int, str]],
) -> int:
    """Store a validated request and its images in one transaction; returns the image count.

    `urls` yields (row, position, url) in input order, positions counting from 0
    in each row. See RequestInserter, which does the work.
    """
    with RequestInserter(db_path, request_id) as inserter:
        for row, group in itertools.groupby(urls, key=operator.itemgetter(0)):
            inserter.add(row, [url for _, _, url in group])
        return inserter.finish(input_path=input_path, webhook_url=webhook_url, rows=rows)


class RequestInserter:
    """A request and its images, stored in one transaction as the rows are read (in a thread).

    Ids are handed out here, in input order, so "ORDER BY id" is input order and
    repeats can point at their first occurrence without a second pass over the
    file. Rows may be added while the upload is still being validated, in the
    same pass (csv_input.validate's on_row): leaving the `with` block without
    `finish` rolls everything back, so a refused file leaves nothing behind.
    """

    def __init__(self, db_path: str | Path, request_id: str) -> None:
        self._db_path = db_path
        self._request_id = request_id
        self._conn: sqlite3.Connection | None = None
        self._chunk: list[tuple[int, str, int, int, str]] = []
        self._first_id = 0
        self._committed = False
        self.images = 0

    def __enter__(self) -> RequestInserter:
        conn = connect_sync(self._db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        self._conn, self._first_id = conn, int(last) + 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self._committed:
                conn.execute("ROLLBACK")
        finally:
            conn.close()

    def add(self, row: int, urls: Iterable[str]) -> None:
        """The URLs of one row, in order."""
        for position, url in enumerate(urls):
            self._chunk.append((self._first_id + self.images, self._request_id, row, position, url))
            self.images += 1
        if len(self._chunk) >= INSERT_CHUNK:
            self._flush()

    def finish(self, *, input_path: str, webhook_url: str | None, rows: int) -> int:
        """Link the repeats, store the request, commit; returns the image count."""
        conn = self._connection()
        self._flush()
        _link_repeats(conn, self._request_id)
        stamp = now_iso()
        conn.execute(
            "INSERT INTO requests (requestId, status, webhookUrl, input_path, rows, "
            "images_total, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._request_id,
                RequestStatus.PENDING,
                webhook_url,
                input_path,
                rows,
                self.images,
                stamp,
                stamp,
            ),
        )
        conn.execute("COMMIT")
        self._committed = True
        return self.images

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("use RequestInserter in a with block")
        return self._conn

    def _flush(self) -> None:
        if self._chunk:
            self._connection().executemany(
                "INSERT INTO images (id, request_id, row, position, url) VALUES (?, ?, ?, ?, ?)",
                self._chunk,
            )
            self._chunk.clear()


def _link_repeats(conn: sqlite3.Connection, request_id: str) -> None:
    # SQLite sorts in its own temp space, so memory stays flat for huge requests.
    # Grouping finds the repeated URLs first and touches only their rows: twice as
    # fast on 300,000 distinct URLs as a window over every row (0.35 s against 0.7 s).
    conn.execute(
        "WITH firsts AS ("
        "  SELECT url, min(id) AS first_id FROM images WHERE request_id = ?"
        "  GROUP BY url HAVING count(*) > 1"
        ") UPDATE images SET source_id = firsts.first_id FROM firsts"
        " WHERE images.request_id = ? AND images.url = firsts.url"
        " AND images.id <> firsts.first_id",
        (request_id, request_id),
    )


def iter_image_outcomes_sync(
    conn: sqlite3.Connection, request_id: str
) -> Iterator[tuple[int, int, str | None, str | None]]:
    """(row, position, output_url, error) of every image of a request, in input order."""
    cur = conn.execute(
        "SELECT row, position, output_url, error FROM images WHERE request_id = ? ORDER BY id",
        (request_id,),
    )
    while batch := cur.fetchmany(INSERT_CHUNK):
        yield from batch


def request_input_sync(conn: sqlite3.Connection, request_id: str) -> tuple[str, int, int] | None:
    """(input CSV path, rows, images) of a request."""
    row = conn.execute(
        "SELECT input_path, rows, images_total FROM requests WHERE requestId = ?", (request_id,)
    ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]), int(row[2]))


def input_path_sync(conn: sqlite3.Connection, request_id: str) -> str | None:
    row = conn.execute(
        "SELECT input_path FROM requests WHERE requestId = ?", (request_id,)
    ).fetchone()
    return None if row is None else str(row[0])
