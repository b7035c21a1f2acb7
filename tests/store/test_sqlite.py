"""Database: schema versions migrated at start, and queries under real concurrency."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from csvcompress.store import sqlite as db
from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin

DONE = "d" * 32
WAITING = "e" * 32
CREATED = "2026-01-02T03:04:05.678Z"
FINISHED = "2026-01-02T03:05:00.000Z"
UPLOADS = 20


def _v1_database(data_dir: Path, origin: Origin) -> dict[str, bytes]:
    """A database exactly as schema version 1 left it: one request done, one waiting."""
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
    conn.executescript(f"BEGIN;\n{db.MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    insert_request = (
        "INSERT INTO requests (requestId, status, webhookUrl, outputFilePath, input_path, rows, "
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


async def test_a_version_1_database_is_migrated_with_its_requests_intact(
    tmp_path: Path, create_service: ServiceFactory, origin: Origin
) -> None:
    data_dir = tmp_path / "data"
    files = _v1_database(data_dir, origin)

    # Retention off: these requests finished long ago.
    service = await create_service(retention={"days": 0})

    with sqlite3.connect(data_dir / "csvcompress.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(db.MIGRATIONS),)
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "requests_by_status_updated" in indexes
    # The finished request reads as before, output CSV and image included.
    doc = await service.status(DONE)
    assert doc["status"] == "complete"
    assert doc["created_at"] == CREATED and doc["updated_at"] == FINISHED
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
    conn = db.connect_sync(path)
    try:
        assert db.migrate_sync(conn) == len(db.MIGRATIONS)
        assert db.migrate_sync(conn) == len(db.MIGRATIONS)  # a second start changes nothing
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
