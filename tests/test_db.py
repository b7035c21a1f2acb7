"""Database: queries under the concurrency the service really has."""

from __future__ import annotations

import asyncio

from tests import images
from tests.conftest import Origin, ServiceFactory, csv_bytes

UPLOADS = 20


async def test_uploads_while_status_is_read_all_finish(
    create_service: ServiceFactory, origin: Origin
) -> None:
    """Reads of the shared connection (the page polls /status) never hide a fresh upload."""
    service = await create_service()
    url = origin.add("a.jpg", images.photo_jpeg(16, 16))
    ids: list[str] = []
    stop = asyncio.Event()

    async def poll() -> None:
        while not stop.is_set():
            for request_id in ids[-3:]:
                await service.status(request_id)
            async with service.client.get(f"{service.url}/requests?limit=5") as resp:
                await resp.read()

    pollers = [asyncio.create_task(poll()) for _ in range(3)]
    try:
        for n in range(UPLOADS):
            ids.append(await service.submit(csv_bytes([[str(n), "P", url]])))
        docs = [await service.wait(request_id, timeout=20) for request_id in ids]
    finally:
        stop.set()
        await asyncio.gather(*pollers)
    assert {doc["status"] for doc in docs} == {"complete"}
