"""The PostgreSQL store: the only code that imports psycopg (distributed mode).

The same Store as store/sqlite.py, for many processes on many machines: the API
and every worker read and write the same rows. Status changes are the same
conditional updates ("move these sources to these targets"), so two processes
racing for a row cannot both win, exactly as two coroutines cannot in SQLite.

Async methods share one psycopg pool; the blocking methods (ingesting an upload,
streaming outcomes into the output CSV) run in the caller's thread on a
connection of their own. Image ids come from one sequence and a request's images
are inserted in input order with COPY, so "ORDER BY id" is input order here too.

The schema is not created by `open`: `python -m csvcompress migrate` does it (with
procrastinate's, see `migrate`), once, before the processes start; `open` refuses
a database whose schema is behind this code.

Webhook deliveries are shared by every process's sender, so `next_pending_deliveries`
leases each due delivery it returns to its caller (`DELIVERY_LEASE` seconds): two
workers never post the same event at once, and an attempt cut short by a crash is
made again by any worker once the lease runs out, with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import procrastinate
import psycopg
from procrastinate.schema import SchemaManager
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from csvcompress.clock import iso_from_unix, now_iso
from csvcompress.errors import ConfigError
from csvcompress.models import (
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    DeliveryRecord,
    DeliveryState,
    DueDeliveries,
    ImageJob,
    ImageResult,
    ImageStatus,
    RequestStatus,
)
from csvcompress.store.base import (
    ImageMove,
    ListedRequest,
    OutcomeRow,
    RequestInput,
    RequestMove,
    StoreUnavailable,
)
from csvcompress.store.reads import SharedReads
from csvcompress.store.rows import (
    COUNT_COLUMNS,
    DELIVERY_COLUMNS,
    REQUEST_COLUMNS,
    counts_of,
    delivery_of,
    request_of,
)

log = logging.getLogger(__name__)

# Connections the event loop's pool keeps open at most.
POOL_SIZE = 8
# Rows fetched per round trip when the output CSV is streamed.
FETCH_CHUNK = 5_000
# Rows deleted per transaction when a request is removed, so workers are not held up.
DELETE_CHUNK = 5_000
# Seconds a delivery handed to one process's sender stays away from the others.
DELIVERY_LEASE = 120.0
# Serialises `migrate` across processes started together.
MIGRATION_LOCK = 0x637376  # "csv"
_NO_CURSOR = 2**63 - 1

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id BIGSERIAL PRIMARY KEY,
        request_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        webhook_url TEXT,
        output_file_path TEXT,
        error TEXT,
        input_path TEXT NOT NULL,
        rows BIGINT NOT NULL,
        images_total BIGINT NOT NULL,
        images_succeeded BIGINT NOT NULL DEFAULT 0,
        images_failed BIGINT NOT NULL DEFAULT 0,
        images_skipped BIGINT NOT NULL DEFAULT 0,
        bytes_in BIGINT NOT NULL DEFAULT 0,
        bytes_out BIGINT NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        -- The uploaded file's name; seconds spent processing up to the last finish or
        -- cancel, and since when (unix seconds) it has been processing again.
        file_name TEXT,
        processing_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        processing_since DOUBLE PRECISION
    );
    CREATE INDEX requests_by_status_updated ON requests(status, updated_at);
    CREATE TABLE images (
        id BIGSERIAL PRIMARY KEY,
        request_id TEXT NOT NULL,
        row BIGINT NOT NULL,
        position INTEGER NOT NULL,
        url TEXT NOT NULL,
        source_id BIGINT,
        status TEXT NOT NULL DEFAULT 'pending',
        output_url TEXT,
        error TEXT,
        error_code TEXT,
        bytes_in BIGINT NOT NULL DEFAULT 0,
        bytes_out BIGINT NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT
    );
    CREATE INDEX images_by_request ON images(request_id, id);
    CREATE INDEX images_by_source ON images(source_id) WHERE source_id IS NOT NULL;
    CREATE TABLE deliveries (
        seq BIGSERIAL,
        id TEXT PRIMARY KEY,
        -- One event per request at a time (a retry drops the old one): two processes
        -- queueing the same request's event cannot both succeed.
        request_id TEXT NOT NULL UNIQUE,
        event_type TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION,
        last_status INTEGER,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
    CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at TEXT NOT NULL);
    """,
)

# The processing clock stops: the time since it (re)started is added up (see models).
_STOP_CLOCK = (
    "processing_seconds = processing_seconds + CASE WHEN processing_since IS NULL THEN 0 "
    "ELSE GREATEST(0, %s - processing_since) END, processing_since = NULL"
)


@functools.cache
def _case_sql(pairs: int) -> str:
    return "CASE status " + " ".join("WHEN %s THEN %s" for _ in range(pairs)) + " END"


def _move(move: Mapping[Any, Any]) -> tuple[str, list[str], list[str]]:
    """SET status = <case> ... WHERE status = ANY(<sources>): the SQL and its parameters."""
    pairs = [(str(src), str(dst)) for src, dst in move.items()]
    return _case_sql(len(pairs)), [v for pair in pairs for v in pair], [s for s, _ in pairs]


# --- the schema ----------------------------------------------------------------------


def _schema_version(conn: psycopg.Connection[DictRow]) -> int:
    exists = conn.execute("SELECT to_regclass('csvcompress_schema') AS t").fetchone()
    if exists is None or exists["t"] is None:
        return 0
    row = conn.execute("SELECT version FROM csvcompress_schema").fetchone()
    return int(row["version"]) if row else 0


def migrate_blocking(url: str) -> int:
    """Create or upgrade this store's tables and procrastinate's; returns the schema version.

    Safe to run from several processes at once (an advisory lock serialises them) and
    again on a database that is up to date (it changes nothing).
    """
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            version = _schema_version(conn)
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                log.info("migrating database to schema version %d", number)
                with conn.transaction():
                    conn.execute(script)
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS csvcompress_schema (version INTEGER NOT NULL)"
                    )
                    conn.execute("DELETE FROM csvcompress_schema")
                    conn.execute("INSERT INTO csvcompress_schema VALUES (%s)", (number,))
            queue = conn.execute("SELECT to_regclass('procrastinate_jobs') AS t").fetchone()
            if queue is None or queue["t"] is None:
                engine = importlib.metadata.version("procrastinate")
                log.info("creating the queue's schema (procrastinate %s)", engine)
                with conn.transaction():
                    conn.execute(SchemaManager.get_schema())
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return len(MIGRATIONS)


def queue_connector(url: str) -> procrastinate.PsycopgConnector:
    """The connector procrastinate's App uses: its own pool on the same database."""
    return procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=POOL_SIZE)


class PostgresStore(SharedReads):
    """The Store on PostgreSQL (see store/base.py for what each method promises)."""

    PLACEHOLDER = "%s"

    def __init__(self, url: str) -> None:
        if not url:
            raise ConfigError('database.url: is required with cluster.mode = "distributed"')
        self.url = url
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] | None = None

    # --- lifetime and health ---------------------------------------------------

    async def open(self) -> None:
        version = await asyncio.to_thread(self._version)
        if version < len(MIGRATIONS):
            raise ConfigError(
                f"database.url: the schema is at version {version}, this code needs "
                f"{len(MIGRATIONS)}: run `python -m csvcompress migrate` first"
            )
        pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=False,
        )
        await pool.open(wait=True)
        self._pool = pool

    def _version(self) -> int:
        try:
            with psycopg.connect(self.url, row_factory=dict_row, connect_timeout=10) as conn:
                return _schema_version(conn)
        except psycopg.OperationalError as exc:
            raise ConfigError(f"database.url: cannot connect: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def check(self, patience: float) -> None:
        try:
            async with asyncio.timeout(patience):
                await self._execute(
                    "INSERT INTO health (id, checked_at) VALUES (1, %s) "
                    "ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    (now_iso(),),
                )
        except psycopg.Error as exc:
            raise StoreUnavailable(f"not writable: {exc}") from None
        except TimeoutError:
            raise StoreUnavailable(f"no answer within {patience:g} s") from None

    @property
    def _connections(self) -> AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]:
        if self._pool is None:
            raise RuntimeError("database is not open")
        return self._pool

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[DictRow]:
        async with self._connections.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def _row(self, sql: str, params: Sequence[Any] = ()) -> DictRow | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._connections.connection() as conn:
            cur = await conn.execute(sql, params)
            return cur.rowcount

    # --- new requests (in a worker thread) ----------------------------------------

    def request_writer(self, request_id: str) -> PostgresRequestWriter:
        return PostgresRequestWriter(self.url, request_id)

    # --- reading requests and images ------------------------------------------

    async def list_requests(
        self, *, status: RequestStatus | None, before: int | None, limit: int
    ) -> list[ListedRequest]:
        where = ["id < %s"]
        params: list[int | str] = [before if before is not None else _NO_CURSOR]
        if status is not None:
            where.append("status = %s")
            params.append(status)
        rows = await self._rows(
            f"SELECT id AS cursor, {COUNT_COLUMNS}, {REQUEST_COLUMNS} FROM requests "
            f"WHERE {' AND '.join(where)} ORDER BY requests.id DESC LIMIT %s",
            (*params, limit),
        )
        return [ListedRequest(int(row["cursor"]), request_of(row), counts_of(row)) for row in rows]

    async def unfinished_request_ids(self) -> list[str]:
        rows = await self._rows(
            "SELECT request_id FROM requests WHERE status = ANY(%s) ORDER BY id",
            (list(UNFINISHED_STATUSES),),
        )
        return [row["request_id"] for row in rows]

    async def pending_images(self, request_id: str, after_id: int, limit: int) -> list[ImageJob]:
        rows = await self._rows(
            "SELECT id, row, position, url, attempts FROM images "
            "WHERE request_id = %s AND id > %s AND status = %s AND source_id IS NULL "
            "ORDER BY id LIMIT %s",
            (request_id, after_id, ImageStatus.PENDING, limit),
        )
        return [
            ImageJob(
                id=int(r["id"]),
                request_id=request_id,
                row=int(r["row"]),
                position=r["position"],
                url=r["url"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    def request_input_blocking(self, request_id: str) -> RequestInput | None:
        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            row = conn.execute(
                "SELECT input_path, rows, images_total FROM requests WHERE request_id = %s",
                (request_id,),
            ).fetchone()
        if row is None:
            return None
        return RequestInput(str(row["input_path"]), int(row["rows"]), int(row["images_total"]))

    def image_outcomes_blocking(self, request_id: str) -> Iterator[OutcomeRow]:
        # A server-side cursor: rows come FETCH_CHUNK at a time, never all at once.
        with (
            psycopg.connect(self.url, row_factory=dict_row) as conn,
            conn.transaction(),
            conn.cursor(name="outcomes") as cur,
        ):
            cur.itersize = FETCH_CHUNK
            cur.execute(
                "SELECT row, position, output_url, error FROM images WHERE request_id = %s "
                "ORDER BY id",
                (request_id,),
            )
            for r in cur:
                yield OutcomeRow(int(r["row"]), r["position"], r["output_url"], r["error"])

    # --- status changes (only jobs/lifecycle.py calls these) --------------------

    async def start_request(self, request_id: str, move: RequestMove) -> bool:
        case, case_params, sources = _move(move)
        changed = await self._execute(
            f"UPDATE requests SET status = {case}, processing_since = %s, updated_at = %s "
            "WHERE request_id = %s AND status = ANY(%s)",
            (*case_params, time.time(), now_iso(), request_id, sources),
        )
        return changed > 0

    async def finish_request(
        self,
        request_id: str,
        move: RequestMove,
        *,
        output_file_path: str | None,
        error: str | None,
    ) -> bool:
        case, case_params, sources = _move(move)
        changed = await self._execute(
            f"UPDATE requests SET status = {case}, output_file_path = %s, error = %s, "
            f"{_STOP_CLOCK}, updated_at = %s WHERE request_id = %s AND status = ANY(%s)",
            (*case_params, output_file_path, error, time.time(), now_iso(), request_id, sources),
        )
        return changed > 0

    async def cancel_request(
        self, request_id: str, move: RequestMove, images: ImageMove, *, reason: str, code: str
    ) -> bool:
        stamp = now_iso()
        case, case_params, sources = _move(move)
        image_case, image_case_params, image_sources = _move(images)
        async with self._connections.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"UPDATE requests SET status = {case}, {_STOP_CLOCK}, updated_at = %s "
                "WHERE request_id = %s AND status = ANY(%s)",
                (*case_params, time.time(), stamp, request_id, sources),
            )
            if cur.rowcount == 0:
                return False
            cur = await conn.execute(
                f"UPDATE images SET status = {image_case}, error = %s, "
                "error_code = %s, updated_at = %s WHERE request_id = %s AND status = ANY(%s)",
                (*image_case_params, reason, code, stamp, request_id, image_sources),
            )
            await conn.execute(
                "UPDATE requests SET images_skipped = images_skipped + %s WHERE request_id = %s",
                (cur.rowcount, request_id),
            )
        return True

    async def retry_request(
        self, request_id: str, move: RequestMove, images: ImageMove
    ) -> int | None:
        stamp = now_iso()
        case, case_params, sources = _move(move)
        image_case, image_case_params, image_sources = _move(images)
        async with self._connections.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"UPDATE requests SET status = {case}, "
                "output_file_path = NULL, error = NULL, images_failed = 0, images_skipped = 0, "
                "updated_at = %s WHERE request_id = %s AND status = ANY(%s)",
                (*case_params, stamp, request_id, sources),
            )
            if cur.rowcount == 0:
                return None
            await conn.execute("DELETE FROM deliveries WHERE request_id = %s", (request_id,))
            cur = await conn.execute(
                f"UPDATE images SET status = {image_case}, "
                "output_url = NULL, error = NULL, error_code = NULL, bytes_in = 0, "
                "bytes_out = 0, updated_at = %s WHERE request_id = %s AND status = ANY(%s)",
                (*image_case_params, stamp, request_id, image_sources),
            )
            return int(cur.rowcount)

    async def record_results(
        self, results: Sequence[tuple[ImageJob, ImageResult, ImageMove]]
    ) -> list[int]:
        stamp = now_iso()
        changed: list[int] = []
        requests = sorted({job.request_id for job, _, _ in results})
        async with self._connections.connection() as conn, conn.transaction():
            # Lock the requests' rows first, in one order, as cancel and retry do (their
            # UPDATE of the request comes before their images'): taking images first here
            # deadlocked with a cancel of the same request.
            await conn.execute(
                "SELECT 1 FROM requests WHERE request_id = ANY(%s) ORDER BY request_id FOR UPDATE",
                (requests,),
            )
            for job, result, move in results:
                case, case_params, sources = _move(move)
                cur = await conn.execute(
                    f"UPDATE images SET status = {case}, "
                    "output_url = %s, error = %s, error_code = %s, bytes_in = %s, "
                    "bytes_out = %s, attempts = attempts + 1, updated_at = %s "
                    "WHERE (id = %s OR source_id = %s) AND status = ANY(%s)",
                    (
                        *case_params,
                        result.output_url,
                        result.error,
                        result.error_code,
                        result.bytes_in,
                        result.bytes_out,
                        stamp,
                        job.id,
                        job.id,
                        sources,
                    ),
                )
                count = cur.rowcount
                if count:  # 0: cancelled, deleted, or already recorded by an earlier attempt
                    ok = result.status is ImageStatus.SUCCEEDED
                    await conn.execute(
                        "UPDATE requests SET images_succeeded = images_succeeded + %s, "
                        "images_failed = images_failed + %s, bytes_in = bytes_in + %s, "
                        "bytes_out = bytes_out + %s, updated_at = %s WHERE request_id = %s",
                        (
                            count if ok else 0,
                            0 if ok else count,
                            result.bytes_in if ok else 0,
                            result.bytes_out if ok else 0,
                            stamp,
                            job.request_id,
                        ),
                    )
                changed.append(count)
        return changed

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
        await self._execute(
            "INSERT INTO deliveries (id, request_id, event_type, url, payload, state, "
            "next_attempt_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (request_id) DO NOTHING",
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
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE request_id = %s "
            "ORDER BY seq DESC LIMIT 1",
            (request_id,),
        )
        return delivery_of(row) if row else None

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        state: DeliveryState,
        next_attempt_at: float | None,
        last_status: int | None,
        last_error: str | None,
    ) -> None:
        await self._execute(
            "UPDATE deliveries SET state = %s, attempts = attempts + 1, next_attempt_at = %s, "
            "last_status = %s, last_error = %s, updated_at = %s WHERE id = %s",
            (state, next_attempt_at, last_status, last_error, now_iso(), delivery_id),
        )

    async def next_pending_deliveries(self, exclude: Collection[str], limit: int) -> DueDeliveries:
        """The due deliveries, each leased to this caller; then when the next one is due.

        Leasing (pushing next_attempt_at DELIVERY_LEASE seconds ahead, under FOR UPDATE
        SKIP LOCKED) is what makes a delivery go to one process's sender, not to all. The
        next one is only a time to wait for: started once its time had come, without a
        lease, it went to two senders at once (seen in a test, 1 run in ~10).
        """
        now = time.time()
        rows = await self._rows(
            "WITH due AS (SELECT id, next_attempt_at FROM deliveries "
            "WHERE state = %s AND next_attempt_at <= %s AND NOT (id = ANY(%s)) "
            "ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE deliveries d SET next_attempt_at = %s FROM due WHERE d.id = due.id "
            "RETURNING d.id, due.next_attempt_at",
            (DeliveryState.PENDING, now, list(exclude), limit, now + DELIVERY_LEASE),
        )
        leased = [r["id"] for r in sorted(rows, key=lambda r: float(r["next_attempt_at"]))]
        upcoming = await self._row(
            "SELECT min(next_attempt_at) AS at FROM deliveries WHERE state = %s "
            "AND next_attempt_at > %s AND NOT (id = ANY(%s))",
            (DeliveryState.PENDING, now, [*exclude, *leased]),
        )
        at = None if upcoming is None or upcoming["at"] is None else float(upcoming["at"])
        return DueDeliveries(due=leased, next_at=at)

    async def requeue_delivery(self, delivery_id: str, next_attempt_at: float) -> None:
        await self._execute(
            "UPDATE deliveries SET state = %s, attempts = 0, next_attempt_at = %s, "
            "last_status = NULL, last_error = NULL, updated_at = %s WHERE id = %s",
            (DeliveryState.PENDING, next_attempt_at, now_iso(), delivery_id),
        )

    async def finished_requests_without_delivery(self) -> list[str]:
        rows = await self._rows(
            "SELECT request_id FROM requests r WHERE status = ANY(%s) "
            "AND coalesce(webhook_url, '') <> '' "
            "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.request_id = r.request_id) "
            "ORDER BY id",
            (list(FINISHED_STATUSES),),
        )
        return [row["request_id"] for row in rows]

    # --- retention --------------------------------------------------------------

    async def finished_before(self, cutoff: str, limit: int) -> list[str]:
        rows = await self._rows(
            "SELECT request_id FROM requests WHERE status = ANY(%s) AND updated_at < %s "
            "ORDER BY updated_at LIMIT %s",
            (list(FINISHED_STATUSES), cutoff, limit),
        )
        return [row["request_id"] for row in rows]

    async def request_files(self, request_id: str) -> list[str]:
        row = await self._row(
            "SELECT input_path, output_file_path FROM requests WHERE request_id = %s",
            (request_id,),
        )
        if row is None:
            return []
        return [path for path in (row["input_path"], row["output_file_path"]) if path]

    async def delete_request(self, request_id: str) -> None:
        """Remove a request's rows: images in chunks (the workers keep writing), then the rest.

        Each chunk locks the request's row first, the order every writer of images keeps.
        """
        while True:
            async with self._connections.connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM requests WHERE request_id = %s FOR UPDATE", (request_id,)
                )
                cur = await conn.execute(
                    "DELETE FROM images WHERE id IN "
                    "(SELECT id FROM images WHERE request_id = %s LIMIT %s)",
                    (request_id, DELETE_CHUNK),
                )
            if cur.rowcount < DELETE_CHUNK:
                break
        async with self._connections.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM deliveries WHERE request_id = %s", (request_id,))
            await conn.execute("DELETE FROM requests WHERE request_id = %s", (request_id,))

    # --- the queue's upkeep (distributed mode only) --------------------------------

    async def unfinished_without_jobs(self, queue: str, older_than: float) -> list[str]:
        """Unfinished requests unchanged for `older_than` seconds with no job waiting or
        running in procrastinate's `queue` (their images would otherwise wait forever)."""
        cutoff = iso_from_unix(time.time() - older_than)
        rows = await self._rows(
            "SELECT r.request_id FROM requests r WHERE r.status = ANY(%s) AND r.updated_at < %s "
            "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.queue_name = %s "
            "AND j.status IN ('todo', 'doing') AND j.args->>'request_id' = r.request_id) "
            "ORDER BY r.id",
            (list(UNFINISHED_STATUSES), cutoff, queue),
        )
        return [row["request_id"] for row in rows]

    # --- figures for /metrics ------------------------------------------------------

    async def requests_by_status(self) -> dict[RequestStatus, int]:
        counts = dict.fromkeys(RequestStatus, 0)
        for row in await self._rows("SELECT status, count(*) AS n FROM requests GROUP BY status"):
            counts[RequestStatus(row["status"])] = int(row["n"])
        return counts

    async def queued_images(self) -> int:
        row = await self._row(
            "SELECT coalesce(sum(images_total - images_succeeded - images_failed - "
            "images_skipped), 0) AS n FROM requests WHERE status = ANY(%s)",
            (list(UNFINISHED_STATUSES),),
        )
        return int(row["n"]) if row else 0


class PostgresRequestWriter:
    """A request and its images in one transaction, as the rows are read (in a thread).

    Images go in with COPY, in input order, so their ids (one sequence) are input
    order; leaving the `with` block without `finish` rolls everything back.
    """

    def __init__(self, url: str, request_id: str) -> None:
        self._url = url
        self._request_id = request_id
        self._conn: psycopg.Connection[DictRow] | None = None
        self._copy: Any = None
        self._copy_cm: Any = None
        self._committed = False
        self.images = 0

    def __enter__(self) -> PostgresRequestWriter:
        conn = psycopg.connect(self._url, row_factory=dict_row)
        try:
            cur = conn.cursor()
            self._copy_cm = cur.copy("COPY images (request_id, row, position, url) FROM STDIN")
            self._copy = self._copy_cm.__enter__()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self._committed:
                if self._copy_cm is not None:
                    # Abort the COPY first: the server then drops every row it took.
                    abandoned = RuntimeError("the upload was refused")
                    with contextlib.suppress(psycopg.Error):
                        self._copy_cm.__exit__(RuntimeError, abandoned, None)
                conn.rollback()
        finally:
            conn.close()

    def add(self, row: int, urls: Sequence[str]) -> None:
        for position, url in enumerate(urls):
            self._copy.write_row((self._request_id, row, position, url))
            self.images += 1

    def finish(
        self,
        *,
        input_path: str,
        webhook_url: str | None,
        rows: int,
        file_name: str | None = None,
    ) -> int:
        """Link the repeats, store the request, commit; returns the image count."""
        if self._conn is None:
            raise RuntimeError("use the request writer in a with block")
        conn = self._conn
        copy_cm, self._copy_cm = self._copy_cm, None
        copy_cm.__exit__(None, None, None)
        conn.execute(
            "WITH firsts AS ("
            "  SELECT url, min(id) AS first_id FROM images WHERE request_id = %s"
            "  GROUP BY url HAVING count(*) > 1"
            ") UPDATE images SET source_id = firsts.first_id FROM firsts"
            " WHERE images.request_id = %s AND images.url = firsts.url"
            " AND images.id <> firsts.first_id",
            (self._request_id, self._request_id),
        )
        stamp = now_iso()
        conn.execute(
            "INSERT INTO requests (request_id, status, webhook_url, input_path, rows, "
            "images_total, created_at, updated_at, file_name) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                self._request_id,
                RequestStatus.PENDING,  # lifecycle.INITIAL
                webhook_url,
                input_path,
                rows,
                self.images,
                stamp,
                stamp,
                file_name,
            ),
        )
        conn.commit()
        self._committed = True
        return self.images
