"""GET /openapi.json: a valid OpenAPI document that describes every route and real response."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator import validate
from werkzeug.datastructures import Headers, ImmutableMultiDict

from csvcompress.http.keys import SERVICE
from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin, Receiver

# Served files, not part of the API.
UNDESCRIBED = {"/static/{name}"}
# aiohttp route -> its OpenAPI path, where OpenAPI cannot say "a parameter holding /".
SPELLED_AS = {"/files/{key}": "/files/{request_id}/{file}"}


@dataclass
class Call:
    """A request as openapi-core reads it (its Request protocol)."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str = ""
    body: bytes | None = None


@dataclass
class Answer:
    """A response as openapi-core reads it (its Response protocol)."""

    status_code: int
    content_type: str
    headers: Mapping[str, str]
    data: bytes


@dataclass
class Checker:
    """Makes real calls to the service and checks each response against its document."""

    service: Service
    spec: OpenAPI
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    async def call(self, method: str, path: str, *, data: Any = None) -> tuple[int, bytes]:
        url = f"{self.service.url}{path}"
        async with self.service.client.request(method, url, data=data) as resp:
            body = await resp.read()
            answer = Answer(resp.status, resp.headers.get("Content-Type", ""), resp.headers, body)
        parts = urlsplit(url)
        call = Call(
            host_url=f"{parts.scheme}://{parts.netloc}",
            path=parts.path,
            method=method.lower(),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qsl(parts.query)), header=Headers()
            ),
        )
        if data is None and answer.status_code < 400:
            self.spec.validate_request(call)
        self.spec.validate_response(call, answer)
        self.seen.add((method, parts.path, resp.status))
        return resp.status, body


async def _spec(service: Service) -> dict[str, Any]:
    async with service.client.get(f"{service.url}/openapi.json") as resp:
        assert resp.status == 200
        spec: dict[str, Any] = await resp.json()
        return spec


def _form(data: bytes, webhook_url: str | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="products.csv", content_type="text/csv")
    if webhook_url:
        form.add_field("webhook_url", webhook_url)
    return form


async def test_the_document_is_valid_openapi(create_service: ServiceFactory) -> None:
    service = await create_service()
    spec = await _spec(service)

    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema

    assert spec["openapi"].startswith("3.")
    assert spec["servers"] == [{"url": service.url}]


async def test_every_route_is_described_and_nothing_else(create_service: ServiceFactory) -> None:
    service = await create_service()
    spec = await _spec(service)
    routes = {
        (route.method.lower(), SPELLED_AS.get(route.resource.canonical, route.resource.canonical))
        for route in service.runner.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    described = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    }

    assert {r for r in routes if r[1] not in UNDESCRIBED} == described


async def test_live_responses_match_the_document(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service(limits={"max_upload_bytes": 4000})
    checker = Checker(service, OpenAPI.from_dict(await _spec(service)))
    a = origin.add("a.jpg", images.photo_jpeg(64, 48))
    slow = origin.add("slow.jpg", images.photo_jpeg(48, 32, seed=5), held=True)
    good = csv_bytes([["1", "Shirt", f"{a}, {origin.url}/missing.jpg"], ["2", "Hat", a]])
    refused = csv_bytes([["1", "x", ""]])
    too_big = csv_bytes([[str(n), "x" * 80, a] for n in range(100)])

    # Multipart request bodies are not checked (only their answers are).
    status, body = await checker.call("POST", "/upload", data=_form(good, receiver.url))
    assert status == 202
    finished = json.loads(body)["request_id"]
    assert (await checker.call("POST", "/upload", data=_form(refused)))[0] == 400
    assert (await checker.call("POST", "/upload", data={"x": "1"}))[0] == 400
    assert (await checker.call("POST", "/upload", data=_form(too_big)))[0] == 413

    running = await service.submit(csv_bytes([["1", "Slow", slow]]))
    try:
        await service.wait_until(running, lambda doc: doc["status"] == "processing", "processing")
        assert (await checker.call("GET", f"/status/{running}"))[0] == 200
        assert (await checker.call("GET", "/requests?status=processing&limit=5"))[0] == 200
        assert (await checker.call("GET", f"/requests/{running}/images"))[0] == 200
        assert (await checker.call("GET", f"/requests/{running}/output.csv"))[0] == 404
    finally:
        origin.release()
    await service.wait(running)
    await service.wait_until(
        finished,
        lambda doc: (doc["webhook"] or {}).get("state") == "delivered",
        "the webhook to be delivered",
    )

    for path in (
        "/",
        f"/requests/{finished}",
        f"/status/{finished}",
        "/status/nope",
        "/requests",
        "/requests?limit=1",
        "/requests?cursor=x",
        f"/requests/{finished}/images?limit=1",
        f"/requests/{finished}/images?limit=0",
        "/requests/nope/images",
        f"/requests/{finished}/output.csv",
        "/requests/nope/output.csv",
        f"/files/{finished}/1-1.jpg",
        f"/files/{finished}/9-9.jpg",
        "/openapi.json",
        f"/thumbnails/{finished}/999999-before.webp",
    ):
        await checker.call("GET", path)
    listing = await service.client.get(f"{service.url}/requests/{finished}/images")
    thumbnail = (await listing.json())["images"][0]["thumbnails"]["after"]
    assert (await checker.call("GET", thumbnail.removeprefix(service.url)))[0] == 200
    redeliver = "/requests/{}/webhook/redeliver"
    assert (await checker.call("POST", redeliver.format(finished)))[0] == 202
    assert (await checker.call("POST", redeliver.format("nope")))[0] == 404
    assert (await checker.call("POST", redeliver.format(running)))[0] == 409

    # Control: retry, cancel, delete; then health, metrics, and a stop beginning.
    retry = "/requests/{}/retry"
    assert (await checker.call("POST", retry.format(running)))[0] == 409  # nothing failed
    assert (await checker.call("POST", retry.format("nope")))[0] == 404
    assert (await checker.call("POST", retry.format(finished)))[0] == 202
    await service.wait(finished)
    held = origin.add("held.jpg", status=404, held=True)
    cancelled = await service.submit(csv_bytes([["1", "Held", held]]))
    try:
        await service.wait_until(cancelled, lambda doc: doc["status"] == "processing", "processing")
        assert (await checker.call("DELETE", f"/requests/{cancelled}"))[0] == 200
        # Its image is still in flight: it cannot be removed yet.
        assert (await checker.call("DELETE", f"/requests/{cancelled}"))[0] == 409
    finally:
        origin.release()
    await service.wait_until(
        cancelled, lambda doc: doc["output_csv_url"] is not None, "the output CSV"
    )
    assert (await checker.call("DELETE", f"/requests/{cancelled}"))[0] == 204
    assert (await checker.call("DELETE", "/requests/nope"))[0] == 404
    assert (await checker.call("GET", "/healthz"))[0] == 200
    assert (await checker.call("GET", "/metrics"))[0] == 200
    await service.runner.app[SERVICE].dispatcher.drain(0)
    assert (await checker.call("GET", "/healthz"))[0] == 503
    assert (await checker.call("POST", retry.format(finished)))[0] == 503

    # Every documented (method, path, status) was answered for real at least once.
    spec = await _spec(service)
    documented = {
        (method.upper(), path, int(code))
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
        for code in operation["responses"]
    }
    called = {(method, _template(spec, path), status) for method, path, status in checker.seen}
    assert documented - called == set()


def _template(spec: dict[str, Any], path: str) -> str:
    """The document's path template that a concrete path matches."""
    parts = path.strip("/").split("/")
    for template in spec["paths"]:
        pattern = template.strip("/").split("/")
        if template == "/" and path == "/":
            return template
        if len(pattern) == len(parts) and all(
            t.startswith("{") or t == p for t, p in zip(pattern, parts, strict=True)
        ):
            return template
    raise AssertionError(f"no path in the document matches {path}")
