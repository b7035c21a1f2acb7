"""Fixtures for the real parts tests talk to: an image origin, a webhook receiver,
listeners, any other aiohttp app, and the service itself. Each fixture is a factory or
an object that is closed after the test, whatever the test left running."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import logging
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from csvcompress.app import create_app, runner_options
from csvcompress.config import ENV_PREFIX, Settings, replace_settings
from tests.servers import HOST, Listener, Origin, Receiver, Served, serve
from tests.waiting import RequestWaits

LOOPBACK = ("127.0.0.0/8",)
# The signing secret of every service a test starts (unless it asks for another) and of
# the receiver, so that every delivery a test reads is verified.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


# Variables that steer the test run itself (`make screenshots`), not the service.
TEST_SWITCHES = {"CSVCOMPRESS_SCREENSHOTS"}


@pytest.fixture(scope="session", autouse=True)
def _no_settings_from_the_shell() -> Iterator[None]:
    """Tests do not depend on the shell: a CSVCOMPRESS_* variable there would change every
    service they start, in this process or in a process of its own."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX) and name not in TEST_SWITCHES:
                patch.delenv(name)
        yield


# --- tests that name addresses off this machine -------------------------------------------

LOOPBACK_ONLY = "loopback_only"
"""Marks a test that names private, link-local or public addresses and relies on the
network guard to keep the service from reaching them. It runs only where nothing but
loopback can be reached (tests/test_loopback_only.py runs these tests in a network
namespace of their own), so traffic cannot leave the machine even if the guard broke."""


def only_loopback_reachable() -> bool:
    """Whether this process's network namespace has no interface but loopback."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{LOOPBACK_ONLY}: run only in a loopback-only network namespace"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker(LOOPBACK_ONLY) and not only_loopback_reachable():
        pytest.skip("names addresses off this machine: run by tests/test_loopback_only.py")


# --- servers the service talks to --------------------------------------------------------


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = Origin()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver(WEBHOOK_SECRET)
    await server.start()
    yield server
    await server.close()


MakeListener = Callable[[str], Awaitable[Listener]]


@pytest.fixture
async def make_listener() -> AsyncIterator[MakeListener]:
    """make_listener(host) listens on a port of `host`; all are closed after the test."""
    made: list[Listener] = []

    async def create(host: str) -> Listener:
        listener = Listener(host)
        await listener.start()
        made.append(listener)
        return listener

    yield create
    for listener in made:
        await listener.close()


ServeApp = Callable[[web.Application], Awaitable[Served]]


@pytest.fixture
async def serve_app() -> AsyncIterator[ServeApp]:
    """serve_app(app) runs any other aiohttp app on 127.0.0.1; all stop after the test."""
    served: list[Served] = []

    async def create(app: web.Application) -> Served:
        served.append(await serve(app))
        return served[-1]

    yield create
    for one in served:
        await one.close()


# --- the service under test ------------------------------------------------------------


def make_settings(tmp_path: Path, port: int, **sections: dict[str, Any]) -> Settings:
    """Settings for a service on `port` keeping everything under tmp_path."""
    base = Settings()
    defaults: dict[str, dict[str, Any]] = {
        "server": {"host": HOST, "port": port},
        "database": {"path": str(tmp_path / "data" / "csvcompress.sqlite3")},
        "storage": {"dir": str(tmp_path / "data" / "storage")},
        "fetch": {"allowed_networks": LOOPBACK, "backoff": 0.01, "timeout": 10.0},
        "workers": {"threads": 2},
        "webhook": {"secret": WEBHOOK_SECRET},
    }
    for name, values in sections.items():
        defaults.setdefault(name, {}).update(values)
    return replace_settings(base, **defaults)


# Where each table keeps the request a row belongs to.
REQUEST_COLUMN = {"requests": "request_id", "images": "request_id", "deliveries": "request_id"}


@dataclass
class Service(RequestWaits):
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

    def rows(self, request_id: str) -> dict[str, int]:
        """How many rows of each table belong to the request, read from the database."""
        with sqlite3.connect(self.settings.database.path) as conn:
            return {
                table: conn.execute(
                    f"SELECT count(*) FROM {table} WHERE {column} = ?", (request_id,)
                ).fetchone()[0]
                for table, column in REQUEST_COLUMN.items()
            }

    def files(self, request_id: str) -> list[Path]:
        """The request's stored images (its folder), output CSV and uploaded CSV."""
        data_dir = Path(self.settings.database.path).parent
        return [
            Path(self.settings.storage.dir) / request_id,
            data_dir / "outputs" / f"{request_id}.csv",
            data_dir / "uploads" / f"{request_id}.csv",
        ]


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def create_service(tmp_path: Path) -> AsyncIterator[ServiceFactory]:
    """create_service(**sections) starts a real service; all are stopped after the test."""
    stops: list[Served] = []
    client = aiohttp.ClientSession()

    async def create(**sections: dict[str, Any]) -> Service:
        # The port is bound before the settings name it, so no one else can take it.
        sock = socket.socket()
        try:
            sock.bind((HOST, 0))
            settings = make_settings(tmp_path, sock.getsockname()[1], **sections)
            served = await serve(create_app(settings), sock=sock, **runner_options(settings))
        except BaseException:  # refused settings, a service that would not start
            sock.close()
            raise
        service = Service(settings=settings, client=client, runner=served.runner)
        stops.append(served)
        return service

    yield create
    for served in stops:
        await served.close()
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


def refused(address: str) -> str:
    """The reason a user reads for an address the network guard refuses: it names the
    setting that would allow it."""
    return (
        f"address not allowed: {address} (private and loopback addresses are refused; "
        "allow a network with [fetch] allowed_networks)"
    )


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """What a user reading the log checks: no traceback, no ERROR line."""
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.levelname} {r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait (asyncio.sleep of more than 0 s) asked for during the test, in order; none
    really waits. For back-off and Retry-After: the test reads the waits instead of a clock."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, result: Any = None) -> Any:
        if delay > 0:
            asked.append(delay)
        return await real_sleep(0, result)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return asked
