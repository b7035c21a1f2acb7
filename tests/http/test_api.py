"""GET /requests (newest first, cursor pages) and GET /requests/{id}/images (input order)."""

from __future__ import annotations

from typing import Any

from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin


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
            "status must be one of: pending, processing, complete, failed, cancelled"
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
