"""Factories for the real parts tests talk to: an image origin and the service itself."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from csvcompress.app import create_app
from csvcompress.config import Settings, replace_settings

LOOPBACK = ("127.0.0.0/8",)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the image origin ---------------------------------------------------------------

OriginHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Origin:
    """A real HTTP server serving image bytes; counts every hit per path."""

    url: str
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    handlers: dict[str, OriginHandler] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    delay: float = 0.0

    def add(self, path: str, data: bytes, content_type: str = "image/jpeg") -> str:
        self.files[path] = (data, content_type)
        return f"{self.url}/{path}"

    def route(self, path: str, handler: OriginHandler) -> str:
        self.handlers[path] = handler
        return f"{self.url}/{path}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.hits[path] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if path in self.handlers:
            return await self.handlers[path](request)
        if path not in self.files:
            raise web.HTTPNotFound()
        data, content_type = self.files[path]
        return web.Response(body=data, content_type=content_type)


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    app = web.Application()
    port = free_port()
    server = Origin(url=f"http://127.0.0.1:{port}")
    app.router.add_get("/{path:.+}", server._serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server
    await runner.cleanup()


# --- the service under test ------------------------------------------------------------


def make_settings(tmp_path: Path, port: int, **sections: dict[str, Any]) -> Settings:
    """Settings for a service on `port` keeping everything under tmp_path."""
    base = Settings()
    defaults: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port},
        "database": {"path": str(tmp_path / "data" / "csvcompress.sqlite3")},
        "storage": {"dir": str(tmp_path / "data" / "storage")},
        "fetch": {"allowed_networks": LOOPBACK, "backoff": 0.01, "timeout": 10.0},
        "workers": {"threads": 2},
    }
    for name, values in sections.items():
        defaults.setdefault(name, {}).update(values)
    return replace_settings(base, **defaults)


@dataclass
class Service:
    """A running service and a client to talk to it."""

    settings: Settings
    client: aiohttp.ClientSession
    runner: web.AppRunner

    @property
    def url(self) -> str:
        return self.settings.server.base_url

    async def upload(
        self,
        csv_bytes: bytes,
        webhook_url: str | None = None,
        filename: str = "products.csv",
    ) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("file", csv_bytes, filename=filename, content_type="text/csv")
        if webhook_url is not None:
            form.add_field("webhook_url", webhook_url)
        resp = await self.client.post(f"{self.url}/upload", data=form)
        await resp.read()
        return resp

    async def submit(self, csv_bytes: bytes, webhook_url: str | None = None) -> str:
        resp = await self.upload(csv_bytes, webhook_url)
        assert resp.status == 202, await resp.text()
        request_id: str = (await resp.json())["request_id"]
        return request_id

    async def status(self, request_id: str) -> dict[str, Any]:
        async with self.client.get(f"{self.url}/status/{request_id}") as resp:
            assert resp.status == 200, await resp.text()
            doc: dict[str, Any] = await resp.json()
            return doc

    async def wait(self, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = await self.status(request_id)
            if doc["status"] in ("complete", "failed"):
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"request did not finish in {timeout} s: {doc}")
            await asyncio.sleep(0.05)

    async def output_rows(self, doc: dict[str, Any]) -> list[dict[str, str]]:
        async with self.client.get(doc["output_csv_url"]) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/csv"
            text = await resp.text()
        return list(csv.DictReader(io.StringIO(text)))

    async def get_bytes(self, url: str) -> tuple[bytes, str]:
        async with self.client.get(url) as resp:
            assert resp.status == 200, url
            return await resp.read(), resp.content_type


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def create_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """create_service(**sections) starts a real service; all are stopped after the test."""
    started: list[Service] = []
    client = aiohttp.ClientSession()

    async def create(**sections: dict[str, Any]) -> Service:
        port = free_port()
        settings = make_settings(tmp_path, port, **sections)
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        service = Service(settings=settings, client=client, runner=runner)
        started.append(service)
        return service

    yield create
    for service in started:
        await service.runner.cleanup()
    await client.close()


def csv_bytes(
    rows: Sequence[Sequence[str]],
    header: Sequence[str] = ("S. No.", "Product Name", "Input Image Urls"),
    newline: str = "\r\n",
) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


# --- a webhook receiver ------------------------------------------------------------


@dataclass
class HookReceiver:
    """A real HTTP endpoint answering 200 to every POST; keeps the JSON bodies."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return await wait_for_deliveries(self.received, count, timeout)


async def wait_for_deliveries(received: list[T], count: int, timeout: float) -> list[T]:
    """`received` once it holds `count` deliveries (a receiver appends them as they come)."""
    deadline = time.monotonic() + timeout
    while len(received) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(received)} deliveries, expected {count}")
        await asyncio.sleep(0.02)
    return received


@pytest.fixture
async def hook_receiver() -> AsyncIterator[HookReceiver]:
    port = free_port()
    receiver = HookReceiver(url=f"http://127.0.0.1:{port}/hook")

    async def hook(request: web.Request) -> web.Response:
        receiver.received.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield receiver
    await runner.cleanup()


# --- a listener that counts connections ---------------------------------------------


@dataclass
class Listener:
    """A TCP server that counts connections and answers any request with "ok"."""

    host: str
    port: int = 0
    connections: int = 0
    server: asyncio.Server | None = field(default=None, repr=False)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


MakeListener = Callable[[str], Awaitable[Listener]]


@pytest.fixture
async def make_listener() -> AsyncIterator[MakeListener]:
    """make_listener(host) listens on a free port of `host`; all are closed after the test."""
    made: list[Listener] = []

    async def create(host: str) -> Listener:
        listener = Listener(host)
        listener.server = await asyncio.start_server(listener._handle, host, 0)
        listener.port = listener.server.sockets[0].getsockname()[1]
        made.append(listener)
        return listener

    yield create
    for listener in made:
        assert listener.server is not None
        listener.server.close()
        await listener.server.wait_closed()
