"""The middleware of the app, in one ordered list (`middlewares`), outermost first.

1. `error_middleware`: every error leaves as JSON built by the error hierarchy, with its
   status and headers: what a handler raises, what the middleware below raise (the 401,
   the 503 while stopping), aiohttp's own 404/405, and bugs (logged, not shown).
   Outermost, so nothing below it can answer with a traceback or text.
2. The API key check (`auth`), when a key is set: before anything else looks at the
   request, so a caller without the key learns nothing, not even that the service stops.
3. `refuse_when_stopping`: new uploads get 503 + Retry-After while the service shuts
   down, so a load balancer sends the work elsewhere; reads still work.
4. `request_context`: innermost, so exactly the handler's log lines carry the request ID
   the URL names.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from csvcompress import logs
from csvcompress.config import ServerSettings
from csvcompress.errors import (
    ClientGone,
    CsvCompressError,
    HTTPRefused,
    RequestTimeout,
    ShuttingDown,
)
from csvcompress.http import auth
from csvcompress.http.keys import SERVICE

log = logging.getLogger(__name__)

# Headers of aiohttp's own errors that mean something to the client (Allow on 405).
KEPT_ERROR_HEADERS = frozenset({"Allow", "WWW-Authenticate", "Retry-After", "Location"})
# Routes that take in new work, refused while the service shuts down.
REFUSED_WHEN_STOPPING = frozenset({("POST", "/upload")})
RETRY_AFTER_STOPPING = 30
"""Seconds a client refused while the service stops is told to wait (Retry-After)."""


def middlewares(server: ServerSettings) -> list[Middleware]:
    """The app's middleware, outermost first (see the module's docstring for why)."""
    chain: list[Middleware | None] = [
        error_middleware,
        auth.api_key_middleware(server),
        refuse_when_stopping,
        request_context,
    ]
    return [middleware for middleware in chain if middleware is not None]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with its public message; bugs are logged, not shown."""
    try:
        return await handler(request)
    except CsvCompressError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k in KEPT_ERROR_HEADERS}
        error = HTTPRefused(exc.status, exc.reason, kept)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError as exc:
        # The client went away mid-request (an upload cut off): its business, one line.
        log.info("client went away during %s %s: %s", request.method, request.path, exc)
        error = ClientGone()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = CsvCompressError("internal error")
    response = web.json_response(error.to_json(), status=error.status, headers=error.headers)
    if request.content.exception() is not None or isinstance(error, RequestTimeout):
        _drop_unread_body(request, response)
    return response


def _drop_unread_body(request: web.Request, response: web.StreamResponse) -> None:
    """A body that broke mid-way (it does not decode as its Content-Encoding says) or
    that was too slow to arrive is not read to its end: answer, then close the
    connection. Marked ended, so aiohttp does not linger reading the rest after the
    answer (and log a broken body's error as unhandled)."""
    request.content.feed_eof()
    response.force_close()


@web.middleware
async def refuse_when_stopping(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse new work while the service shuts down: 503 with Retry-After."""
    refused = (request.method, request.path) in REFUSED_WHEN_STOPPING
    if refused and request.app[SERVICE].dispatcher.stopping:
        raise ShuttingDown(retry_after=RETRY_AFTER_STOPPING)
    return await handler(request)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the handler's log lines with the request the URL names, if it names one."""
    request_id = request.match_info.get("request_id")
    if request_id is None:
        return await handler(request)
    with logs.request_context(request_id):
        return await handler(request)
