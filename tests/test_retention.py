"""Retention: old finished requests go with their files and rows; newer ones stay."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from csvcompress.clock import iso_days_before
from csvcompress.http.keys import SERVICE
from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin, Receiver
from tests.waiting import poll


def _age(db_path: str, request_id: str, days: int) -> None:
    """Make a request look as if it finished `days` days ago."""
    stamp = iso_days_before(datetime.now(UTC), days)
    with sqlite3.connect(db_path, timeout=30) as conn:
        conn.execute(
            "UPDATE requests SET created_at = ?, updated_at = ? WHERE request_id = ?",
            (stamp, stamp, request_id),
        )


async def _run_job(service: Service, origin: Origin, name: str, webhook: str | None = None) -> str:
    url = origin.add(f"{name}.jpg", images.photo_jpeg(40, 30))
    request_id = await service.submit(csv_bytes([["1", name, url]]), webhook_url=webhook)
    await service.wait(request_id)
    return request_id


async def test_old_finished_requests_are_removed_with_their_files_and_rows(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service(retention={"days": 30, "interval": 0.1})
    db_path = service.settings.database.path
    old = await _run_job(service, origin, "old", receiver.url)
    recent = await _run_job(service, origin, "recent", receiver.url)
    await receiver.wait_for(2)
    assert all(path.exists() for path in service.files(old) + service.files(recent))
    assert service.rows(old)["deliveries"] == 1

    _age(db_path, old, days=31)
    _age(db_path, recent, days=29)

    await poll(
        lambda: service.rows(old)["requests"] == 0, what="the sweep to remove the old request"
    )

    assert [path.exists() for path in service.files(old)] == [False, False, False]
    assert service.rows(old) == {"requests": 0, "images": 0, "deliveries": 0}
    async with service.client.get(f"{service.url}/status/{old}") as resp:
        assert resp.status == 404
    # The newer request is untouched, its output still downloadable.
    assert all(path.exists() for path in service.files(recent))
    assert service.rows(recent) == {"requests": 1, "images": 1, "deliveries": 1}
    doc = await service.status(recent)
    assert doc["status"] == "complete"
    assert len(await service.output_rows(doc)) == 1


async def test_unfinished_requests_are_never_removed(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service(retention={"days": 1, "interval": 3600})
    db_path = service.settings.database.path
    done = await _run_job(service, origin, "done")
    held = origin.add("held.jpg", status=404, held=True)
    running = await service.submit(csv_bytes([["1", "R", held]]))
    await origin.wait_for_hits(1, "held.jpg")
    _age(db_path, done, days=2)
    _age(db_path, running, days=2)

    retention = service.runner.app[SERVICE].retention
    try:
        assert await retention.sweep(datetime.now(UTC)) == 1
        assert (await service.status(running))["status"] == "processing"
    finally:
        origin.release()

    assert service.rows(done)["requests"] == 0
    assert service.rows(running)["requests"] == 1


async def test_days_zero_keeps_everything(create_service: ServiceFactory, origin: Origin) -> None:
    service = await create_service(retention={"days": 0})
    db_path = service.settings.database.path
    request_id = await _run_job(service, origin, "kept")
    _age(db_path, request_id, days=3650)

    retention = service.runner.app[SERVICE].retention
    assert await retention.sweep(datetime.now(UTC) + timedelta(days=3650)) == 0
    assert service.rows(request_id)["requests"] == 1
    assert all(path.exists() for path in service.files(request_id))


async def test_partial_uploads_left_by_a_kill_are_removed_at_start_and_by_the_sweep(
    create_service: ServiceFactory, tmp_path: Path
) -> None:
    # What a kill during an upload leaves behind, found by the next start.
    uploads = tmp_path / "data" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "left-by-a-kill.csv.part").write_bytes(b"1,Shirt,http://x/a.jpg\r\n" * 1000)
    (uploads / "kept.csv").write_bytes(b"an accepted upload stays")
    service = await create_service(
        retention={"days": 0, "interval": 0.1}, limits={"upload_timeout": 60.0}
    )
    assert service.settings.uploads_dir == uploads
    assert sorted(p.name for p in uploads.iterdir()) == ["kept.csv"]

    # While it runs: one abandoned longer ago than an upload may take, one in progress.
    abandoned = uploads / "abandoned.csv.part"
    abandoned.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(abandoned, (an_hour_ago, an_hour_ago))
    arriving = uploads / "arriving.csv.part"
    arriving.write_bytes(b"x")

    await poll(lambda: not abandoned.exists(), what="the sweep to remove the abandoned file")
    assert arriving.exists()
