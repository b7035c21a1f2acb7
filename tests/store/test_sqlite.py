"""The SQLite store: schema versions migrated at start, every query, real concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from csvcompress.errors import Conflict
from csvcompress.jobs import lifecycle
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.models import (
    DeliveryState,
    DueDeliveries,
    ImageCounts,
    ImageJob,
    ImageResult,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)
from csvcompress.store import StoreUnavailable
from csvcompress.store import sqlite as db
from csvcompress.store.sqlite import SqliteStore
from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin

DONE = "d" * 32
WAITING = "e" * 32
CREATED = "2026-01-02T03:04:05.678Z"
FINISHED = "2026-01-02T03:05:00.000Z"
UPLOADS = 20


def _old_database(data_dir: Path, origin: Origin, version: int) -> dict[str, bytes]:
    """A database exactly as schema `version` left it: one request done, one waiting."""
    uploads, outputs, storage = data_dir / "uploads", data_dir / "outputs", data_dir / "storage"
    for folder in (uploads, outputs, storage / DONE):
        folder.mkdir(parents=True)
    stored = images.photo_jpeg(40, 30)
    (storage / DONE / "1-1.jpg").write_bytes(stored)
    done_csv = csv_bytes([["1", "Shirt", f"{origin.url}/shirt.jpg, {origin.url}/gone.jpg"]])
    (uploads / f"{DONE}.csv").write_bytes(done_csv)
    output = (
        b"S. No.,Product Name,Input Image Urls,Output Image Urls,Errors\r\n"
        b'1,Shirt,"http://o/shirt.jpg, http://o/gone.jpg","http://old/files/'
        + DONE.encode()
        + b'/1-1.jpg, ",#2: HTTP 404 from origin\r\n'
    )
    (outputs / f"{DONE}.csv").write_bytes(output)
    waiting_urls = [origin.add(f"w{n}.jpg", images.photo_jpeg(30, 20, seed=n)) for n in range(3)]
    (uploads / f"{WAITING}.csv").write_bytes(
        csv_bytes([["1", "Hat", ", ".join(waiting_urls[:2])], ["2", "Cap", waiting_urls[2]]])
    )

    conn = sqlite3.connect(data_dir / "csvcompress.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    scripts = "\n".join(db.MIGRATIONS[:version])
    conn.executescript(f"BEGIN;\n{scripts}\nPRAGMA user_version = {version};\nCOMMIT;")
    # Version 3 renamed three columns.
    names = ("request_id, status, webhook_url, output_file_path" if version >= 3
             else "requestId, status, webhookUrl, outputFilePath")  # fmt: skip
    insert_request = (
        f"INSERT INTO requests ({names}, input_path, rows, "
        "images_total, images_succeeded, images_failed, bytes_in, bytes_out, created_at, "
        "updated_at) VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    conn.execute(
        insert_request,
        (DONE, "complete", str(outputs / f"{DONE}.csv"), str(uploads / f"{DONE}.csv"),
         1, 2, 1, 1, 9000, len(stored), CREATED, FINISHED),
    )  # fmt: skip
    conn.execute(
        insert_request,
        (WAITING, "processing", None, str(uploads / f"{WAITING}.csv"),
         2, 3, 0, 0, 0, 0, CREATED, CREATED),
    )  # fmt: skip
    insert_image = (
        "INSERT INTO images (id, request_id, row, position, url, status, output_url, error, "
        "error_code, bytes_in, bytes_out, attempts, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    conn.executemany(
        insert_image,
        [
            (1, DONE, 0, 0, f"{origin.url}/shirt.jpg", "succeeded",
             f"http://old/files/{DONE}/1-1.jpg", None, None, 9000, len(stored), 1, FINISHED),
            (2, DONE, 0, 1, f"{origin.url}/gone.jpg", "failed", None, "HTTP 404 from origin",
             "fetch", 0, 0, 1, FINISHED),
            (3, WAITING, 0, 0, waiting_urls[0], "pending", None, None, None, 0, 0, 0, None),
            (4, WAITING, 0, 1, waiting_urls[1], "pending", None, None, None, 0, 0, 0, None),
            (5, WAITING, 1, 0, waiting_urls[2], "pending", None, None, None, 0, 0, 0, None),
        ],
    )  # fmt: skip
    conn.close()
    return {"stored": stored, "output": output}


# 1: the first release; 2: the schema before column names were made consistent;
# 3: before the uploaded file name and the processing time were kept.
@pytest.mark.parametrize("version", [1, 2, 3])
async def test_an_old_database_is_migrated_with_its_requests_intact(
    tmp_path: Path, create_service: ServiceFactory, origin: Origin, version: int
) -> None:
    data_dir = tmp_path / "data"
    files = _old_database(data_dir, origin, version)

    # Retention off: these requests finished long ago.
    service = await create_service(retention={"days": 0})

    with sqlite3.connect(data_dir / "csvcompress.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(db.MIGRATIONS),)
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    assert "requests_by_status_updated" in indexes
    assert {"request_id", "webhook_url", "output_file_path", "file_name"} <= columns
    assert not {"requestId", "webhookUrl", "outputFilePath"} & columns
    # The finished request reads as before, output CSV and image included.
    doc = await service.status(DONE)
    assert doc["status"] == "complete"
    assert doc["created_at"] == CREATED and doc["updated_at"] == FINISHED
    # Not known for a request stored before they were kept.
    assert doc["file_name"] is None and doc["processing_seconds"] == 0
    assert doc["images"] == {"total": 2, "succeeded": 1, "failed": 1, "pending": 0}
    assert doc["bytes"] == {
        "input": 9000,
        "output": len(files["stored"]),
        "saved": 9000 - len(files["stored"]),
    }
    async with service.client.get(doc["output_csv_url"]) as resp:
        assert (resp.status, await resp.read()) == (200, files["output"])
    assert await service.get_bytes(f"{service.url}/files/{DONE}/1-1.jpg") == (
        files["stored"],
        "image/jpeg",
    )
    # The request that was in progress resumes and finishes.
    waiting = await service.wait(WAITING)
    assert waiting["images"] == {"total": 3, "succeeded": 3, "failed": 0, "pending": 0}
    rows = await service.output_rows(waiting)
    assert [row["Product Name"] for row in rows] == ["Hat", "Cap"]
    assert rows[0]["Output Image Urls"].endswith("/1-2.jpg")
    # And the old request takes the new features: its failed image is retried.
    origin.add("gone.jpg", images.photo_jpeg(20, 20))
    async with service.client.post(f"{service.url}/requests/{DONE}/retry") as resp:
        assert resp.status == 202
    retried = await service.wait(DONE)
    assert retried["images"] == {"total": 2, "succeeded": 2, "failed": 0, "pending": 0}


def test_migrations_run_once_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite3"
    conn = db.connect_blocking(path)
    try:
        assert db.migrate_blocking(conn) == len(db.MIGRATIONS)
        assert db.migrate_blocking(conn) == len(db.MIGRATIONS)  # a second start changes nothing
        columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
        assert "images_skipped" in columns
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "health" in tables and "requests_by_status" not in tables
    finally:
        conn.close()


async def test_uploads_while_status_is_read_all_finish(
    create_service: ServiceFactory, origin: Origin
) -> None:
    """Reads of the shared connection (the page polls /status) never hide a fresh upload."""
    service = await create_service()
    url = origin.add("a.jpg", images.photo_jpeg(16, 16))
    ids: list[str] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            for request_id in ids[-3:]:
                await service.status(request_id)
            async with service.client.get(f"{service.url}/requests?limit=5") as resp:
                await resp.read()

    pollers = [asyncio.create_task(poll()) for _ in range(3)]
    try:
        for n in range(UPLOADS):
            ids.append(await service.submit(csv_bytes([[str(n), "P", url]])))
        docs = [await service.wait(request_id, timeout=20) for request_id in ids]
    finally:
        stop.set()
        await asyncio.gather(*pollers)
    assert {doc["status"] for doc in docs} == {"complete"}


# --- the Store's methods, one real file each ----------------------------------------

DEFAULT_URLS = (("a", "b"), ("c", "a"))  # row 1 repeats row 0's first URL


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    yield store
    await store.close()


def add_request(
    store: SqliteStore,
    request_id: str,
    rows: Sequence[Sequence[str]] = DEFAULT_URLS,
    webhook_url: str | None = None,
) -> int:
    with store.request_writer(request_id) as writer:
        for n, urls in enumerate(rows):
            writer.add(n, [f"https://img.example/{u}.jpg" for u in urls])
        return writer.finish(
            input_path=f"{request_id}.csv", webhook_url=webhook_url, rows=len(rows)
        )


def ok(job: ImageJob) -> ImageResult:
    return ImageResult(output_url=f"https://out/{job.id}.jpg", error=None, bytes_in=50, bytes_out=5)


def failed(job: ImageJob) -> ImageResult:
    return ImageResult(output_url=None, error="HTTP 404 from origin", error_code="fetch")


async def test_a_new_request_reads_back_pending_with_its_images_in_order(
    store: SqliteStore,
) -> None:
    assert add_request(store, "r1", webhook_url="https://hooks.example/x") == 4

    found = await store.get_request_with_counts("r1")
    assert found is not None
    record, counts = found
    assert (record.status, record.webhook_url, record.rows) == (
        lifecycle.INITIAL,
        "https://hooks.example/x",
        2,
    )
    assert record.created_at.endswith("Z") and record.output_file_path is None
    assert (counts.total, counts.pending) == (4, 4)
    # The repeat of "a" is not work of its own: it takes the first occurrence's result.
    jobs = await store.pending_images("r1", 0, 10)
    assert [(j.row, j.position, j.url.rsplit("/", 1)[1]) for j in jobs] == [
        (0, 0, "a.jpg"),
        (0, 1, "b.jpg"),
        (1, 0, "c.jpg"),
    ]
    assert await store.pending_images("r1", jobs[0].id, 1) == [jobs[1]]
    page = await store.image_page("r1", 0, 10)
    assert [(i.row, i.position, i.status) for i in page] == [
        (0, 0, ImageStatus.PENDING),
        (0, 1, ImageStatus.PENDING),
        (1, 0, ImageStatus.PENDING),
        (1, 1, ImageStatus.PENDING),
    ]
    assert await store.get_request("nope") is None
    assert await store.get_counts("nope") == ImageCounts()


async def test_a_writer_left_without_finish_stores_nothing(store: SqliteStore) -> None:
    with store.request_writer("r1") as writer:
        writer.add(0, ["https://img.example/a.jpg"])
    assert await store.get_request("r1") is None
    assert await store.image_page("r1", 0, 10) == []


async def test_listing_is_newest_first_and_pages_by_cursor(store: SqliteStore) -> None:
    for n in range(5):
        add_request(store, f"r{n}")
    life = Lifecycle(store)
    assert await life.cancel("r3")
    assert await life.finish("r3", "out.csv")

    first = await store.list_requests(status=None, before=None, limit=2)
    assert [item.record.id for item in first] == ["r4", "r3"]
    rest = await store.list_requests(status=None, before=first[-1].cursor, limit=10)
    assert [item.record.id for item in rest] == ["r2", "r1", "r0"]
    cancelled = await store.list_requests(status=RequestStatus.CANCELLED, before=None, limit=10)
    assert [(item.record.id, item.counts.skipped) for item in cancelled] == [("r3", 4)]
    assert await store.unfinished_request_ids() == ["r0", "r1", "r2", "r4"]


async def test_results_count_for_repeats_and_only_once(store: SqliteStore) -> None:
    add_request(store, "r1")
    life = Lifecycle(store)
    a, b, c = await store.pending_images("r1", 0, 10)

    assert await life.record([(a, ok(a)), (b, failed(b))]) == [2, 1]
    # A second result for the same image (handed over twice) changes nothing.
    assert await life.record([(a, failed(a))]) == [0]

    counts = await store.get_counts("r1")
    assert (counts.succeeded, counts.failed, counts.pending) == (2, 1, 1)
    record = await store.get_request("r1")
    assert record is not None and (record.bytes_in, record.bytes_out) == (50, 5)
    page = await store.image_page("r1", 0, 10)
    assert [(i.status, i.output_url, i.error) for i in page] == [
        (ImageStatus.SUCCEEDED, f"https://out/{a.id}.jpg", None),
        (ImageStatus.FAILED, None, "HTTP 404 from origin"),
        (ImageStatus.PENDING, None, None),
        (ImageStatus.SUCCEEDED, f"https://out/{a.id}.jpg", None),
    ]
    assert [pending.id for pending in await store.pending_images("r1", 0, 10)] == [c.id]


async def test_cancel_skips_pending_images_and_only_applies_once(store: SqliteStore) -> None:
    add_request(store, "r1")
    life = Lifecycle(store)
    a, *_ = await store.pending_images("r1", 0, 10)
    assert await life.start("r1")
    await life.record([(a, ok(a))])

    assert await life.cancel("r1")
    assert not await life.cancel("r1")

    found = await store.get_request_with_counts("r1")
    assert found is not None
    assert found[0].status is RequestStatus.CANCELLING
    assert await store.unfinished_request_ids() == ["r1"]
    assert (found[1].succeeded, found[1].skipped, found[1].pending) == (2, 2, 0)
    skipped = [i for i in await store.image_page("r1", 0, 10) if i.status is ImageStatus.SKIPPED]
    assert {(i.error, i.error_code) for i in skipped} == {
        (lifecycle.SKIPPED_REASON, lifecycle.SKIPPED_CODE)
    }
    # A result arriving after the cancel is dropped.
    _, b, _ = (await store.image_page("r1", 0, 10))[:3]
    job = ImageJob(b.id, "r1", b.row, b.position, b.url, 0)
    assert await life.record([(job, ok(job))]) == [0]
    # Finishing a cancelling request writes its output and makes it cancelled.
    assert await life.finish("r1", "out.csv")
    record = await store.get_request("r1")
    assert record is not None and (record.status, record.output_file_path) == (
        RequestStatus.CANCELLED,
        "out.csv",
    )
    assert await store.unfinished_request_ids() == []


async def test_retry_puts_failed_and_skipped_images_back_and_drops_the_delivery(
    store: SqliteStore,
) -> None:
    add_request(store, "r1", webhook_url="https://hooks.example/x")
    life = Lifecycle(store)
    with pytest.raises(Conflict, match="r1 is pending; only a finished request can be retried"):
        await life.retry("r1")
    a, b, c = await store.pending_images("r1", 0, 10)
    await life.record([(a, ok(a)), (b, failed(b)), (c, failed(c))])
    assert await life.finish("r1", "out.csv")
    assert not await life.finish("r1", "again.csv")  # finished once only
    await store.add_delivery("msg_1", "r1", "request.completed", "https://hooks.example/x", "{}")

    assert await life.retry("r1") == 2

    found = await store.get_request_with_counts("r1")
    assert found is not None
    record, counts = found
    assert (record.status, record.output_file_path) == (RequestStatus.PENDING, None)
    assert (counts.succeeded, counts.failed, counts.pending) == (2, 0, 2)
    assert [j.id for j in await store.pending_images("r1", 0, 10)] == [b.id, c.id]
    assert await store.latest_delivery("r1") is None
    assert await store.finished_requests_without_delivery() == []


async def test_of_two_retries_at_once_the_second_hears_the_request_changed(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_request(store, "r1", rows=[["a"]])
    life = Lifecycle(store)
    (a,) = await store.pending_images("r1", 0, 10)
    await life.record([(a, failed(a))])
    assert await life.finish("r1", "out.csv")
    read = store.get_request_with_counts

    async def read_as_another_client_retries(
        request_id: str,
    ) -> tuple[RequestRecord, ImageCounts] | None:
        # Both clients see a finished request with a failed image; the other one is faster.
        found = await read(request_id)
        monkeypatch.setattr(store, "get_request_with_counts", read)
        assert await Lifecycle(store).retry(request_id) == 1
        return found

    monkeypatch.setattr(store, "get_request_with_counts", read_as_another_client_retries)
    with pytest.raises(Conflict) as info:
        await life.retry("r1")
    assert info.value.message == "request r1 changed meanwhile; look at its status and try again"


async def test_a_failed_finish_records_the_reason(store: SqliteStore) -> None:
    add_request(store, "r1", rows=[["a"]])
    life = Lifecycle(store)
    (a,) = await store.pending_images("r1", 0, 10)
    await life.record([(a, ok(a))])
    assert await life.fail("r1", "could not write the output CSV: disk full")
    record = await store.get_request("r1")
    assert record is not None
    assert (record.status, record.error) == (
        RequestStatus.FAILED,
        "could not write the output CSV: disk full",
    )


async def test_deliveries_are_queued_attempted_and_started_over(store: SqliteStore) -> None:
    add_request(store, "r1", webhook_url="https://hooks.example/x")
    add_request(store, "r2", webhook_url="https://hooks.example/y")
    life = Lifecycle(store)
    for request_id in ("r1", "r2"):
        for job in await store.pending_images(request_id, 0, 10):
            await life.record([(job, ok(job))])
        await life.finish(request_id, f"{request_id}-out.csv")
    assert await store.finished_requests_without_delivery() == ["r1", "r2"]

    await store.add_delivery(
        "msg_1", "r1", "request.completed", "https://h/x", '{"a": 1}', next_attempt_at=20.0
    )
    await store.add_delivery(
        "msg_2", "r2", "request.completed", "https://h/y", "{}", next_attempt_at=10.0
    )
    assert await store.finished_requests_without_delivery() == []
    assert await store.next_pending_deliveries([], 10) == DueDeliveries(["msg_2", "msg_1"], None)
    assert await store.next_pending_deliveries(["msg_2"], 10) == DueDeliveries(["msg_1"], None)
    assert await store.next_pending_deliveries([], 1) == DueDeliveries(["msg_2"], None)

    await store.record_attempt(
        "msg_1",
        state=DeliveryState.FAILED,
        next_attempt_at=None,
        last_status=500,
        last_error="HTTP 500",
    )
    found = await store.get_delivery("msg_1")
    assert found is not None
    delivery, payload = found
    assert (delivery.state, delivery.attempts, delivery.last_status, payload) == (
        DeliveryState.FAILED,
        1,
        500,
        '{"a": 1}',
    )
    await store.requeue_delivery("msg_1", 30.0)
    latest = await store.latest_delivery("r1")
    assert latest is not None
    assert (latest.state, latest.attempts, latest.last_status, latest.next_attempt_at) == (
        DeliveryState.PENDING,
        0,
        None,
        30.0,
    )
    assert await store.get_delivery("msg_none") is None


async def test_retention_finds_old_finished_requests_and_deletes_every_row(
    store: SqliteStore,
) -> None:
    add_request(store, "old")
    add_request(store, "running")
    life = Lifecycle(store)
    assert await life.cancel("old")
    assert await life.finish("old", "old-out.csv")
    await store.add_delivery("msg_1", "old", "request.cancelled", "https://h/x", "{}")

    assert await store.finished_before("9999-01-01T00:00:00.000Z", 10) == ["old"]
    assert await store.finished_before("2000-01-01T00:00:00.000Z", 10) == []
    assert await store.request_files("old") == ["old.csv", "old-out.csv"]
    assert await store.request_files("running") == ["running.csv"]

    await store.delete_request("old")
    assert await store.get_request("old") is None
    assert await store.image_page("old", 0, 10) == []
    assert await store.latest_delivery("old") is None
    assert await store.get_request("running") is not None


async def test_metrics_figures_cover_every_status(store: SqliteStore) -> None:
    add_request(store, "r1")
    add_request(store, "r2", rows=[["x"]])
    life = Lifecycle(store)
    assert await life.start("r2")
    assert await store.requests_by_status() == {
        RequestStatus.PENDING: 1,
        RequestStatus.PROCESSING: 1,
        RequestStatus.COMPLETE: 0,
        RequestStatus.FAILED: 0,
        RequestStatus.CANCELLING: 0,
        RequestStatus.CANCELLED: 0,
    }
    assert await store.queued_images() == 5
    assert await life.cancel("r1")
    assert await store.queued_images() == 1


async def test_output_rows_stream_in_input_order(store: SqliteStore) -> None:
    add_request(store, "r1")
    life = Lifecycle(store)
    a, b, c = await store.pending_images("r1", 0, 10)
    await life.record([(c, failed(c)), (a, ok(a)), (b, ok(b))])
    stored = store.request_input_blocking("r1")
    assert stored is not None and (stored.input_path, stored.rows, stored.images) == (
        "r1.csv",
        2,
        4,
    )
    outcomes = list(store.image_outcomes_blocking("r1"))
    assert [(o.row, o.position, o.output_url, o.error) for o in outcomes] == [
        (0, 0, f"https://out/{a.id}.jpg", None),
        (0, 1, f"https://out/{b.id}.jpg", None),
        (1, 0, None, "HTTP 404 from origin"),
        (1, 1, f"https://out/{a.id}.jpg", None),
    ]
    assert store.request_input_blocking("nope") is None


async def test_check_names_a_database_that_cannot_take_a_write(store: SqliteStore) -> None:
    await store.check(patience=1.0)
    # Another connection holding the write lock: the check gives up after its patience.
    with closing(sqlite3.connect(store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="not writable: database is locked"):
            await store.check(patience=0.2)
        other.execute("ROLLBACK")
    await store.check(patience=1.0)
