"""What an operator's tools call: /healthz and /metrics.

`/healthz` answers 200 only when the service could do its job now and after a
restart: the database files are writable and a real write commits (see
`Store.check`), and storage takes a write (`Storage.check`).
Otherwise 503, naming the part that failed. While the service shuts down it answers 503
"stopping", so a load balancer sends new work elsewhere (new uploads are refused then:
see `middleware.refuse_when_stopping`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from csvcompress.documents import health_document
from csvcompress.errors import StorageError
from csvcompress.http.keys import SERVICE, Service
from csvcompress.store import StoreUnavailable

# Seconds the health check waits for SQLite's write lock; the service's own writes take
# milliseconds, a lock held longer than this means the database is stuck.
DATABASE_CHECK_TIMEOUT = 2.0
# Seconds a storage check may take (a remote backend answers over the network).
STORAGE_CHECK_TIMEOUT = 5.0
OK = "ok"


async def check_database(service: Service) -> str:
    try:
        await service.store.check(DATABASE_CHECK_TIMEOUT)
    except StoreUnavailable as exc:
        return str(exc)
    return OK


async def check_storage(service: Service) -> str:
    try:
        await asyncio.wait_for(service.storage.check(), STORAGE_CHECK_TIMEOUT)
    except StorageError as exc:
        return exc.message
    except TimeoutError:
        return f"no answer within {STORAGE_CHECK_TIMEOUT:g} s"
    return OK


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    database, storage = await asyncio.gather(check_database(service), check_storage(service))
    checks = {"database": database, "storage": storage}
    if service.dispatcher.stopping:
        status = "stopping"
    elif all(result == OK for result in checks.values()):
        status = OK
    else:
        status = "unhealthy"
    return web.json_response(
        health_document(status, checks),
        status=200 if status == OK else 503,
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await service.metrics.render(service.store)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
