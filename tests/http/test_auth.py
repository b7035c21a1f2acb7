"""The optional API key, against the real service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from csvcompress.config import ServerSettings
from csvcompress.errors import ConfigError
from csvcompress.http.auth import is_protected, key_matches
from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin
from tests.waiting import poll

KEY = "k3y-0123456789abcdef"
GOOD = {"Authorization": f"Bearer {KEY}"}
REFUSAL = {"error": "missing or wrong API key"}


@dataclass
class Answer:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


async def _upload(service: Service, data: bytes, headers: dict[str, str]) -> Answer:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="products.csv", content_type="text/csv")
    async with service.client.post(f"{service.url}/upload", data=form, headers=headers) as resp:
        return Answer(resp.status, await resp.json(), resp.headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer ключ"},
        {"X-API-Key": KEY},
    ],
)
async def test_api_routes_refuse_without_the_key(
    create_service: ServiceFactory, origin: Origin, headers: dict[str, str]
) -> None:
    service = await create_service(server={"api_key": KEY})
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))

    resp = await _upload(service, csv_bytes([["1", "Shirt", a]]), headers)
    assert resp.status == 401
    assert resp.body == REFUSAL
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="csvcompress"'
    # Nothing was stored or fetched.
    assert list((service.settings.data_dir / "uploads").glob("*")) == []
    assert origin.hits["a.jpg"] == 0

    async with service.client.get(f"{service.url}/status/nope", headers=headers) as got:
        assert got.status == 401
        assert await got.json() == REFUSAL
        assert got.headers["WWW-Authenticate"].startswith("Bearer")
    # Routes under /requests/ other than the output CSV need the key too.
    redeliver = f"{service.url}/requests/nope/webhook/redeliver"
    async with service.client.post(redeliver, headers=headers) as got:
        assert got.status == 401
        assert await got.json() == REFUSAL
    async with service.client.post(redeliver, headers=GOOD) as got:
        assert got.status == 404


async def test_the_key_opens_upload_and_status_but_output_stays_open(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service(server={"api_key": KEY})
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))

    resp = await _upload(service, csv_bytes([["1", "Shirt", a]]), GOOD)
    assert resp.status == 202
    request_id = resp.body["request_id"]
    # The scheme is case-insensitive (RFC 7235), and surrounding spaces are ignored.
    lower = {"Authorization": f"bearer  {KEY} "}

    async def status() -> Any:
        async with service.client.get(f"{service.url}/status/{request_id}", headers=lower) as got:
            assert got.status == 200
            return await got.json()

    doc = await poll(status, until=lambda doc: doc["status"] == "complete", what="completion")
    assert doc["status"] == "complete"
    # Capability URLs: the output CSV and the images it lists need no key.
    async with service.client.get(doc["output_csv_url"]) as got:
        assert got.status == 200
        text = await got.text()
    image_url = text.splitlines()[1].split(",")[-2]
    assert image_url.startswith(f"{service.url}/files/{request_id}/")
    async with service.client.get(image_url) as got:
        assert got.status == 200
        assert got.content_type == "image/jpeg"
    async with service.client.get(f"{service.url}/") as got:
        assert got.status == 200


async def test_without_a_key_everything_is_open(
    create_service: ServiceFactory, origin: Origin
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(32, 32))
    request_id = await service.submit(csv_bytes([["1", "Shirt", a]]))
    doc = await service.wait(request_id)
    assert doc["status"] == "complete"


async def test_unknown_paths_and_wrong_methods_are_not_401(create_service: ServiceFactory) -> None:
    service = await create_service(server={"api_key": KEY})
    async with service.client.get(f"{service.url}/nothing-here") as got:
        assert got.status == 404
        assert await got.json() == {"error": "Not Found"}
    async with service.client.get(f"{service.url}/files/nope/1-1.jpg") as got:
        assert got.status == 404
        assert await got.json() == {"error": "no such file"}
    async with service.client.get(f"{service.url}/upload") as got:
        assert got.status == 405
        assert got.headers["Allow"] == "POST"
        assert await got.json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize(
    ("method", "template", "protected"),
    [
        ("POST", "/upload", True),
        ("GET", "/status/{request_id}", True),
        ("GET", "/requests", True),
        # The request page is HTML without data; deleting the request is not a read.
        ("GET", "/requests/{request_id}", False),
        ("HEAD", "/requests/{request_id}", False),
        ("DELETE", "/requests/{request_id}", True),
        ("POST", "/requests/{request_id}/retry", True),
        ("POST", "/requests/{request_id}/webhook/redeliver", True),
        ("GET", "/requests/{id}/images", True),
        ("GET", "/requests/{request_id}/output.csv", False),
        ("GET", "/requests/{id}/output.csv", False),
        ("GET", "/requests/{request_id}/output.csv/x", True),
        ("GET", "/", False),
        ("GET", "/static", False),
        ("GET", "/files", False),
        ("GET", "/healthz", False),
        ("GET", "/metrics", False),
        ("GET", "/openapi.json", False),
        ("GET", "/uploads", False),
        ("GET", "/statusboard", False),
    ],
)
def test_protected_routes_rule(method: str, template: str, protected: bool) -> None:
    assert is_protected(template, method) is protected


def test_key_matches() -> None:
    assert key_matches(f"Bearer {KEY}", KEY)
    assert key_matches(f"BEARER {KEY}", KEY)
    assert not key_matches(None, KEY)
    assert not key_matches("", KEY)
    assert not key_matches(f"Bearer{KEY}", KEY)
    assert not key_matches(f"Token {KEY}", KEY)
    assert not key_matches("Bearer \udcff", KEY)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("short", "server.api_key: must be at least 16 characters (or empty for no key)"),
        ("with a space inside it", "server.api_key: must be printable ASCII without spaces"),
        ("non-ascii-ключ-0123456", "server.api_key: must be printable ASCII without spaces"),
        ("tab\tinside-0123456789", "server.api_key: must be printable ASCII without spaces"),
    ],
)
def test_bad_keys_stop_the_start(key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerSettings(api_key=key).validate()
    assert info.value.message == message


async def test_control_routes_need_the_api_key_when_one_is_set(
    create_service: ServiceFactory,
) -> None:
    key = "k" * 32
    service = await create_service(server={"api_key": key})
    request_id = "0" * 32
    for method, path in (("DELETE", ""), ("POST", "/retry")):
        url = f"{service.url}/requests/{request_id}{path}"
        async with service.client.request(method, url) as resp:
            assert resp.status == 401, (method, path)
        headers = {"Authorization": f"Bearer {key}"}
        async with service.client.request(method, url, headers=headers) as resp:
            assert resp.status == 404, (method, path)
    async with service.client.get(f"{service.url}/healthz") as resp:
        assert resp.status == 200
    async with service.client.get(f"{service.url}/metrics") as resp:
        assert resp.status == 200
