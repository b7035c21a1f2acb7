"""The optional API key: `[server] api_key`, empty means off.

When a key is set, the API routes answer 401 unless the request carries
``Authorization: Bearer <api_key>``. Which routes are API routes is decided
by one rule, on the route that matched (its path template, so no spelling
of a path can slip past): a route under one of `PROTECTED_PREFIXES` needs
the key, unless it is one of `OPEN_ROUTES`; every other route is open.

- Protected: ``/upload``, ``/status/{id}`` and everything under ``/requests/``.
- Open: the browser page ``/`` and ``/static``, the output images under
  ``/files/``, health checks and API descriptions (``/healthz``,
  ``/openapi.json``), and ``/requests/{id}/output.csv``. The output CSV is a
  capability URL: its 122-bit random request ID cannot be guessed, and it is
  handed to webhook receivers, which do not hold the key. The images it lists
  are open for the same reason.
"""

from __future__ import annotations

import hmac
import re

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from csvcompress.config import ServerSettings
from csvcompress.errors import Unauthorized

# Path templates (as routes are declared) that need the key, with everything below them.
PROTECTED_PREFIXES = ("/upload", "/status", "/requests")
# Routes under a protected prefix that stay open for reading; matched against the
# route's template. The request page is HTML with no data in it (its script asks the
# API with the key); the output CSV is an unguessable link also handed to webhooks.
# DELETE on the page's template stays protected: only reads are open.
OPEN_ROUTES = (
    re.compile(r"/requests/\{[^}/]+\}/output\.csv"),
    re.compile(r"/requests/\{[^}/]+\}"),
)
READ_METHODS = frozenset({"GET", "HEAD"})

UNAUTHORIZED_MESSAGE = "missing or wrong API key"
_BEARER = "bearer "


def is_protected(template: str, method: str = "GET") -> bool:
    """Whether `method` on the route declared with path `template` needs the API key."""
    under = any(template == p or template.startswith(p + "/") for p in PROTECTED_PREFIXES)
    if not under:
        return False
    if method not in READ_METHODS:
        return True
    return not any(pattern.fullmatch(template) for pattern in OPEN_ROUTES)


def key_matches(authorization: str | None, api_key: str) -> bool:
    """Whether an Authorization header carries `api_key` as a Bearer token.

    The comparison takes the same time wherever the strings differ.
    """
    if not authorization or authorization[: len(_BEARER)].lower() != _BEARER:
        return False
    token = authorization[len(_BEARER) :].strip()
    return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), api_key.encode())


def api_key_middleware(settings: ServerSettings) -> Middleware | None:
    """The middleware that asks for the key (401 without it), or None when no key is set."""
    api_key = settings.api_key
    if not api_key:
        return None

    @web.middleware
    async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is None or not is_protected(resource.canonical, request.method):
            return await handler(request)
        if key_matches(request.headers.get("Authorization"), api_key):
            return await handler(request)
        raise Unauthorized(UNAUTHORIZED_MESSAGE)

    return require_api_key
