"""The browser pages and their assets; the pages at work in a real browser: test_browser.py."""

from __future__ import annotations

import json

from csvcompress.http.pages import STATIC_DIR
from csvcompress.models import UNFINISHED_STATUSES
from tests.conftest import ServiceFactory


async def test_index_serves_the_upload_form(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/") as resp:
        assert resp.status == 200
        assert "<form" in await resp.text()


async def test_the_request_page_is_html_without_data(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/requests/{'0' * 32}") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert "0" * 32 not in await resp.text()


async def test_statuses_js_is_written_from_the_models(create_service: ServiceFactory) -> None:
    service = await create_service()
    async with service.client.get(f"{service.url}/static/statuses.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert resp.headers["Cache-Control"] == "no-cache"
        text = await resp.text()
    [line] = [line for line in text.splitlines() if line.startswith("export const")]
    name, _, value = line.removeprefix("export const ").rstrip(";").partition(" = ")
    assert name == "UNFINISHED_STATUSES"
    assert json.loads(value) == [status.value for status in UNFINISHED_STATUSES]


def test_no_script_keeps_its_own_copy_of_the_unfinished_states() -> None:
    scripts = {path.name: path.read_text() for path in STATIC_DIR.glob("*.js")}
    assert 'from "./statuses.js"' in scripts["common.js"]
    for name, text in scripts.items():
        for status in UNFINISHED_STATUSES:
            assert f'"{status.value}"' not in text, (name, status.value)
