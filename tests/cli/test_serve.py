"""Stopping `csvcompress serve` with signals: in-flight images finish, nothing is lost."""

from __future__ import annotations

import csv
import io
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pyvips

from tests import images
from tests.conftest import csv_bytes
from tests.procs import ServiceProcess
from tests.servers import Origin
from tests.waiting import poll

IMAGES = 12


def _image_states(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())


def _held_image(origin: Origin, n: int) -> str:
    """An image the origin answers for only once the test releases it."""
    return origin.add(f"{n}.jpg", images.photo_jpeg(48, 32, seed=n), held=True)


async def _upload_two_in_flight(service: ServiceProcess, origin: Origin) -> str:
    """Upload IMAGES held images; return the request id once two downloads are on the wire."""
    rows = [[str(n + 1), f"Item {n}", _held_image(origin, n)] for n in range(IMAGES)]
    request_id = await service.submit(csv_bytes(rows))
    await origin.wait_for_hits(2)
    # Two connections (fetch.concurrency), both held: a third download cannot start.
    assert origin.hits.total() == 2
    return request_id


async def _until_complete(service: ServiceProcess, request_id: str) -> dict[str, Any]:
    """The request's status once it is complete (after a restart)."""
    return await service.wait_until(
        request_id,
        lambda doc: doc["status"] == "complete",
        "the request to complete after the restart",
        timeout=30,
    )


async def _signal_until_stopping(service: ServiceProcess, signum: signal.Signals) -> None:
    """Send `signum`; return once /healthz answers that the service is stopping."""
    service.send(signum)
    async with aiohttp.ClientSession() as client:

        async def healthz() -> tuple[int, Any]:
            async with client.get(f"{service.url}/healthz") as resp:
                return resp.status, await resp.json()

        await poll(
            healthz,
            until=lambda got: got[0] == 503 and got[1]["status"] == "stopping",
            what="/healthz to say stopping",
        )


async def test_sigterm_lets_in_flight_images_finish_and_the_next_start_completes(
    tmp_path: Path, origin: Origin
) -> None:
    # fetch.concurrency 2 + 1 thread = 3 workers; two images on the wire when SIGTERM comes.
    service = ServiceProcess(tmp_path, workers={"threads": 1, "shutdown_grace": 30.0})
    await service.start()
    try:
        async with aiohttp.ClientSession() as client:
            request_id = await _upload_two_in_flight(service, origin)
            await _signal_until_stopping(service, signal.SIGTERM)
            form = aiohttp.FormData()
            late = csv_bytes([["1", "Late", f"{origin.url}/0.jpg"]])
            form.add_field("file", late, filename="late.csv")
            async with client.post(f"{service.url}/upload", data=form) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "30"
                assert await resp.json() == {
                    "error": "the service is shutting down; try again shortly"
                }
            async with client.get(f"{service.url}/status/{request_id}") as resp:
                assert resp.status == 200

            origin.release()
            # Once those two are done, not after the 30 s grace.
            assert await service.exit_code(timeout=15) == 0
    finally:
        service.kill()

    # The images in flight were finished and recorded; the rest wait in SQLite.
    states = _image_states(service.db_path)
    assert states["succeeded"] >= 2
    assert states["succeeded"] == origin.hits.total()
    assert states["pending"] == IMAGES - states["succeeded"]
    assert "stopping once the images in flight are done" in service.log()
    hits_before = dict(origin.hits)

    await service.start()
    try:
        doc = await _until_complete(service, request_id)
        service.send(signal.SIGTERM)
        assert await service.exit_code(timeout=15) == 0
    finally:
        service.kill()
    assert doc["images"] == {"total": IMAGES, "succeeded": IMAGES, "failed": 0, "pending": 0}
    # Nothing finished before the stop was fetched again.
    for path, count in hits_before.items():
        assert origin.hits[path] == count == 1, path
    assert origin.hits.total() == IMAGES


async def test_when_the_grace_is_over_in_flight_images_stay_pending(
    tmp_path: Path, origin: Origin
) -> None:
    service = ServiceProcess(tmp_path, workers={"threads": 1, "shutdown_grace": 1.0})
    await service.start()
    try:
        request_id = await _upload_two_in_flight(service, origin)
        signalled = time.monotonic()
        service.send(signal.SIGTERM)
        assert await service.exit_code(timeout=20) == 0
        took = time.monotonic() - signalled
    finally:
        service.kill()
    assert took >= 1.0  # it gave the images in flight their grace (exit_code's timeout caps it)
    assert _image_states(service.db_path) == {"pending": IMAGES}
    with sqlite3.connect(service.db_path) as conn:
        status = conn.execute(
            "SELECT status FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
    assert status == ("processing",)
    # Three workers: two downloads on the wire, one waiting for a connection.
    assert "3 image(s) in flight stay pending for the next start" in service.log()


async def test_a_second_signal_exits_at_once_losing_nothing(tmp_path: Path, origin: Origin) -> None:
    service = ServiceProcess(tmp_path, workers={"threads": 1, "shutdown_grace": 60.0})
    await service.start()
    try:
        request_id = await _upload_two_in_flight(service, origin)
        await _signal_until_stopping(service, signal.SIGINT)
        service.send(signal.SIGINT)
        # At once: well inside the 60 s grace the first signal started.
        assert await service.exit_code(timeout=10) == 128 + signal.SIGINT
    finally:
        service.kill()
    assert _image_states(service.db_path) == {"pending": IMAGES}
    assert "SIGINT again: stopping now" in service.log()

    # The next start picks the request up as if nothing happened.
    origin.release()
    await service.start()
    try:
        await _until_complete(service, request_id)
    finally:
        service.kill()


async def test_port_0_serves_on_the_port_the_os_chose_and_its_links_use_it(
    tmp_path: Path, origin: Origin
) -> None:
    service = ServiceProcess(tmp_path)  # [server] port = 0
    await service.start()
    try:
        assert service.port != 0
        assert f"csvcompress serving on http://127.0.0.1:{service.port} (" in service.log()
        url = origin.add("a.jpg", images.photo_jpeg(48, 32, seed=1))
        request_id = await service.submit(csv_bytes([["1", "A", url]]))
        doc = await service.wait_until(
            request_id, lambda doc: doc["status"] == "complete", "the request to complete"
        )
        rows = list(csv.DictReader(io.StringIO(await service.output_csv(doc))))
        link = rows[0]["Output Image Urls"]
        assert link == f"{service.url}/files/{request_id}/1-1.jpg"
        async with aiohttp.ClientSession() as client, client.get(link) as resp:
            assert resp.status == 200
            stored = pyvips.Image.new_from_buffer(await resp.read(), "")
        assert (stored.width, stored.height, stored.get("vips-loader")) == (
            48,
            32,
            "jpegload_buffer",
        )
    finally:
        await service.stop(timeout=15)
