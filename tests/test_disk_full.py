"""A full disk, on a real small file system: the data directory is a tmpfs of a few
megabytes that the test fills to the last byte while a request runs, then frees.

While it is full: an upload is refused with 507 and a clear message, /healthz answers
503 naming the full disk, and nothing is lost. Once there is room again: every request
reaches a final state and is announced, without a restart.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csvcompress.errors import StoreFull
from csvcompress.http.keys import SERVICE
from tests import images
from tests.conftest import ServiceFactory, assert_no_traceback, csv_bytes
from tests.servers import Origin, Receiver
from tests.waiting import poll

DISK_BYTES = 8 * 1024 * 1024


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[None]:
    """A real tmpfs of DISK_BYTES at `path` (root can mount one; others skip)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(path)],
        capture_output=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path) -> None:
    """Write `path` until the file system has not a byte left."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        for size in (4096, 512, 1):  # the last partial blocks too
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


async def test_a_full_disk_is_visible_and_never_strands_a_request(
    create_service: ServiceFactory,
    origin: Origin,
    receiver: Receiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    with small_disk(data):
        service = await create_service()
        urls = [
            origin.add(f"{n}.jpg", images.photo_jpeg(160, 120, seed=n), held=True) for n in range(4)
        ]
        request_id = await service.submit(
            csv_bytes([[str(n + 1), f"P{n}", url] for n, url in enumerate(urls)]), receiver.url
        )
        before = await service.wait_until(
            request_id, lambda doc: doc["status"] == "processing", "the request to start"
        )

        filler = data / "filler"
        fill(filler)

        # Full: uploads are refused with 507, and the health check names the disk.
        refused = await service.upload(csv_bytes([["1", "Hat", urls[0]]]))
        assert refused.status == 507
        assert await refused.json() in (
            {"error": "the service's disk is full; the upload was not stored. Try again later"},
            {"error": f"the disk holding the database {service.settings.database.path} is full"},
        )
        async with service.client.get(f"{service.url}/healthz") as resp:
            assert resp.status == 503
            health = await resp.json()
        assert health["status"] == "unhealthy"
        assert health["checks"]["storage"] == (
            f"storage directory {service.settings.storage.dir} is not writable:"
            " No space left on device"
        )
        assert health["checks"]["database"] in (
            "ok",  # SQLite may still have room in pages it holds
            f"not writable: the disk holding {service.settings.database.path} is full",
        )

        # The images are fetched while the disk is full: they cannot be stored, and wait.
        origin.release()
        waiting = await poll(
            lambda: [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()],
            what="a write to wait for room",
        )
        assert "No space left on device" in waiting[0] or "is full" in waiting[0], waiting
        assert (await service.status(request_id))["status"] == "processing"

        filler.unlink()

        # Room again: the request finishes by itself, every image stored, and is announced.
        doc = await service.wait(request_id)
        assert doc["status"] == "complete"
        assert doc["updated_at"] > before["updated_at"]
        assert doc["images"] == {"total": 4, "succeeded": 4, "failed": 0, "pending": 0}
        assert doc["output_csv_url"] is not None
        [event] = await receiver.wait_for(1)
        assert event.payload["data"]["request_id"] == request_id
        assert_no_traceback(caplog)

        async with service.client.get(f"{service.url}/healthz") as resp:
            assert resp.status == 200
        # Room again: uploads are taken.
        assert (await service.upload(csv_bytes([["1", "Hat", urls[0]]]))).status == 202


async def test_results_wait_for_a_database_that_cannot_take_writes(
    create_service: ServiceFactory,
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite answers "database or disk is full" only once its own pages are used up, which a
    test cannot time on a real disk: here the store's write is made to fail at its
    boundary, with the store's own error for it (StoreFull), until the test frees it."""
    service = await create_service()
    store = service.runner.app[SERVICE].store
    full = True
    record = store.record_results

    async def record_unless_full(*args: Any, **kwargs: Any) -> list[int]:
        if full:
            raise StoreFull(f"the disk holding the database {store.path} is full")
        return await record(*args, **kwargs)

    monkeypatch.setattr(store, "record_results", record_unless_full)
    url = origin.add("a.jpg", images.photo_jpeg(64, 48))
    request_id = await service.submit(csv_bytes([["1", "Shirt", url]]))

    await poll(
        lambda: [r for r in caplog.records if "recording 1 image result(s) failed" in r.message],
        what="the result to wait for the database",
    )
    assert (await service.status(request_id))["status"] == "processing"
    full = False

    doc = await service.wait(request_id)
    assert doc["status"] == "complete"
    assert doc["images"]["succeeded"] == 1
    assert_no_traceback(caplog)
