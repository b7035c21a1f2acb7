"""DELETE /requests/{id} cancels or removes; POST /requests/{id}/retry re-queues failures."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests import images
from tests.conftest import HookReceiver, Origin, Service, ServiceFactory, csv_bytes

SKIPPED = "skipped: the request was cancelled"


async def _delete(service: Service, request_id: str) -> tuple[int, Any]:
    async with service.client.delete(f"{service.url}/requests/{request_id}") as resp:
        body = await resp.json() if resp.status != 204 else None
        return resp.status, body


async def _retry(service: Service, request_id: str) -> tuple[int, Any]:
    async with service.client.post(f"{service.url}/requests/{request_id}/retry") as resp:
        return resp.status, await resp.json()


async def _until_status(service: Service, request_id: str, check: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while not check(doc := await service.status(request_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {doc}")
        await asyncio.sleep(0.02)
    return doc


def _rows(db_path: str, table: str, column: str, request_id: str) -> int:
    with sqlite3.connect(db_path) as conn:
        found = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", (request_id,))
        return int(found.fetchone()[0])


async def test_cancel_skips_pending_images_writes_the_csv_and_sends_the_webhook(
    create_service: ServiceFactory, origin: Origin, hook_receiver: HookReceiver
) -> None:
    # fetch.concurrency 2 + 1 thread: three workers.
    service = await create_service(fetch={"concurrency": 2}, workers={"threads": 1})
    gate = asyncio.Event()
    held_data = images.photo_jpeg(30, 20, seed=9)

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(body=held_data, content_type="image/jpeg")

    fast = [origin.add(f"fast/{n}.jpg", images.photo_jpeg(40, 30, seed=n)) for n in range(2)]
    slow = [origin.route(f"slow/{n}.jpg", held) for n in range(6)]
    rows = [["1", "Fast", ", ".join(fast)], ["2", "Slow", ", ".join(slow)]]
    try:
        request_id = await service.submit(csv_bytes(rows), webhook_url=hook_receiver.url)
        await _until_status(service, request_id, lambda d: d["images"]["succeeded"] == 2)
        deadline = time.monotonic() + 10
        while sum(origin.hits[f"slow/{n}.jpg"] for n in range(6)) < 2:
            assert time.monotonic() < deadline, dict(origin.hits)
            await asyncio.sleep(0.02)

        status, doc = await _delete(service, request_id)
        assert status == 200
        assert doc["status"] == "cancelled"
        # The images in flight are skipped too: their results will be dropped.
        assert doc["images"] == {
            "total": 8,
            "succeeded": 2,
            "failed": 0,
            "pending": 0,
            "skipped": 6,
        }
    finally:
        gate.set()

    doc = await _until_status(service, request_id, lambda d: d["output_csv_url"] is not None)
    assert doc["status"] == "cancelled"
    assert doc["images"]["skipped"] == 6
    out = await service.output_rows(doc)
    assert out[0]["Output Image Urls"].count("/files/") == 2
    assert out[0]["Errors"] == ""
    assert out[1]["Output Image Urls"] == ", , , , , "
    assert out[1]["Errors"] == "; ".join(f"#{n}: {SKIPPED}" for n in range(1, 7))
    # The scheduler handed out none of the images still waiting when it was cancelled.
    assert all(origin.hits[f"slow/{n}.jpg"] == 0 for n in range(3, 6))
    [event] = await hook_receiver.wait_for(1)
    assert event["type"] == "request.cancelled"
    assert event["data"]["status"] == "cancelled"
    assert event["data"]["output_csv_url"] == doc["output_csv_url"]


async def test_deleting_a_finished_request_removes_it_and_its_files(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))
    request_id = await service.submit(csv_bytes([["1", "A", url]]))
    doc = await service.wait(request_id)
    image_url = (await service.output_rows(doc))[0]["Output Image Urls"]
    data_dir = Path(service.settings.database.path).parent
    files = [
        Path(service.settings.storage.dir) / request_id,
        data_dir / "outputs" / f"{request_id}.csv",
        data_dir / "uploads" / f"{request_id}.csv",
    ]
    assert all(path.exists() for path in files)

    status, body = await _delete(service, request_id)

    assert (status, body) == (204, None)
    assert [path.exists() for path in files] == [False, False, False]
    db_path = service.settings.database.path
    assert _rows(db_path, "requests", "request_id", request_id) == 0
    assert _rows(db_path, "images", "request_id", request_id) == 0
    async with service.client.get(f"{service.url}/status/{request_id}") as resp:
        assert resp.status == 404
    async with service.client.get(image_url) as resp:
        assert resp.status == 404
    assert await _delete(service, request_id) == (
        404,
        {"error": f"no request with id {request_id}"},
    )


async def test_a_cancelled_request_can_be_deleted(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service(fetch={"concurrency": 1}, workers={"threads": 1})
    origin.delay = 0.2
    urls = [origin.add(f"{n}.jpg", images.photo_jpeg(20, 20, seed=n)) for n in range(10)]
    request_id = await service.submit(csv_bytes([["1", "Many", ", ".join(urls)]]))

    status, doc = await _delete(service, request_id)
    assert (status, doc["status"]) == (200, "cancelled")
    await _until_status(service, request_id, lambda d: d["output_csv_url"] is not None)
    # The status shows the CSV as soon as it is recorded; the webhook is queued just after,
    # and until then DELETE answers 409 "try again in a moment" (README), as a client would.
    deadline = time.monotonic() + 15
    status, body = await _delete(service, request_id)
    while status == 409 and time.monotonic() < deadline:
        assert "still being finished" in body["error"]
        await asyncio.sleep(0.02)
        status, body = await _delete(service, request_id)
    assert status == 204
    assert _rows(service.settings.database.path, "images", "request_id", request_id) == 0


async def test_retry_requeues_only_the_failed_images_and_writes_a_new_csv(
    create_service: ServiceFactory, origin: Origin, hook_receiver: HookReceiver
) -> None:
    service = await create_service()
    flaky_data = images.photo_jpeg(50, 40, seed=4)
    broken = True

    async def flaky(request: web.Request) -> web.Response:
        if broken:
            return web.Response(status=404)
        return web.Response(body=flaky_data, content_type="image/jpeg")

    good = origin.add("good.jpg", images.photo_jpeg(40, 30))
    bad = origin.route("flaky.jpg", flaky)
    request_id = await service.submit(
        csv_bytes([["1", "A", f"{good}, {bad}"], ["2", "B", bad]]), webhook_url=hook_receiver.url
    )
    first = await service.wait(request_id)
    assert first["images"] == {"total": 3, "succeeded": 1, "failed": 2, "pending": 0}
    good_url = (await service.output_rows(first))[0]["Output Image Urls"].split(", ")[0]
    await hook_receiver.wait_for(1)

    broken = False
    status, body = await _retry(service, request_id)
    assert status == 202
    assert body == {
        "request_id": request_id,
        "status": "pending",
        "status_url": f"{service.url}/status/{request_id}",
        "images": 2,
    }
    doc = await service.wait(request_id)

    assert doc["status"] == "complete"
    assert doc["images"] == {"total": 3, "succeeded": 3, "failed": 0, "pending": 0}
    out = await service.output_rows(doc)
    assert out[0]["Output Image Urls"].split(", ")[0] == good_url
    assert out[0]["Output Image Urls"].split(", ")[1].endswith("/1-2.jpg")
    assert out[1]["Output Image Urls"] == out[0]["Output Image Urls"].split(", ")[1]
    assert [row["Errors"] for row in out] == ["", ""]
    # The image that had succeeded was not fetched again; the repeat was fetched once more.
    assert origin.hits["good.jpg"] == 1
    assert origin.hits["flaky.jpg"] == 2
    events = await hook_receiver.wait_for(2)
    assert [e["type"] for e in events] == ["request.completed", "request.completed"]
    assert events[1]["data"]["images"]["failed"] == 0


async def test_retry_is_refused_when_there_is_nothing_to_retry(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response(body=images.photo_jpeg(20, 20), content_type="image/jpeg")

    running = await service.submit(csv_bytes([["1", "A", origin.route("held.jpg", held)]]))
    try:
        status, body = await _retry(service, running)
        assert status == 409
        assert body["error"] in (
            f"request {running} is pending; only a finished request can be retried",
            f"request {running} is processing; only a finished request can be retried",
        )
    finally:
        gate.set()
    await service.wait(running)
    assert await _retry(service, running) == (
        409,
        {"error": f"request {running} has no failed images to retry"},
    )
    assert await _retry(service, "0" * 32) == (404, {"error": f"no request with id {'0' * 32}"})


async def test_control_routes_need_the_api_key_when_one_is_set(
    create_service: ServiceFactory,
) -> None:
    key = "k" * 32
    service = await create_service(server={"api_key": key})
    request_id = "0" * 32
    for method, path in (("DELETE", ""), ("POST", "/retry")):
        url = f"{service.url}/requests/{request_id}{path}"
        async with service.client.request(method, url) as resp:
            assert resp.status == 401, (method, path)
        headers = {"Authorization": f"Bearer {key}"}
        async with service.client.request(method, url, headers=headers) as resp:
            assert resp.status == 404, (method, path)
    async with service.client.get(f"{service.url}/healthz") as resp:
        assert resp.status == 200
    async with service.client.get(f"{service.url}/metrics") as resp:
        assert resp.status == 200
