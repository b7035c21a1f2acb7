"""The queue and workers: fairness, de-duplication, and surviving a kill."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pyvips

from csvcompress.errors import StorageError
from csvcompress.jobs import dispatcher
from csvcompress.jobs.processor import Processor
from csvcompress.models import ImageJob
from csvcompress.pipeline import cpupool, netguard
from csvcompress.pipeline.fetcher import Fetcher
from csvcompress.storage import LocalStorage, Storage
from tests import images
from tests.conftest import ServiceFactory, csv_bytes, make_settings
from tests.procs import ServiceProcess
from tests.servers import Origin, free_port


async def test_small_request_is_not_starved_by_a_large_one(
    create_service: ServiceFactory, origin: Origin
) -> None:
    # Three workers (two downloads, one thread), and every image takes 50 ms to arrive.
    service = await create_service(fetch={"concurrency": 2}, workers={"threads": 1})
    origin.delay = 0.05
    big_rows = []
    for n in range(150):
        url = origin.add(f"big/{n}.jpg", images.photo_jpeg(16, 16, seed=n))
        big_rows.append([str(n + 1), f"Item {n}", url])
    small = origin.add("small.jpg", images.photo_jpeg(16, 16))

    big_id = await service.submit(csv_bytes(big_rows))
    # The large request has the workers before the small one arrives.
    await origin.wait_for_hits(3, *(f"big/{n}.jpg" for n in range(150)))
    small_id = await service.submit(csv_bytes([["1", "Small", small]]))
    small_doc = await service.wait(small_id, timeout=10)
    big_doc = await service.status(big_id)

    assert small_doc["status"] == "complete"
    assert big_doc["status"] == "processing"
    # 150 images at 3 workers and 50 ms each need 2.5 s; the small one took a single slot.
    assert big_doc["images"]["pending"] > 100


async def test_failed_images_do_not_stop_the_request(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    good = origin.add("good.jpg", images.photo_jpeg(40, 30))
    html = origin.add("page.jpg", b"<!doctype html><html></html>", "image/jpeg")
    empty = origin.add("empty.jpg", b"")

    doc = await service.wait(
        await service.submit(csv_bytes([["1", "A", f"{html}, {empty}, {good}"]]))
    )

    assert doc["status"] == "complete"
    assert doc["images"] == {"total": 3, "succeeded": 1, "failed": 2, "pending": 0}
    row = (await service.output_rows(doc))[0]
    urls = row["Output Image Urls"].split(", ")
    assert urls[0] == "" and urls[1] == "" and urls[2].endswith("/1-3.jpg")
    assert row["Errors"].startswith("#1: ")
    assert "#2: " in row["Errors"]


def _succeeded_paths(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT url FROM images WHERE status = 'succeeded'").fetchall()
    return {url.rsplit("/", 1)[-1] for (url,) in rows}


async def test_kill_and_restart_loses_nothing(tmp_path: Path, origin: Origin) -> None:
    service = ServiceProcess(
        tmp_path, fetch={"concurrency": 2, "allowed_networks": ["127.0.0.0/8"]}
    )
    origin.delay = 0.1  # slow images, so that the kill lands with some done and most not
    total = 40
    rows = [
        [str(n + 1), f"Item {n}", origin.add(f"{n}.jpg", images.photo_jpeg(48, 32, seed=n))]
        for n in range(total)
    ]
    await service.start()
    try:
        request_id = await service.submit(csv_bytes(rows))
        await service.wait_until(
            request_id, lambda doc: doc["images"]["succeeded"] >= 8, "eight images done"
        )
    finally:
        service.kill()

    finished_before = _succeeded_paths(service.db_path)
    assert 8 <= len(finished_before) < total
    hits_before = dict(origin.hits)

    await service.start()
    try:
        doc = await service.wait_until(
            request_id, lambda doc: doc["status"] == "complete", "the request to complete", 30
        )
        assert doc["images"] == {"total": total, "succeeded": total, "failed": 0, "pending": 0}
        text = await service.output_csv(doc)
    finally:
        await service.stop(timeout=10)

    # Finished images were not fetched again after the restart.
    for name in finished_before:
        assert origin.hits[name] == hits_before[name] == 1, name
    lines = text.strip().split("\r\n")
    assert len(lines) == total + 1
    storage = service.storage_dir / request_id
    stored = sorted(os.listdir(storage))
    assert len(stored) == total
    for name in stored:
        image = pyvips.Image.new_from_file(str(storage / name))
        assert (image.width, image.height) == (48, 32)
    assert json.loads(json.dumps(doc))["output_csv_url"].endswith(f"{request_id}/output.csv")


# --- Processor: storing from the CPU thread -------------------------------------------


class _RecordingStorage(LocalStorage):
    """Local storage that notes which thread wrote, and can fail the first writes."""

    def __init__(self, root: Path, fail_first: int = 0) -> None:
        super().__init__(root, "http://files.test")
        self.fail_first = fail_first
        self.writers: list[str] = []

    def put_blocking(self, key: str, data: bytes, content_type: str) -> str:
        self.writers.append(threading.current_thread().name)
        if len(self.writers) <= self.fail_first:
            raise StorageError(f"could not write {key}: disk busy")
        return super().put_blocking(key, data, content_type)


@pytest.fixture
async def make_processor(tmp_path: Path) -> AsyncIterator[Callable[[Storage], Processor]]:
    settings = make_settings(tmp_path, free_port())
    session = netguard.create_session(settings.fetch, netguard.NetGuard(settings.fetch))
    pools: list[ThreadPoolExecutor] = []

    def make(storage: Storage) -> Processor:
        pool = cpupool.create(settings.workers)
        pools.append(pool)
        return Processor(settings, Fetcher(settings.fetch, session), storage, pool)

    yield make
    await session.close()
    for pool in pools:
        pool.shutdown(wait=True)


def _job(url: str, row: int = 0, position: int = 0) -> ImageJob:
    return ImageJob(id=1, request_id="req", row=row, position=position, url=url, attempts=0)


async def test_local_storage_is_written_from_the_cpu_thread(
    make_processor: Callable[[Storage], Processor], origin: Origin, tmp_path: Path
) -> None:
    storage = _RecordingStorage(tmp_path / "store")
    url = origin.add("a.png", images.png(64, 48))

    result = await make_processor(storage).process(_job(url, row=2, position=1))

    assert result.error is None
    assert result.output_url == "http://files.test/req/3-2.png"
    # The thread that encoded the image wrote it: one hand-off per image, not two.
    assert len(storage.writers) == 1 and storage.writers[0].startswith("vips")
    written = pyvips.Image.new_from_file(str(tmp_path / "store" / "req" / "3-2.png"))
    assert (written.width, written.height) == (64, 48)
    assert written.get("vips-loader") == "pngload"


async def test_a_failed_write_in_the_cpu_thread_is_retried_on_the_loop(
    make_processor: Callable[[Storage], Processor], origin: Origin, tmp_path: Path
) -> None:
    storage = _RecordingStorage(tmp_path / "store", fail_first=2)
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))

    result = await make_processor(storage).process(_job(url))

    assert result.error is None and result.output_url == "http://files.test/req/1-1.jpg"
    # First try in the CPU thread, the next two through put() in the default executor.
    assert len(storage.writers) == 3
    assert storage.writers[0].startswith("vips")
    assert not any(name.startswith("vips") for name in storage.writers[1:])
    assert (tmp_path / "store" / "req" / "1-1.jpg").stat().st_size == result.bytes_out


async def test_a_write_that_keeps_failing_fails_the_image_with_the_reason(
    make_processor: Callable[[Storage], Processor], origin: Origin, tmp_path: Path
) -> None:
    # A file where the storage directory should be: every write fails, even as root.
    blocked = tmp_path / "store"
    blocked.write_bytes(b"not a directory")
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))

    result = await make_processor(LocalStorage(blocked, "http://files.test")).process(_job(url))

    assert result.output_url is None
    assert result.error_code == "storage"
    assert result.error == "could not write req/1-1.jpg: Not a directory"


async def test_a_request_drained_with_images_pending_is_queued_again(
    create_service: ServiceFactory, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error that keeps an image's result from being recorded leaves the image pending;
    the request is not left in `processing` while the service runs: its pending images go
    back in the queue (after dispatcher.REQUEUE_DELAY) and it finishes."""
    real = Processor.process
    calls: list[ImageJob] = []

    async def failing_once(self: Processor, job: ImageJob, slot: Any = None) -> Any:
        calls.append(job)
        if len(calls) == 1:
            raise RuntimeError("injected: a bug between processing and recording")
        return await real(self, job, slot)

    monkeypatch.setattr(Processor, "process", failing_once)
    service = await create_service()
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))
    request_id = await service.submit(csv_bytes([["1", "Shirt", url]]))

    doc = await service.wait(request_id, timeout=dispatcher.REQUEUE_DELAY + 30)
    assert doc["status"] == "complete"
    assert doc["images"]["succeeded"] == 1
    assert len(calls) == 2
