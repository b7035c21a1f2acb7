"""What an operator's tools call: /healthz, /metrics, and the request context of every line.

`/healthz` answers 200 only when the service could do its job now and after a
restart: the database files are writable and a real write commits (see
`Store.check`), and storage takes a write (`Storage.check`).
Otherwise 503, naming the part that failed. While the service shuts down it answers 503
"stopping", so a load balancer sends new work elsewhere.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from csvcompress.errors import StorageError
from csvcompress.http.keys import SERVICE, Service
from csvcompress.logs import request_context
from csvcompress.store import StoreUnavailable

# Seconds the health check waits for SQLite's write lock; the service's own writes take
# milliseconds, a lock held longer than this means the database is stuck.
DATABASE_CHECK_TIMEOUT = 2.0
# Seconds a storage check may take (a remote backend answers over the network).
STORAGE_CHECK_TIMEOUT = 5.0
# Routes that take in new work, refused while the service shuts down.
REFUSED_WHEN_STOPPING = frozenset({("POST", "/upload")})
RETRY_AFTER_STOPPING = "30"
OK = "ok"


async def check_database(service: Service) -> str:
    try:
        await service.db.check(DATABASE_CHECK_TIMEOUT)
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
    if service.queue.stopping:
        status = "stopping"
    elif all(result == OK for result in checks.values()):
        status = OK
    else:
        status = "unhealthy"
    return web.json_response(
        {"status": status, "checks": checks},
        status=200 if status == OK else 503,
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await service.metrics.render(service.db)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def ops_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse new work while stopping; tag log lines with the request the URL names."""
    service = request.app[SERVICE]
    if service.queue.stopping and (request.method, request.path) in REFUSED_WHEN_STOPPING:
        return web.json_response(
            {"error": "the service is shutting down; try again shortly"},
            status=503,
            headers={"Retry-After": RETRY_AFTER_STOPPING},
        )
    request_id = request.match_info.get("request_id")
    if request_id is None:
        return await handler(request)
    with request_context(request_id):
        return await handler(request)


def setup_ops_routes(app: web.Application) -> None:
    app.middlewares.append(ops_middleware)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
