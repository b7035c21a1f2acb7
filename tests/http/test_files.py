"""GET /files/{key}: the output images, as the storage backend says they are served.

Awkward real-world images round-trip through fetch, pipeline, storage and this route.
"""

from __future__ import annotations

import asyncio

import pyvips

from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin


async def test_awkward_formats_round_trip(create_service: ServiceFactory, origin: Origin) -> None:
    service = await create_service()
    # (path, bytes, served content type, expected output: format, width, height, pages)
    cases = [
        ("cmyk.jpg", images.solid_cmyk_jpeg(), "image/jpeg", ("jpeg", 64, 64, 1)),
        ("rotated.jpg", images.exif_rotated_jpeg(300, 200, 6), "image/jpeg", ("jpeg", 200, 300, 1)),
        ("deep.png", images.png_16bit(80, 60), "image/png", ("png", 80, 60, 1)),
        ("grey.jpg", images.grey_jpeg(80, 60), "image/jpeg", ("jpeg", 80, 60, 1)),
        ("anim.gif", images.animated_gif(120, 80, 3), "image/gif", ("gif", 120, 80, 3)),
        ("photo.webp", images.webp(90, 60), "image/webp", ("webp", 90, 60, 1)),
        ("scan.tiff", images.tiff(70, 50), "image/tiff", ("jpeg", 70, 50, 1)),
        # The content type lies: the format is taken from the bytes.
        ("png-named.jpg", images.png(40, 30), "image/jpeg", ("png", 40, 30, 1)),
        ("gps.jpg", images.jpeg_with_gps(64, 48), "image/jpeg", ("jpeg", 64, 48, 1)),
    ]
    urls = [origin.add(path, data, ctype) for path, data, ctype, _ in cases]

    request_id = await service.submit(csv_bytes([["1", "Mixed", ", ".join(urls)]]))
    doc = await service.wait(request_id)

    assert doc["images"]["failed"] == 0, (await service.output_rows(doc))[0]["Errors"]
    outputs = (await service.output_rows(doc))[0]["Output Image Urls"].split(", ")
    for (path, _, _, expected), url in zip(cases, outputs, strict=True):
        data, content_type = await service.get_bytes(url)
        fmt, width, height, pages = expected
        image = pyvips.Image.new_from_buffer(data, "n=-1" if fmt == "gif" else "")
        assert content_type == f"image/{fmt}", path
        assert image.get("vips-loader").startswith(fmt), path
        pages_found = image.get("n-pages") if "n-pages" in image.get_fields() else 1
        assert (image.width, image.height // pages_found, pages_found) == (width, height, pages)
        assert image.interpretation in ("srgb", "b-w"), path
        assert not {"exif-data", "icc-profile-data"} & set(image.get_fields()), path
    # Print CMYK red comes out as screen red-ish, not inverted or cyan.
    cmyk = pyvips.Image.new_from_buffer((await service.get_bytes(outputs[0]))[0], "")
    red, green, blue = (cmyk.extract_band(b).avg() for b in range(3))
    assert red > 200 and green < 80 and blue < 80


async def test_files_route_serves_only_stored_images(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    secret = service.settings.data_dir / "csvcompress.sqlite3"
    for path in ("nope/1-1.jpg", "../csvcompress.sqlite3", "%2e%2e/csvcompress.sqlite3", ".x.jpg"):
        async with service.client.get(f"{service.url}/files/{path}") as resp:
            # Clients fold "../" away; either way nothing outside the storage root is served.
            assert resp.status == 404, path
            assert (await resp.json())["error"] in ("no such file", "Not Found")
    assert secret.exists()


async def test_a_backend_that_serves_no_files_answers_404(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service(storage={"backend": "null"})
    url = origin.add("a.jpg", images.photo_jpeg(32, 32))

    doc = await service.wait(await service.submit(csv_bytes([["1", "A", url]])))
    image_url = (await service.output_rows(doc))[0]["Output Image Urls"]

    assert image_url == f"{service.url}/files/{doc['request_id']}/1-1.jpg"
    async with service.client.get(image_url) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "no such file"}


async def test_raw_traversal_request_is_refused(create_service: ServiceFactory) -> None:
    service = await create_service()
    port = service.settings.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /files/../csvcompress.sqlite3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request"), response
    assert b"SQLite format" not in response
