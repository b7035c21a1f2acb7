"""/healthz names what is broken; /metrics speaks Prometheus."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from csvcompress.http.ops import DATABASE_CHECK_TIMEOUT
from tests.conftest import ServiceFactory
from tests.procs import ServiceProcess

HEALTHY = {"status": "ok", "checks": {"database": "ok", "storage": "ok"}}


async def _health(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(f"{url}/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def test_healthy_service_answers_200(create_service: ServiceFactory) -> None:
    service = await create_service()
    status, body = await _health(service.client, service.url)
    assert (status, body) == (200, HEALTHY)


async def test_health_turns_503_when_the_database_file_is_made_read_only(
    tmp_path: Path,
) -> None:
    # Tests run as root, for whom chmod does not stop a write: the service runs as a
    # process that gave up root's override of file modes, so a read-only file is one.
    service = ServiceProcess(tmp_path)
    await service.start(drop_root_overrides=True)
    mode = service.db_path.stat().st_mode
    try:
        async with aiohttp.ClientSession() as client:
            assert await _health(client, service.url) == (200, HEALTHY)

            service.db_path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            status, body = await _health(client, service.url)
            assert status == 503
            assert body == {
                "status": "unhealthy",
                "checks": {
                    "database": f"not writable: {service.db_path} is read-only",
                    "storage": "ok",
                },
            }

            service.db_path.chmod(mode)
            assert await _health(client, service.url) == (200, HEALTHY)

            storage_mode = service.storage_dir.stat().st_mode
            service.storage_dir.chmod(stat.S_IRUSR | stat.S_IXUSR)
            try:
                status, body = await _health(client, service.url)
            finally:
                service.storage_dir.chmod(storage_mode)
            assert status == 503
            assert body == {
                "status": "unhealthy",
                "checks": {
                    "database": "ok",
                    "storage": f"storage directory {service.storage_dir} is not writable:"
                    " Permission denied",
                },
            }
    finally:
        service.db_path.chmod(mode)
        service.kill()


# The check waits a short while for the lock, not SQLite's 30 s of the workers: a health
# check that waited those 30 s would overrun this test's timeout (no clock is read).
@pytest.mark.timeout(DATABASE_CHECK_TIMEOUT + 15)
async def test_health_turns_503_when_the_database_stays_locked(
    create_service: ServiceFactory,
) -> None:
    service = await create_service()
    blocker = sqlite3.connect(service.settings.database.path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        status, body = await _health(service.client, service.url)
        assert status == 503
        assert body["checks"] == {"database": "not writable: database is locked", "storage": "ok"}
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await _health(service.client, service.url) == (200, HEALTHY)


async def test_metrics_are_prometheus_text(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await resp.text()
    assert "# TYPE csvcompress_images_succeeded_total counter" in text
    assert 'csvcompress_requests{status="pending"} 0.0' in text
    assert "csvcompress_queued_images 0.0" in text


async def test_concurrent_probes_do_not_lock_each_other_out(
    create_service: ServiceFactory,
) -> None:
    # Every probe writes; a load balancer and a monitor probing at once must all pass.
    service = await create_service()
    results = await asyncio.gather(*(_health(service.client, service.url) for _ in range(20)))
    assert results == [(200, HEALTHY)] * 20
