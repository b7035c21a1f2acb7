"""The middleware list: its order, and every error leaving as JSON built by the hierarchy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from csvcompress.config import ServerSettings
from csvcompress.errors import ServiceUnavailable, ShuttingDown, Unauthorized
from csvcompress.http.middleware import (
    error_middleware,
    middlewares,
    refuse_when_stopping,
    request_context,
)
from tests.conftest import ServiceFactory

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def test_the_list_is_errors_then_key_then_stopping_then_log_context() -> None:
    without_key = middlewares(ServerSettings())
    assert without_key == [error_middleware, refuse_when_stopping, request_context]
    with_key = middlewares(ServerSettings(api_key="k" * 32))
    assert len(with_key) == 4
    assert with_key[0] is error_middleware
    assert with_key[2:] == [refuse_when_stopping, request_context]


async def _raise_unauthorized(request: web.Request) -> web.Response:
    raise Unauthorized("missing or wrong API key")


async def _raise_stopping(request: web.Request) -> web.Response:
    raise ShuttingDown(retry_after=30)


async def _raise_unavailable(request: web.Request) -> web.Response:
    raise ServiceUnavailable("storage is down")


async def _raise_bug(request: web.Request) -> web.Response:
    raise RuntimeError("a bug with a secret in it")


@pytest.mark.parametrize(
    ("handler", "status", "body", "headers"),
    [
        (
            _raise_unauthorized,
            401,
            {"error": "missing or wrong API key"},
            {"WWW-Authenticate": 'Bearer realm="csvcompress"'},
        ),
        (
            _raise_stopping,
            503,
            {"error": "the service is shutting down; try again shortly"},
            {"Retry-After": "30"},
        ),
        (_raise_unavailable, 503, {"error": "storage is down"}, {}),
        (_raise_bug, 500, {"error": "internal error"}, {}),
    ],
)
async def test_errors_leave_as_json_with_their_headers(
    aiohttp_client: ClientFactory,
    handler: Callable[[web.Request], Awaitable[web.Response]],
    status: int,
    body: dict[str, str],
    headers: dict[str, str],
) -> None:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)

    resp = await client.get("/")

    assert resp.status == status
    assert resp.content_type == "application/json"
    assert await resp.json() == body
    for name, value in headers.items():
        assert resp.headers[name] == value
    if not headers:
        assert "Retry-After" not in resp.headers


async def test_unknown_route_and_wrong_method_are_json(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/nowhere") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not Found"}
    async with service.client.get(f"{service.url}/upload") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert await resp.json() == {"error": "Method Not Allowed"}
