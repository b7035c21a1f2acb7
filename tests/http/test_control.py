"""DELETE /requests/{id} cancels or removes; POST /requests/{id}/retry re-queues failures."""

from __future__ import annotations

from typing import Any

from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin, Receiver
from tests.waiting import poll

SKIPPED = "skipped: the request was cancelled"


async def _delete(service: Service, request_id: str) -> tuple[int, Any]:
    async with service.client.delete(f"{service.url}/requests/{request_id}") as resp:
        body = await resp.json() if resp.status != 204 else None
        return resp.status, body


async def _retry(service: Service, request_id: str) -> tuple[int, Any]:
    async with service.client.post(f"{service.url}/requests/{request_id}/retry") as resp:
        return resp.status, await resp.json()


async def test_cancel_skips_pending_images_writes_the_csv_and_sends_the_webhook(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    # fetch.concurrency 2 + 1 thread: three workers.
    service = await create_service(fetch={"concurrency": 2}, workers={"threads": 1})
    held_data = images.photo_jpeg(30, 20, seed=9)

    fast = [origin.add(f"fast/{n}.jpg", images.photo_jpeg(40, 30, seed=n)) for n in range(2)]
    slow = [origin.add(f"slow/{n}.jpg", held_data, held=True) for n in range(6)]
    rows = [["1", "Fast", ", ".join(fast)], ["2", "Slow", ", ".join(slow)]]
    try:
        request_id = await service.submit(csv_bytes(rows), webhook_url=receiver.url)
        await service.wait_until(
            request_id, lambda d: d["images"]["succeeded"] == 2, "the two fast images"
        )
        await origin.wait_for_hits(2, *(f"slow/{n}.jpg" for n in range(6)))

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
        origin.release()

    doc = await service.wait_until(
        request_id, lambda d: d["output_csv_url"] is not None, "the output CSV"
    )
    assert doc["status"] == "cancelled"
    assert doc["images"]["skipped"] == 6
    out = await service.output_rows(doc)
    assert out[0]["Output Image Urls"].count("/files/") == 2
    assert out[0]["Errors"] == ""
    assert out[1]["Output Image Urls"] == ", , , , , "
    assert out[1]["Errors"] == "; ".join(f"#{n}: {SKIPPED}" for n in range(1, 7))
    # The scheduler handed out none of the images still waiting when it was cancelled.
    assert all(origin.hits[f"slow/{n}.jpg"] == 0 for n in range(3, 6))
    [event] = await receiver.wait_for(1)
    assert event.payload["type"] == "request.cancelled"
    assert event.payload["data"]["status"] == "cancelled"
    assert event.payload["data"]["output_csv_url"] == doc["output_csv_url"]


async def test_deleting_a_finished_request_removes_it_and_its_files(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))
    request_id = await service.submit(csv_bytes([["1", "A", url]]))
    doc = await service.wait(request_id)
    image_url = (await service.output_rows(doc))[0]["Output Image Urls"]
    files = service.files(request_id)
    assert all(path.exists() for path in files)

    status, body = await _delete(service, request_id)

    assert (status, body) == (204, None)
    assert [path.exists() for path in files] == [False, False, False]
    assert service.rows(request_id) == {"requests": 0, "images": 0, "deliveries": 0}
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
    await service.wait_until(
        request_id, lambda d: d["output_csv_url"] is not None, "the output CSV"
    )
    # The status shows the CSV as soon as it is recorded; the webhook is queued just after,
    # and until then DELETE answers 409 "try again in a moment" (README), as a client would.

    def not_refused(answer: tuple[int, Any]) -> bool:
        status, body = answer
        if status == 409:  # refused while the request is being finished, and only then
            assert "still being finished" in body["error"]
        return status != 409

    status, _ = await poll(
        lambda: _delete(service, request_id), until=not_refused, what="DELETE to go through"
    )
    assert status == 204
    assert service.rows(request_id)["images"] == 0


async def test_retry_requeues_only_the_failed_images_and_writes_a_new_csv(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service()
    good = origin.add("good.jpg", images.photo_jpeg(40, 30))
    bad = origin.add("flaky.jpg", status=404)
    request_id = await service.submit(
        csv_bytes([["1", "A", f"{good}, {bad}"], ["2", "B", bad]]), webhook_url=receiver.url
    )
    first = await service.wait(request_id)
    assert first["images"] == {"total": 3, "succeeded": 1, "failed": 2, "pending": 0}
    good_url = (await service.output_rows(first))[0]["Output Image Urls"].split(", ")[0]
    await receiver.wait_for(1)

    origin.add("flaky.jpg", images.photo_jpeg(50, 40, seed=4))
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
    events = await receiver.wait_for(2)
    assert [e.payload["type"] for e in events] == ["request.completed", "request.completed"]
    assert events[1].payload["data"]["images"]["failed"] == 0


async def test_retry_is_refused_when_there_is_nothing_to_retry(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    held = origin.add("held.jpg", images.photo_jpeg(20, 20), held=True)
    running = await service.submit(csv_bytes([["1", "A", held]]))
    try:
        status, body = await _retry(service, running)
        assert status == 409
        assert body["error"] in (
            f"request {running} is pending; only a finished request can be retried",
            f"request {running} is processing; only a finished request can be retried",
        )
    finally:
        origin.release()
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
