"""Odd input never answers 5xx: each class of input the hardening issue found answering 500
gets its exact 4xx and message from the real service, and leaves no traceback in the log.

(The property-based sweep over every route is tests/http/test_schemathesis.py.)
"""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import pytest

from tests.conftest import ServiceFactory, assert_no_traceback, csv_bytes

CSV = csv_bytes([["1", "Shirt", "http://127.0.0.1/a.jpg"]])
CURSOR = "cursor must be a next_cursor value from a previous page"
LIMIT = "limit must be a whole number from 1 to 100"
IMAGES_LIMIT = "limit must be a whole number from 1 to 1000"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=\u0661\u0662", LIMIT),  # Arabic-Indic digits: isdigit() says yes, int() agrees
        ("limit=\u00b2", LIMIT),  # a superscript two: isdigit() yes, int() no
        ("limit=" + "9" * 25, LIMIT),
        ("cursor=\u0661\u0662", CURSOR),
        ("cursor=\u00b2", CURSOR),
        ("cursor=9223372036854775808", CURSOR),  # one past SQLite's largest integer
        ("cursor=1000000000000000000", CURSOR),  # 19 digits: past the documented pattern
        ("cursor=" + "9" * 5000, CURSOR),  # past Python's int() digit limit
        ("cursor=-1", CURSOR),
    ],
)
async def test_numbers_in_the_query_are_ascii_digits_in_range(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture, query: str, message: str
) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/requests?{query}") as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": message}
    async with service.client.get(
        f"{service.url}/requests/{'0' * 32}/images?{query.replace('100', '1000')}"
    ) as resp:
        assert resp.status == 400
        expected = IMAGES_LIMIT if message == LIMIT else message
        assert await resp.json() == {"error": expected}
    assert_no_traceback(caplog)


async def test_the_largest_cursor_is_a_page(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/requests?cursor=999999999999999999") as resp:
        assert resp.status == 200
        assert await resp.json() == {"requests": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://a..example.com/hook",
            "webhook_url has an invalid host name: each dot-separated label must be 1 to 63"
            " characters",
        ),
        (
            f"http://{'a' * 64}.example.com/hook",
            "webhook_url has an invalid host name: each dot-separated label must be 1 to 63"
            " characters",
        ),
        ("http://[::1/hook", "webhook_url is not a valid URL: Invalid IPv6 URL"),
        (
            "http://[zz::1]/hook",
            "webhook_url is not a valid URL: 'zz::1' does not appear to be an IPv4 or IPv6 address",
        ),
        (
            "http://[1:2:3]/hook",
            "webhook_url is not a valid URL: '1:2:3' does not appear to be an IPv4 or IPv6 address",
        ),
        ("http://93.184.215.14:0/hook", "webhook_url port must be from 1 to 65535"),
        (
            "http://93.184.215.14:99999/hook",
            "webhook_url is not a valid URL: Port out of range 0-65535",
        ),
        (
            "http://93.184.215.14/hook\r\nX-Injected: 1",
            "webhook_url must not contain control characters (CR, LF, tab, ...)",
        ),
        (
            "http://93.184.215.14/ho\x00ok",
            "webhook_url must not contain control characters (CR, LF, tab, ...)",
        ),
        (
            "http://93.184.215.14/ho\x7fok",
            "webhook_url must not contain control characters (CR, LF, tab, ...)",
        ),
    ],
)
async def test_webhook_urls_the_codecs_refuse_are_400(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture, url: str, message: str
) -> None:
    # Judged before anything resolves or connects: the public address is never dialled.
    service = await create_service()
    resp = await service.upload(CSV, webhook_url=url)
    assert resp.status == 400
    assert await resp.json() == {"error": message}
    assert list((service.settings.data_dir / "uploads").iterdir()) == []
    assert_no_traceback(caplog)


async def test_credentials_in_a_webhook_url_are_never_echoed(
    create_service: ServiceFactory,
) -> None:
    service = await create_service()
    resp = await service.upload(CSV, webhook_url="http://user:s3cret@127.0.0.1:9/hook")
    assert resp.status == 202
    doc = await service.status((await resp.json())["request_id"])
    assert doc["webhook"]["url"] == "http://***@127.0.0.1:9/hook"
    assert "s3cret" not in str(doc)


@pytest.mark.parametrize(
    "path",
    [
        "/files/" + "a" * 300 + ".jpg",
        "/files/x/" + "a" * 300 + ".jpg",
        "/files/" + "/".join(["b" * 200] * 30) + ".jpg",  # past PATH_MAX
        "/static/" + "a" * 300 + ".js",
    ],
)
async def test_paths_longer_than_the_file_system_allows_are_404(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    service = await create_service()
    async with service.client.get(service.url + path) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "no such file"}
    assert_no_traceback(caplog)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_match_its_content_encoding_is_400(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture, encoding: str
) -> None:
    service = await create_service()
    form = aiohttp.FormData()
    form.add_field("file", CSV, filename="a.csv", content_type="text/csv")
    async with service.client.post(
        f"{service.url}/upload", data=form, headers={"Content-Encoding": encoding}
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "error": f"the body could not be decoded as its Content-Encoding ({encoding}) says"
        }
    # The service goes on, and nothing was kept of the refused upload.
    assert (await service.upload(CSV)).status == 202
    await asyncio.sleep(0)
    assert [p.suffix for p in (service.settings.data_dir / "uploads").iterdir()] == [".csv"]
    assert_no_traceback(caplog)


async def test_an_encoding_the_service_cannot_decode_is_400_in_one_log_line(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp refuses it before any handler runs (its own plain-text 400).
    service = await create_service()
    async with service.client.post(
        f"{service.url}/upload", data=b"x", headers={"Content-Encoding": "x-unknown, br"}
    ) as resp:
        assert resp.status == 400
    assert_no_traceback(caplog)


async def test_a_body_that_matches_its_content_encoding_is_taken(
    create_service: ServiceFactory,
) -> None:
    service = await create_service()
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n'
            f"Content-Type: text/csv\r\n\r\n"
        ).encode()
        + CSV
        + f"\r\n--{boundary}--\r\n".encode()
    )
    async with service.client.post(
        f"{service.url}/upload",
        data=gzip.compress(body),
        headers={
            "Content-Encoding": "gzip",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    ) as resp:
        assert resp.status == 202, await resp.text()
