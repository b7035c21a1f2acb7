"""Slow clients, clients that go away, and malformed requests, over raw sockets to the real
service: each is cut off or answered with a clear 4xx, holds nothing afterwards, and puts
at most one INFO line in the log, never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Service, ServiceFactory, assert_no_traceback, csv_bytes
from tests.waiting import poll

BOUNDARY = "slow-boundary"
CSV = csv_bytes([["1", "Shirt", "http://127.0.0.1/a.jpg"]])
# A pause between two bytes of a trickling client: the scenario, not a wait for an event.
TRICKLE = 0.1
# Generous bound proving "cut off, not stuck": many times the limits the tests set.
NOT_STUCK = 20.0


@contextlib.asynccontextmanager
async def connection(
    service: Service,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", service.settings.server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def trickle_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    """Send `data` a byte at a time until the server closes; what the server sent."""

    async def send() -> None:
        for byte in data:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(TRICKLE)

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(NOT_STUCK):
            # Stop sending at the server's first byte (or its close): bytes sent after it
            # closed would make it reset the connection, losing its answer.
            first = await read_quietly(reader, 1)
            sender.cancel()
            return first + (await read_quietly(reader) if first else b"")
    finally:
        sender.cancel()


async def read_quietly(reader: asyncio.StreamReader, n: int = -1) -> bytes:
    """What the server sent, up to its close; a reset connection ends the answer too."""
    try:
        return await reader.read(n)
    except ConnectionResetError:
        return b""


def upload_head(length: int) -> bytes:
    return (
        "POST /upload HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="a.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    ).encode() + CSV


def part_files(service: Service) -> list[Path]:
    uploads = service.settings.data_dir / "uploads"
    return sorted(uploads.glob("*.part")) if uploads.exists() else []


async def test_headers_trickling_in_are_cut_off(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await create_service(limits={"header_timeout": 1.0})
    async with connection(service) as (reader, writer):
        answer = await trickle_until_closed(
            reader, writer, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
        )
    assert answer == b""  # closed without a word: no request ever arrived
    async with service.client.get(f"{service.url}/healthz") as resp:
        assert resp.status == 200
    assert_no_traceback(caplog)


async def test_an_upload_body_trickling_in_is_cut_off_with_408(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await create_service(limits={"upload_timeout": 1.0})
    head = upload_head(100_000)
    async with connection(service) as (reader, writer):
        writer.write(head)
        answer = await trickle_until_closed(
            reader, writer, b"2,Hat,http://127.0.0.1/b.jpg\r\n" * 50
        )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert rest.endswith(b'{"error": "the upload took longer than 1 s; it was cut off"}')
    assert b"Connection: close" in rest
    assert part_files(service) == []
    assert_no_traceback(caplog)


async def test_uploads_in_progress_are_capped_with_503(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    service = await create_service(limits={"max_uploads_in_progress": 1})
    async with connection(service) as (_reader, writer):
        writer.write(upload_head(100_000))  # and then nothing: it stays in progress
        await writer.drain()
        await poll(lambda: part_files(service), what="the first upload to be in progress")

        resp = await service.upload(CSV)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        assert await resp.json() == {
            "error": "1 uploads are in progress already; try again shortly"
        }
    # The first one went away: its slot and its file are free again.
    await poll(lambda: not part_files(service), what="the abandoned upload's file to go")
    assert (await service.upload(CSV)).status == 202
    assert_no_traceback(caplog)


async def test_a_client_that_goes_away_mid_upload_is_one_info_line(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    service = await create_service()
    async with connection(service) as (_reader, writer):
        writer.write(upload_head(100_000))
        await writer.drain()
        await poll(lambda: part_files(service), what="the upload to be in progress")
    await poll(lambda: not part_files(service), what="the abandoned upload's file to go")
    gone = await poll(
        lambda: [r for r in caplog.records if "client went away" in r.getMessage()],
        what="the line saying the client went away",
    )
    assert [r.levelno for r in gone] == [logging.INFO]
    assert gone[0].getMessage().startswith("client went away during POST /upload")
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "request_line",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # TLS to a plain port
        b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # an 8 KB request line
        "GET /caf\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),  # raw non-ASCII
        "G\u00c9T / HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers
        b"\r\n\r\n\r\n",
    ],
)
async def test_a_malformed_request_is_400_without_a_traceback(
    create_service: ServiceFactory, caplog: pytest.LogCaptureFixture, request_line: bytes
) -> None:
    # Blank lines are skipped while waiting for a request line: cut off by the header limit.
    service = await create_service(limits={"header_timeout": 1.0})
    for _ in range(3):  # a flood of them is as quiet as one
        async with connection(service) as (reader, writer):
            writer.write(request_line)
            await writer.drain()
            async with asyncio.timeout(NOT_STUCK):
                answer = await reader.read()
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ", b"HTTP/1.1 505 ")) or (
            answer == b""
        ), answer[:200]
    async with service.client.get(f"{service.url}/healthz") as resp:
        assert resp.status == 200
    assert_no_traceback(caplog)
