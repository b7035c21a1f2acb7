"""Retention: old finished requests go with their files and rows; newer ones stay."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from csvcompress.clock import iso_days_before
from csvcompress.http.keys import SERVICE
from tests import images
from tests.conftest import HookReceiver, Origin, Service, ServiceFactory, csv_bytes


def _count(db_path: str, table: str, column: str, request_id: str) -> int:
    with sqlite3.connect(db_path) as conn:
        found = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", (request_id,))
        return int(found.fetchone()[0])


def _age(db_path: str, request_id: str, days: int) -> None:
    """Make a request look as if it finished `days` days ago."""
    stamp = iso_days_before(datetime.now(UTC), days)
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.execute(
            "UPDATE requests SET created_at = ?, updated_at = ? WHERE request_id = ?",
            (stamp, stamp, request_id),
        )


def _files(service: Service, request_id: str) -> list[Path]:
    data_dir = Path(service.settings.database.path).parent
    return [
        Path(service.settings.storage.dir) / request_id,
        data_dir / "outputs" / f"{request_id}.csv",
        data_dir / "uploads" / f"{request_id}.csv",
    ]


async def _run_job(service: Service, origin: Origin, name: str, webhook: str | None = None) -> str:
    url = origin.add(f"{name}.jpg", images.photo_jpeg(40, 30))
    request_id = await service.submit(csv_bytes([["1", name, url]]), webhook_url=webhook)
    await service.wait(request_id)
    return request_id


async def test_old_finished_requests_are_removed_with_their_files_and_rows(
    create_service: ServiceFactory, origin: Origin, hook_receiver: HookReceiver
) -> None:
    service = await create_service(retention={"days": 30, "interval": 0.1})
    db_path = service.settings.database.path
    old = await _run_job(service, origin, "old", hook_receiver.url)
    recent = await _run_job(service, origin, "recent", hook_receiver.url)
    await hook_receiver.wait_for(2)
    assert all(path.exists() for path in _files(service, old) + _files(service, recent))
    assert _count(db_path, "deliveries", "request_id", old) == 1

    _age(db_path, old, days=31)
    _age(db_path, recent, days=29)

    deadline = time.monotonic() + 15
    while _count(db_path, "requests", "request_id", old):
        assert time.monotonic() < deadline, "the old request was not removed"
        await asyncio.sleep(0.05)

    assert [path.exists() for path in _files(service, old)] == [False, False, False]
    assert _count(db_path, "images", "request_id", old) == 0
    assert _count(db_path, "deliveries", "request_id", old) == 0
    async with service.client.get(f"{service.url}/status/{old}") as resp:
        assert resp.status == 404
    # The newer request is untouched, its output still downloadable.
    assert all(path.exists() for path in _files(service, recent))
    assert _count(db_path, "images", "request_id", recent) == 1
    doc = await service.status(recent)
    assert doc["status"] == "complete"
    assert len(await service.output_rows(doc)) == 1


async def test_unfinished_requests_are_never_removed(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service(retention={"days": 1, "interval": 3600})
    db_path = service.settings.database.path
    done = await _run_job(service, origin, "done")
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(status=404)

    running = await service.submit(csv_bytes([["1", "R", origin.route("held.jpg", held)]]))
    deadline = time.monotonic() + 10
    while not origin.hits["held.jpg"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    _age(db_path, done, days=2)
    _age(db_path, running, days=2)

    retention = service.runner.app[SERVICE].retention
    try:
        assert await retention.sweep(datetime.now(UTC)) == 1
        assert (await service.status(running))["status"] == "processing"
    finally:
        gate.set()

    assert _count(db_path, "requests", "request_id", done) == 0
    assert _count(db_path, "requests", "request_id", running) == 1


async def test_days_zero_keeps_everything(create_service: ServiceFactory, origin: Origin) -> None:
    service = await create_service(retention={"days": 0})
    db_path = service.settings.database.path
    request_id = await _run_job(service, origin, "kept")
    _age(db_path, request_id, days=3650)

    retention = service.runner.app[SERVICE].retention
    assert await retention.sweep(datetime.now(UTC) + timedelta(days=3650)) == 0
    assert _count(db_path, "requests", "request_id", request_id) == 1
    assert all(path.exists() for path in _files(service, request_id))
