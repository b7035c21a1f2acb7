"""Stopping `csvcompress serve` with signals: in-flight images finish, nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import images
from tests.conftest import Origin, csv_bytes
from tests.procs import ServiceProcess

IMAGES = 12


class Gate:
    """Origin paths whose responses wait until the test opens the gate."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.event = asyncio.Event()
        self.data = {n: images.photo_jpeg(48, 32, seed=n) for n in range(IMAGES)}

    def url(self, n: int) -> str:
        async def held(request: web.Request) -> web.Response:
            await self.event.wait()
            return web.Response(body=self.data[n], content_type="image/jpeg")

        return self.origin.route(f"{n}.jpg", held)

    @property
    def hits(self) -> int:
        return sum(self.origin.hits.values())


@pytest.fixture
async def gate(origin: Origin) -> AsyncIterator[Gate]:
    held = Gate(origin)
    yield held
    # Let every waiting origin handler end, so the origin can stop.
    held.event.set()


async def _until(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _image_states(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())


async def _upload_two_in_flight(service: ServiceProcess, gate: Gate) -> str:
    """Upload IMAGES held images; return the request id once two downloads are on the wire."""
    rows = [[str(n + 1), f"Item {n}", gate.url(n)] for n in range(IMAGES)]
    request_id = await service.submit(csv_bytes(rows))

    async def two_in_flight() -> bool:
        return gate.hits == 2

    await _until(two_in_flight, "two downloads in flight")
    return request_id


async def _until_complete(service: ServiceProcess, request_id: str) -> dict[str, Any]:
    """The request's status once it is complete (after a restart)."""
    async with aiohttp.ClientSession() as client:

        async def complete() -> bool:
            async with client.get(f"{service.url}/status/{request_id}") as resp:
                return bool((await resp.json())["status"] == "complete")

        await _until(complete, "the request to complete after the restart", timeout=30)
        async with client.get(f"{service.url}/status/{request_id}") as resp:
            doc: dict[str, Any] = await resp.json()
            return doc


async def test_sigterm_lets_in_flight_images_finish_and_the_next_start_completes(
    tmp_path: Path, gate: Gate
) -> None:
    # fetch.concurrency 2 + 1 thread = 3 workers; two images on the wire when SIGTERM comes.
    service = ServiceProcess(tmp_path, workers={"threads": 1, "shutdown_grace": 30.0})
    await service.start()
    try:
        async with aiohttp.ClientSession() as client:
            request_id = await _upload_two_in_flight(service, gate)
            service.send(signal.SIGTERM)

            async def stopping() -> bool:
                async with client.get(f"{service.url}/healthz") as resp:
                    return resp.status == 503 and (await resp.json())["status"] == "stopping"

            await _until(stopping, "/healthz to say stopping")
            form = aiohttp.FormData()
            form.add_field("file", csv_bytes([["1", "Late", gate.url(0)]]), filename="late.csv")
            async with client.post(f"{service.url}/upload", data=form) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "30"
                assert await resp.json() == {
                    "error": "the service is shutting down; try again shortly"
                }
            async with client.get(f"{service.url}/status/{request_id}") as resp:
                assert resp.status == 200

            opened = time.monotonic()
            gate.event.set()
            assert await service.exit_code(timeout=15) == 0
            assert time.monotonic() - opened < 10
    finally:
        service.kill()

    # The images in flight were finished and recorded; the rest wait in SQLite.
    states = _image_states(service.db_path)
    assert states["succeeded"] >= 2
    assert states["succeeded"] == gate.hits
    assert states["pending"] == IMAGES - states["succeeded"]
    assert "stopping once the images in flight are done" in service.log()
    hits_before = dict(gate.origin.hits)

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
        assert gate.origin.hits[path] == count == 1, path
    assert gate.hits == IMAGES


async def test_when_the_grace_is_over_in_flight_images_stay_pending(
    tmp_path: Path, gate: Gate
) -> None:
    service = ServiceProcess(tmp_path, workers={"threads": 1, "shutdown_grace": 1.0})
    await service.start()
    try:
        request_id = await _upload_two_in_flight(service, gate)
        signalled = time.monotonic()
        service.send(signal.SIGTERM)
        assert await service.exit_code(timeout=20) == 0
        took = time.monotonic() - signalled
    finally:
        service.kill()
    assert 1.0 <= took < 8.0
    assert _image_states(service.db_path) == {"pending": IMAGES}
    with sqlite3.connect(service.db_path) as conn:
        status = conn.execute(
            "SELECT status FROM requests WHERE request_id = ?", (request_id,)
        ).fetchone()
    assert status == ("processing",)
    # Three workers: two downloads on the wire, one waiting for a connection.
    assert "3 image(s) in flight stay pending for the next start" in service.log()


async def test_a_second_signal_exits_at_once_losing_nothing(tmp_path: Path, gate: Gate) -> None:
    service = ServiceProcess(tmp_path, workers={"threads": 1, "shutdown_grace": 60.0})
    await service.start()
    try:
        async with aiohttp.ClientSession() as client:
            request_id = await _upload_two_in_flight(service, gate)
            service.send(signal.SIGINT)

            async def stopping() -> bool:
                async with client.get(f"{service.url}/healthz") as resp:
                    return resp.status == 503

            await _until(stopping, "/healthz to say stopping")
            signalled = time.monotonic()
            service.send(signal.SIGINT)
            assert await service.exit_code(timeout=10) == 128 + signal.SIGINT
            assert time.monotonic() - signalled < 3
    finally:
        service.kill()
    assert _image_states(service.db_path) == {"pending": IMAGES}
    assert "SIGINT again: stopping now" in service.log()

    # The next start picks the request up as if nothing happened.
    gate.event.set()
    await service.start()
    try:
        await _until_complete(service, request_id)
    finally:
        service.kill()
