"""POST /upload: the answer, refusals, and the upload side under attack (webhook URLs
to forbidden places, endless bodies, garbage).

Every test talks to the real service over HTTP.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes, refused
from tests.servers import Origin, Receiver

BOUNDARY = "csvcompress-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
FILE_PART_HEAD = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="file"; filename="products.csv"\r\n'
    "Content-Type: text/csv\r\n\r\n"
).encode()
# A CSV row as an endless file would repeat it.
ROW = b"1,Shirt,http://127.0.0.1/a.jpg\r\n" * 1000


def _mapped(v4: str) -> str:
    return str(ipaddress.IPv6Address(f"::ffff:{v4}"))


# --- the upload itself ------------------------------------------------------------------


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


async def test_bad_webhook_url_is_refused(create_service: ServiceFactory, origin: Origin) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))

    resp = await service.upload(csv_bytes([["1", "Shirt", a]]), webhook_url="not a url")

    assert resp.status == 400
    assert await resp.json() == {"error": "webhook_url must be an absolute http:// or https:// URL"}


# --- the webhook URL is checked at upload --------------------------------------------------

REFUSED_WEBHOOKS = [
    ("http://10.0.0.5/hook", refused("10.0.0.5")),
    ("https://169.254.169.254/latest/meta-data", refused("169.254.169.254")),
    ("http://192.168.1.10:8080/hook", refused("192.168.1.10")),
    ("http://100.64.0.1/hook", refused("100.64.0.1")),
    ("http://127.0.0.1:9/hook", refused("127.0.0.1")),
    ("http://0.0.0.0/hook", refused("0.0.0.0")),
    ("http://localhost/hook", refused("127.0.0.1")),
    ("http://LOCALHOST:8080/hook", refused("127.0.0.1")),
    ("http://2130706433/hook", refused("127.0.0.1")),
    ("http://0177.0.0.1/hook", refused("127.0.0.1")),
    ("http://0x7f.1/hook", refused("127.0.0.1")),
    ("http://167772165/hook", refused("10.0.0.5")),
    (
        "http://0x08.0x08.0x08.0x08/hook",
        "address not allowed: 0x08.0x08.0x08.0x08 (an unusual spelling of 8.8.8.8)",
    ),
    ("http://[::1]/hook", refused("::1")),
    ("http://[::]/hook", refused("::")),
    ("http://[fe80::1%25eth0]/hook", refused("fe80::1")),
    ("http://[fd00::1]/hook", refused("fd00::1")),
    (
        "http://[::ffff:10.0.0.5]/hook",
        refused(f"{_mapped('10.0.0.5')}, which carries 10.0.0.5"),
    ),
    (
        "http://[64:ff9b::a9fe:a9fe]/hook",
        refused("64:ff9b::a9fe:a9fe, which carries 169.254.169.254"),
    ),
    ("http://[2002:a00:5::]/hook", refused("2002:a00:5::, which carries 10.0.0.5")),
    ("http://nothing.invalid/hook", "cannot resolve nothing.invalid"),
]


@pytest.mark.loopback_only
@pytest.mark.parametrize(("url", "reason"), REFUSED_WEBHOOKS)
async def test_webhook_url_to_a_forbidden_address_is_refused_at_upload(
    create_service: ServiceFactory, url: str, reason: str
) -> None:
    service = await create_service(fetch={"allowed_networks": ()})
    data = csv_bytes([["1", "Shirt", "http://127.0.0.1/a.jpg"]])

    resp = await service.upload(data, webhook_url=url)

    assert resp.status == 400
    assert await resp.json() == {"error": f"webhook_url not allowed: {reason}"}
    assert list((service.settings.data_dir / "uploads").iterdir()) == []


@pytest.mark.loopback_only
async def test_webhook_url_in_the_query_is_checked_too(create_service: ServiceFactory) -> None:
    service = await create_service(fetch={"allowed_networks": ()})
    form = aiohttp.FormData()
    form.add_field("file", csv_bytes([["1", "Shirt", "http://127.0.0.1/a.jpg"]]), filename="a.csv")
    async with service.client.post(
        f"{service.url}/upload", params={"webhook_url": "http://10.1.2.3/"}, data=form
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": f"webhook_url not allowed: {refused('10.1.2.3')}"}


async def test_allowed_networks_exempt_a_webhook_url_which_is_then_delivered(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver, tmp_path: Path
) -> None:
    """The control: with its network allowed, the same kind of URL is accepted and reached."""
    image = origin.add("a.jpg", images.photo_jpeg(32, 32))
    webhook = receiver.url.replace("127.0.0.1", "localhost")
    # Two services side by side: each has a data directory of its own (each locks its own).
    closed = await create_service(
        fetch={"allowed_networks": ()},
        database={"path": str(tmp_path / "closed" / "csvcompress.sqlite3")},
    )
    refused = await closed.upload(csv_bytes([["1", "Shirt", image]]), webhook_url=webhook)
    assert refused.status == 400

    service = await create_service(fetch={"allowed_networks": ("127.0.0.1/32",)})
    request_id = await service.submit(csv_bytes([["1", "Shirt", image]]), webhook)
    doc = await service.wait(request_id)
    received = await receiver.wait_for(1)
    assert doc["webhook"]["url"] == webhook
    assert [event.payload["data"]["request_id"] for event in received] == [request_id]


# --- the body is streamed and cut off at the limit -----------------------------------------

LIMIT = 256 * 1024
TOO_LARGE = {"error": f"the file is larger than the limit of {LIMIT} bytes"}


class Feed:
    """An async generator body that would go on for `total` bytes; counts what was taken."""

    def __init__(self, head: bytes, repeat: bytes, total: int = 512 * 1024 * 1024) -> None:
        self.head = head
        self.repeat = repeat
        self.total = total
        self.sent = 0

    async def __call__(self) -> AsyncIterator[bytes]:
        yield self.head
        self.sent += len(self.head)
        while self.sent < self.total:
            yield self.repeat
            self.sent += len(self.repeat)


async def _post_stream(service: Service, feed: Feed) -> tuple[int, Any, int]:
    """POST the feed chunked (no Content-Length); (status, JSON, bytes sent at the answer)."""
    async with service.client.post(
        f"{service.url}/upload", data=feed(), headers={"Content-Type": MULTIPART}
    ) as resp:
        sent_at_answer = feed.sent
        return resp.status, await resp.json(), sent_at_answer


@pytest.mark.parametrize(
    ("name", "head", "repeat"),
    [
        # The file part never ends.
        ("endless file", FILE_PART_HEAD, ROW),
        # A part the service skips never ends: skipping must count too.
        (
            "endless other field",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'.encode(),
            b"x" * 32768,
        ),
        # Nothing but preamble before the first boundary.
        ("endless preamble", b"", b"preamble line\r\n" * 2000),
        # An endless webhook_url field: only its first 2049 bytes are read as the URL.
        (
            "endless webhook field",
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="webhook_url"\r\n\r\n'.encode(),
            b"http://a/" * 4000,
        ),
    ],
)
async def test_a_chunked_body_is_cut_off_mid_stream_at_the_limit(
    create_service: ServiceFactory, name: str, head: bytes, repeat: bytes
) -> None:
    service = await create_service(limits={"max_upload_bytes": LIMIT})
    feed = Feed(head, repeat)

    status, body, sent = await _post_stream(service, feed)

    assert (status, body) == (413, TOO_LARGE), name
    # Answered while the client was still sending: far less than the whole body went out
    # (what went past the limit sat in socket buffers).
    assert LIMIT < sent < feed.total // 8, sent
    assert list((service.settings.data_dir / "uploads").iterdir()) == []
    # And the service still answers.
    async with service.client.get(f"{service.url}/status/nope") as resp:
        assert resp.status == 404


async def test_a_declared_length_over_the_limit_is_refused_before_reading(
    create_service: ServiceFactory,
) -> None:
    service = await create_service(limits={"max_upload_bytes": LIMIT})
    reader, writer = await asyncio.open_connection("127.0.0.1", service.settings.server.port)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Type: {MULTIPART}\r\nContent-Length: {10 * LIMIT}\r\n\r\n".encode()
            + FILE_PART_HEAD
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        (
            "multipart/form-data",
            b"anything",
            "the multipart/form-data body is malformed: "
            "boundary missed for Content-Type: multipart/form-data",
        ),
        (
            MULTIPART,
            b"no boundary anywhere",
            f"the multipart/form-data body is malformed: "
            f"Could not find starting boundary b'--{BOUNDARY}'",
        ),
        (
            MULTIPART,
            f"--{BOUNDARY}--\r\n".encode(),
            "no file: send the CSV in a form field named 'file'",
        ),
    ],
)
async def test_malformed_multipart_is_400(
    create_service: ServiceFactory, content_type: str, body: bytes, message: str
) -> None:
    service = await create_service()
    async with service.client.post(
        f"{service.url}/upload", data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": message}


# --- fuzz: whatever is posted, the answer is a JSON refusal, never a 500 -------------------

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def _assert_refused(resp: aiohttp.ClientResponse) -> None:
    # Every fuzzed body is far below the 64 KiB limit: too large (413) would be a wrong answer.
    assert resp.status == 400, (resp.status, await resp.text())
    body = await resp.json()
    assert isinstance(body["error"], str) and body["error"]


@pytest.fixture
async def fuzz_service(create_service: ServiceFactory) -> Service:
    return await create_service(limits={"max_upload_bytes": 64 * 1024})


@FUZZ
@given(data=st.binary(max_size=4096))
async def test_random_bytes_as_the_csv_are_refused(fuzz_service: Service, data: bytes) -> None:
    resp = await fuzz_service.upload(data)
    await _assert_refused(resp)


_PIECES = st.sampled_from(
    [
        f"--{BOUNDARY}",
        f"--{BOUNDARY}--",
        "\r\n",
        "\n",
        'Content-Disposition: form-data; name="file"; filename="a.csv"',
        'Content-Disposition: form-data; name="webhook_url"',
        "Content-Disposition: form-data; name=",
        "Content-Disposition: attachment; filename*=UTF-8''%E2%82",
        "Content-Type: multipart/mixed; boundary=inner",
        "--inner",
        "Content-Transfer-Encoding: base64",
        "Content-Encoding: gzip",
        'name="_charset_"',
        "S. No.,Product Name,Input Image Urls",
        "1,Shirt,http://127.0.0.1/a.jpg",
        "http://10.0.0.5/",
        "\x00",
        "\xff\xfe",
    ]
)
_BODIES = st.lists(st.one_of(_PIECES, st.text(max_size=20)), max_size=40).map(
    lambda pieces: "".join(pieces).encode("utf-8", "surrogatepass")
)
_CONTENT_TYPES = st.one_of(
    st.just(MULTIPART),
    st.just("multipart/form-data"),
    st.just("multipart/mixed; boundary=x"),
    # Any boundary a client can send: no control characters in a header.
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40).map(
        lambda t: "multipart/form-data; boundary=" + t
    ),
)


@FUZZ
@given(content_type=_CONTENT_TYPES, body=_BODIES)
async def test_random_multipart_bodies_are_refused(
    fuzz_service: Service, content_type: str, body: bytes
) -> None:
    """Structured garbage: boundaries, part headers and CSV bits in any order.

    Such a body may by chance hold a valid CSV; it must then be accepted (202).
    """
    headers = {"Content-Type": content_type}
    async with fuzz_service.client.post(
        f"{fuzz_service.url}/upload", data=body, headers=headers
    ) as resp:
        if resp.status == 202:
            # Accepted only when the garbage happened to carry a real CSV, header and all.
            assert b"S. No.,Product Name,Input Image Urls" in body
            assert (await resp.json())["request_id"]
        else:
            await _assert_refused(resp)


async def test_the_service_still_works_after_the_fuzz(
    fuzz_service: Service, origin: Origin
) -> None:
    image = origin.add("a.jpg", images.photo_jpeg(32, 32))
    for _ in range(20):
        async with fuzz_service.client.post(
            f"{fuzz_service.url}/upload", data=b"\x00" * 100, headers={"Content-Type": MULTIPART}
        ) as resp:
            await _assert_refused(resp)
    doc = await fuzz_service.wait(await fuzz_service.submit(csv_bytes([["1", "S", image]])))
    assert doc["images"]["succeeded"] == 1
