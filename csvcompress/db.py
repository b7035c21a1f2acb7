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
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from .models import (
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
)


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

    async def get_counts(self, request_id: str) -> ImageCounts:
        row = await self._row(
            "SELECT images_total, images_succeeded, images_failed FROM requests "
            "WHERE requestId = ?",
            (request_id,),
        )
        if row is None:
            return ImageCounts()
        return ImageCounts(total=row[0], succeeded=row[1], failed=row[2])

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
            f"SELECT id, images_total, images_succeeded, images_failed, {_REQUEST_COLUMNS} "
            f"FROM requests WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [
            (row[0], _request_from_row(row[4:]), ImageCounts(row[1], row[2], row[3]))
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
            await conn.execute(
                "UPDATE requests SET status = ?, outputFilePath = ?, error = ?, updated_at = ? "
                "WHERE requestId = ?",
                (status, output_file_path, error, now_iso(), request_id),
            )

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
            cur = await conn.execute(
                "UPDATE images SET status = ?, output_url = ?, error = ?, error_code = ?, "
                "bytes_in = ?, bytes_out = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE (id = ? OR source_id = ?) AND status = ?",
                (
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
                ),
            )
            changed = cur.rowcount
            ok = result.status is ImageStatus.SUCCEEDED
            # Bytes are counted once per distinct image: repeats are not re-downloaded.
            await conn.execute(
                "UPDATE requests SET images_succeeded = images_succeeded + ?, "
                "images_failed = images_failed + ?, bytes_in = bytes_in + ?, "
                "bytes_out = bytes_out + ?, updated_at = ? WHERE requestId = ?",
                (
                    changed if ok else 0,
                    0 if ok else changed,
                    result.bytes_in if ok else 0,
                    result.bytes_out if ok else 0,
                    stamp,
                    job.request_id,
                ),
            )
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
            "SELECT requestId FROM requests r WHERE status IN (?, ?) "
            "AND coalesce(webhookUrl, '') <> '' "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.request_id = r.requestId) "
            "ORDER BY id",
            (RequestStatus.COMPLETE, RequestStatus.FAILED),
        )
        return [row[0] for row in rows]


# --- work done in a thread -------------------------------------------------------


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

    `urls` yields (row, position, url) in input order. Ids are handed out here, in
    that order, so "ORDER BY id" is input order and repeats can point at their
    first occurrence without a second pass over the file.
    """
    stamp = now_iso()
    with closing(connect_sync(db_path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            next_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM images").fetchone()[0]) + 1
            total = _insert_images(conn, request_id, next_id, urls)
            _link_repeats(conn, request_id)
            conn.execute(
                "INSERT INTO requests (requestId, status, webhookUrl, input_path, rows, "
                "images_total, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    request_id,
                    RequestStatus.PENDING,
                    webhook_url,
                    input_path,
                    rows,
                    total,
                    stamp,
                    stamp,
                ),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return total


def _insert_images(
    conn: sqlite3.Connection, request_id: str, first_id: int, urls: Iterable[tuple[int, int, str]]
) -> int:
    sql = "INSERT INTO images (id, request_id, row, position, url) VALUES (?, ?, ?, ?, ?)"
    chunk: list[tuple[int, str, int, int, str]] = []
    count = 0
    for row, position, url in urls:
        chunk.append((first_id + count, request_id, row, position, url))
        count += 1
        if len(chunk) >= INSERT_CHUNK:
            conn.executemany(sql, chunk)
            chunk.clear()
    if chunk:
        conn.executemany(sql, chunk)
    return count


def _link_repeats(conn: sqlite3.Connection, request_id: str) -> None:
    # SQLite sorts in its own temp space, so memory stays flat for huge requests.
    conn.execute(
        "UPDATE images SET source_id = d.first_id FROM ("
        "  SELECT id, min(id) OVER (PARTITION BY url) AS first_id FROM images"
        "  WHERE request_id = ?"
        ") AS d WHERE images.id = d.id AND d.first_id <> d.id",
        (request_id,),
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


def input_path_sync(conn: sqlite3.Connection, request_id: str) -> str | None:
    row = conn.execute(
        "SELECT input_path FROM requests WHERE requestId = ?", (request_id,)
    ).fetchone()
    return None if row is None else str(row[0])
