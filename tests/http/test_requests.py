"""A request as a resource: /status/{id}, GET /requests (newest first, cursor pages),
GET /requests/{id}/images (input order), the output CSV, DELETE (cancel or remove),
POST .../retry (re-queue failures)."""

from __future__ import annotations

from typing import Any

import pyvips

from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin, Receiver
from tests.waiting import poll

SKIPPED = "skipped: the request was cancelled"


async def _get(service: Service, path: str) -> tuple[int, Any]:
    async with service.client.get(f"{service.url}{path}") as resp:
        return resp.status, await resp.json()


async def _all_pages(service: Service, path: str, key: str) -> list[list[Any]]:
    pages: list[list[Any]] = []
    cursor = ""
    while True:
        sep = "&" if "?" in path else "?"
        status, body = await _get(service, f"{path}{sep}cursor={cursor}" if cursor else path)
        assert status == 200, body
        pages.append(body[key])
        if body["next_cursor"] is None:
            return pages
        cursor = body["next_cursor"]


async def _delete(service: Service, request_id: str) -> tuple[int, Any]:
    async with service.client.delete(f"{service.url}/requests/{request_id}") as resp:
        body = await resp.json() if resp.status != 204 else None
        return resp.status, body


async def _retry(service: Service, request_id: str) -> tuple[int, Any]:
    async with service.client.post(f"{service.url}/requests/{request_id}/retry") as resp:
        return resp.status, await resp.json()


def _probe(data: bytes) -> tuple[int, int, str]:
    image = pyvips.Image.new_from_buffer(data, "")
    return image.width, image.height, image.get("vips-loader")


# --- reading -------------------------------------------------------------------


async def test_whole_path_produces_images_and_output_csv(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    jpeg = images.photo_jpeg(640, 480)
    png = images.png_rgba(120, 90)
    a = origin.add("shirt/front.jpg", jpeg)
    b = origin.add("shirt/back.png", png, "image/png")
    hat_jpeg = images.photo_jpeg(300, 200, seed=3)
    c = origin.add("hat.jpg", hat_jpeg)
    missing = f"{origin.url}/nope.jpg"
    rows = [
        ["1", "Shirt", f"{a},\n {b}"],
        ["2", "Hat", f"{c}, {missing}, {a}"],
    ]

    request_id = await service.submit(csv_bytes(rows))
    doc = await service.wait(request_id)

    assert doc["status"] == "complete"
    assert doc["images"] == {"total": 5, "succeeded": 4, "failed": 1, "pending": 0}
    assert doc["output_csv_url"] == f"{service.url}/requests/{request_id}/output.csv"
    assert doc["webhook"] is None
    # The repeated URL was fetched once.
    assert origin.hits["shirt/front.jpg"] == 1

    out = await service.output_rows(doc)
    assert [r["S. No."] for r in out] == ["1", "2"]
    assert [r["Product Name"] for r in out] == ["Shirt", "Hat"]
    assert out[0]["Input Image Urls"] == f"{a},\n {b}"
    first = out[0]["Output Image Urls"].split(", ")
    second = out[1]["Output Image Urls"].split(", ")
    assert len(first) == 2 and len(second) == 3
    assert second[1] == ""
    assert out[0]["Errors"] == ""
    assert out[1]["Errors"] == "#2: HTTP 404 from origin"

    front, content_type = await service.get_bytes(first[0])
    assert content_type == "image/jpeg"
    assert _probe(front) == (640, 480, "jpegload_buffer")
    assert len(front) < len(jpeg)
    back, content_type = await service.get_bytes(first[1])
    assert content_type == "image/png"
    assert _probe(back)[:2] == (120, 90)
    hat, _ = await service.get_bytes(second[0])
    assert _probe(hat)[:2] == (300, 200)
    # The repeat shares the first occurrence's output.
    assert second[2] == first[0]
    assert doc["bytes"]["input"] == len(jpeg) + len(png) + len(hat_jpeg)
    assert doc["bytes"]["saved"] == doc["bytes"]["input"] - doc["bytes"]["output"]


async def test_extra_columns_are_carried_through(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))
    data = csv_bytes(
        [["7", "Lamp", "blue", a]],
        header=("Sr No", "Product Name", "Colour", "Input Image URLs"),
    )

    doc = await service.wait(await service.submit(data))
    out = await service.output_rows(doc)

    assert list(out[0]) == [
        "Sr No",
        "Product Name",
        "Colour",
        "Input Image URLs",
        "Output Image Urls",
        "Errors",
    ]
    assert out[0]["Colour"] == "blue"
    assert out[0]["Output Image Urls"].startswith(f"{service.url}/files/{doc['request_id']}/")


async def test_unknown_request_is_404_json(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/status/nope") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "no request with id nope"}
    async with service.client.get(f"{service.url}/requests/nope/output.csv") as resp:
        assert resp.status == 404


async def test_listing_is_newest_first_in_cursor_pages(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))
    ids = [await service.submit(csv_bytes([[str(n), f"P{n}", a]])) for n in range(5)]
    for request_id in ids:
        await service.wait(request_id)

    pages = await _all_pages(service, "/requests?limit=2", "requests")

    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [item["request_id"] for page in pages for item in page]
    assert listed == ids[::-1]
    first = pages[0][0]
    assert first["status"] == "complete"
    assert first["images"] == {"total": 1, "succeeded": 1, "failed": 0, "pending": 0}
    assert first["status_url"] == f"{service.url}/status/{ids[-1]}"
    assert first["output_csv_url"] == f"{service.url}/requests/{ids[-1]}/output.csv"
    # The listing says what /status says, without the webhook.
    status = await service.status(ids[-1])
    del status["webhook"]
    assert {k: v for k, v in first.items() if k != "status_url"} == status


async def test_a_page_never_repeats_when_new_requests_arrive(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))
    old = [await service.submit(csv_bytes([["1", "P", a]])) for _ in range(3)]

    _, first = await _get(service, "/requests?limit=2")
    newer = await service.submit(csv_bytes([["1", "P", a]]))
    _, second = await _get(service, f"/requests?limit=2&cursor={first['next_cursor']}")

    assert [r["request_id"] for r in first["requests"]] == [old[2], old[1]]
    assert [r["request_id"] for r in second["requests"]] == [old[0]]
    assert second["next_cursor"] is None
    assert newer not in [r["request_id"] for r in second["requests"]]


async def test_listing_filters_by_status(create_service: ServiceFactory, origin: Origin) -> None:
    service = await create_service()
    quick = origin.add("a.jpg", images.photo_jpeg(32, 32))
    slow = origin.add("slow.jpg", images.photo_jpeg(32, 32), held=True)
    done = await service.submit(csv_bytes([["1", "P", quick]]))
    await service.wait(done)
    running = await service.submit(csv_bytes([["1", "P", slow]]))
    try:
        await service.wait_until(running, lambda doc: doc["status"] == "processing", "its start")
        status, body = await _get(service, "/requests?status=complete")
        assert status == 200
        assert [r["request_id"] for r in body["requests"]] == [done]
        status, body = await _get(service, "/requests?status=processing")
        assert [r["request_id"] for r in body["requests"]] == [running]
        assert body["requests"][0]["output_csv_url"] is None
    finally:
        origin.release()
    await service.wait(running)


async def test_listing_refuses_bad_parameters(create_service: ServiceFactory) -> None:
    service = await create_service()
    cases = {
        "/requests?status=done": (
            "status must be one of: pending, processing, complete, failed, cancelling, cancelled"
        ),
        "/requests?limit=0": "limit must be a whole number from 1 to 100",
        "/requests?limit=101": "limit must be a whole number from 1 to 100",
        "/requests?limit=ten": "limit must be a whole number from 1 to 100",
        "/requests?cursor=abc": "cursor must be a next_cursor value from a previous page",
    }
    for path, message in cases.items():
        assert await _get(service, path) == (400, {"error": message}), path


async def test_empty_listing(create_service: ServiceFactory) -> None:
    service = await create_service()
    assert await _get(service, "/requests") == (200, {"requests": [], "next_cursor": None})


async def test_images_come_in_input_order_with_results(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    jpeg = images.photo_jpeg(200, 150)
    a = origin.add("a.jpg", jpeg)
    b = origin.add("b.jpg", images.photo_jpeg(64, 48, seed=2))
    missing = f"{origin.url}/missing.jpg"
    request_id = await service.submit(
        csv_bytes([["1", "Shirt", f"{a}, {missing}"], ["2", "Hat", f"{b}, {a}"]])
    )
    await service.wait(request_id)

    pages = await _all_pages(service, f"/requests/{request_id}/images?limit=3", "images")

    assert [len(page) for page in pages] == [3, 1]
    got = [image for page in pages for image in page]
    assert [(i["row"], i["position"], i["url"]) for i in got] == [
        (1, 1, a),
        (1, 2, missing),
        (2, 1, b),
        (2, 2, a),
    ]
    assert [i["status"] for i in got] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert got[0]["output_url"] == f"{service.url}/files/{request_id}/1-1.jpg"
    assert got[0]["bytes"]["input"] == len(jpeg)
    assert 0 < got[0]["bytes"]["output"] < len(jpeg)
    assert got[0]["error"] is None and got[0]["error_code"] is None
    assert got[1] == {
        "row": 1,
        "position": 2,
        "url": missing,
        "status": "failed",
        "output_url": None,
        "bytes": {"input": 0, "output": 0},
        "error": "HTTP 404 from origin",
        "error_code": "fetch",
        "thumbnails": None,
    }
    # A repeated URL shows its first occurrence's result.
    assert got[3]["output_url"] == got[0]["output_url"]
    data, _ = await service.get_bytes(got[2]["output_url"])
    assert len(data) == got[2]["bytes"]["output"]


async def test_images_of_an_unknown_request_is_404(create_service: ServiceFactory) -> None:
    service = await create_service()
    assert await _get(service, "/requests/nope/images") == (
        404,
        {"error": "no request with id nope"},
    )
    status, body = await _get(service, "/requests/nope/images?limit=5000")
    assert (status, body) == (400, {"error": "limit must be a whole number from 1 to 1000"})


# --- controlling ---------------------------------------------------------------


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
        # Not final until the output CSV is written: a client stopping at a final status
        # always finds its output.
        assert doc["status"] == "cancelling"
        assert doc["output_csv_url"] is None
        stopped_at = doc["processing_seconds"]
        assert stopped_at > 0
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

    # A client polling until a final status finds the output CSV with it.
    doc = await service.wait(request_id)
    assert doc["status"] == "cancelled"
    assert doc["output_csv_url"] is not None
    assert doc["images"]["skipped"] == 6
    # The clock stopped at the cancel: finishing the images in flight is not processing.
    assert doc["processing_seconds"] == stopped_at
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
    assert (status, doc["status"]) == (200, "cancelling")
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
    # Just finished, it may still be being announced: 409 "try again in a moment" (README).
    refused = await poll(
        lambda: _retry(service, running),
        until=lambda answer: "still being finished" not in answer[1]["error"],
        what="the request to be idle",
    )
    assert refused == (409, {"error": f"request {running} has no failed images to retry"})
    assert await _retry(service, "0" * 32) == (404, {"error": f"no request with id {'0' * 32}"})


async def test_the_uploaded_file_name_is_kept_and_listed(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))
    names = {"spring products.csv": "spring products.csv", "C:\\Users\\me\\hats.csv": "hats.csv"}
    ids = {}
    for sent in names:
        resp = await service.upload(csv_bytes([["1", "A", url]]), filename=sent)
        assert resp.status == 202
        ids[sent] = (await resp.json())["request_id"]
    for sent, kept in names.items():
        doc = await service.wait(ids[sent])
        assert doc["file_name"] == kept
        # Measured while it processed: more than nothing, and it stays put once finished.
        assert doc["processing_seconds"] > 0
        assert (await service.status(ids[sent]))["processing_seconds"] == doc["processing_seconds"]
    status, listing = await _get(service, "/requests")
    assert status == 200
    assert [r["file_name"] for r in listing["requests"]] == ["hats.csv", "spring products.csv"]
