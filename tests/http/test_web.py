"""The service end to end: upload a CSV, wait, read the status and the output."""

from __future__ import annotations

import pyvips

from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin


def _probe(data: bytes) -> tuple[int, int, str]:
    image = pyvips.Image.new_from_buffer(data, "")
    return image.width, image.height, image.get("vips-loader")


async def test_upload_answers_at_once_with_the_request(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(64, 48))
    b = origin.add("b.jpg", images.photo_jpeg(64, 48, seed=1))

    resp = await service.upload(csv_bytes([["1", "Shirt", f"{a}, {b}"], ["2", "Hat", a]]))

    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "pending"
    assert body["rows"] == 2
    assert body["images"] == 3
    assert len(body["request_id"]) == 32
    assert body["status_url"] == f"{service.url}/status/{body['request_id']}"
    assert resp.headers["Location"] == body["status_url"]


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


async def test_bad_csv_is_refused_with_problems_and_nothing_stored(
    create_service: ServiceFactory,
) -> None:
    service = await create_service()
    data = csv_bytes([["1", "Shirt", ""], ["2", "Hat", "ftp://example.com/x.jpg"]])

    resp = await service.upload(data)

    assert resp.status == 400
    body = await resp.json()
    assert [(p["line"], p["column"]) for p in body["problems"]] == [
        (2, "Input Image Urls"),
        (3, "Input Image Urls"),
    ]
    uploads = service.settings.data_dir / "uploads"
    assert list(uploads.iterdir()) == []


async def test_upload_over_the_size_limit_is_413(create_service: ServiceFactory) -> None:
    service = await create_service(limits={"max_upload_bytes": 1000})
    data = csv_bytes([[str(n), "x" * 50, "http://example.com/a.jpg"] for n in range(100)])

    resp = await service.upload(data)

    assert resp.status == 413
    assert await resp.json() == {"error": "the file is larger than the limit of 1000 bytes"}


async def test_upload_without_a_file_is_400(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.post(f"{service.url}/upload", data={"x": "1"}) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": "send the CSV as multipart/form-data with the file in a field named 'file'"
        }


async def test_unknown_request_is_404_json(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/status/nope") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "no request with id nope"}
    async with service.client.get(f"{service.url}/requests/nope/output.csv") as resp:
        assert resp.status == 404


async def test_bad_webhook_url_is_refused(create_service: ServiceFactory, origin: Origin) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))

    resp = await service.upload(csv_bytes([["1", "Shirt", a]]), webhook_url="not a url")

    assert resp.status == 400
    assert await resp.json() == {"error": "webhook_url must be an absolute http:// or https:// URL"}


async def test_index_serves_the_upload_form(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/") as resp:
        assert resp.status == 200
        assert "<form" in await resp.text()


async def test_unknown_route_and_wrong_method_are_json(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/nowhere") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not Found"}
    async with service.client.get(f"{service.url}/upload") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert await resp.json() == {"error": "Method Not Allowed"}
