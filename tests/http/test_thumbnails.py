"""GET /thumbnails/...: the request page's previews, made by the service on first view."""

from __future__ import annotations

from typing import Any

import pyvips

from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin


async def _images(service: Service, request_id: str) -> list[dict[str, Any]]:
    async with service.client.get(f"{service.url}/requests/{request_id}/images") as resp:
        assert resp.status == 200
        found: list[dict[str, Any]] = (await resp.json())["images"]
        return found


async def _get(service: Service, url: str) -> tuple[int, bytes, str]:
    async with service.client.get(url) as resp:
        return resp.status, await resp.read(), resp.content_type


async def test_each_succeeded_image_has_small_before_and_after_thumbnails(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    photo = images.photo_jpeg(2000, 1500)
    a = origin.add("a.jpg", photo)
    request_id = await service.submit(csv_bytes([["1", "Shirt", f"{a}, {origin.url}/gone.jpg"]]))
    await service.wait(request_id)
    done, failed = await _images(service, request_id)
    assert failed["thumbnails"] is None
    hits = origin.hits["a.jpg"]

    for side in ("before", "after"):
        status, data, content_type = await _get(service, done["thumbnails"][side])
        assert (status, content_type) == (200, "image/webp")
        thumbnail = pyvips.Image.new_from_buffer(data, "")
        # 144 pixels at most (the page's 72-pixel box, twice), the photo's shape kept.
        assert (thumbnail.width, thumbnail.height) == (144, 108)
        assert len(data) < 10_000 < len(photo)

    # The "before" one was made from the original, fetched again by the service once;
    # a second view is served from what was kept.
    assert origin.hits["a.jpg"] == hits + 1
    assert (await _get(service, done["thumbnails"]["before"]))[0] == 200
    assert origin.hits["a.jpg"] == hits + 1


async def test_no_preview_when_the_origin_is_gone_and_none_for_other_names(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(300, 200))
    request_id = await service.submit(csv_bytes([["1", "Shirt", a]]))
    await service.wait(request_id)
    (done,) = await _images(service, request_id)
    origin.add("a.jpg", status=404)

    status, _, _ = await _get(service, done["thumbnails"]["before"])
    assert status == 404
    # The output is the service's own: its thumbnail never needs the origin.
    assert (await _get(service, done["thumbnails"]["after"]))[0] == 200
    base = f"{service.url}/thumbnails/{request_id}"
    for name in ("0-before.webp", "1-middle.webp", "1-before.png", "..", "99-after.webp"):
        assert (await _get(service, f"{base}/{name}"))[0] == 404, name


async def test_removing_a_request_removes_its_thumbnails(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(300, 200))
    request_id = await service.submit(csv_bytes([["1", "Shirt", a]]))
    await service.wait(request_id)
    (done,) = await _images(service, request_id)
    assert (await _get(service, done["thumbnails"]["after"]))[0] == 200
    kept = service.settings.thumbnails_dir / request_id
    assert kept.is_dir()

    async with service.client.delete(f"{service.url}/requests/{request_id}") as resp:
        assert resp.status == 204
    assert not kept.exists()
    assert (await _get(service, done["thumbnails"]["after"]))[0] == 404
