"""A local stand-in for Cloudinary's Upload and Admin APIs, for tests and the benchmark.

It checks what the real API checks before storing anything: the cloud name, the
API key, a fresh timestamp and the request's signature, computed with the SDK's
own signing function (cloudinary.utils.api_sign_request) and the test secret. It
answers with the fields Cloudinary's upload response has (public_id, version,
secure_url https://res.cloudinary.com/<cloud>/image/upload/v<version>/<public_id>.<format>,
format, bytes, width, height, ...), and keeps assets in a dict keyed by full public
ID, so a second upload under the same ID replaces the first (overwrite=true) instead
of adding an asset: duplicates would be visible as extra keys.

The folder layout is that of a "fixed folders" environment: slashes in a public ID
are its folders.

Run alone (for tests/bench_cloudinary.py): python -m tests.fake_cloudinary --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pyvips
from aiohttp import web
from cloudinary.utils import api_sign_request

from tests.servers import HOST, Served, serve

# Fields Cloudinary leaves out of the string to sign.
UNSIGNED_FIELDS = frozenset({"file", "api_key", "resource_type", "cloud_name", "signature"})
STALE_AFTER = 3600
VIPS_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "heif": "avif"}


@dataclass
class Asset:
    public_id: str
    resource_type: str
    data: bytes
    format: str
    version: int
    width: int | None = None
    height: int | None = None

    @property
    def secure_url(self) -> str:
        suffix = f".{self.format}" if self.resource_type == "image" else ""
        return f"/{self.resource_type}/upload/v{self.version}/{self.public_id}{suffix}"


@dataclass
class Attempt:
    """One upload request as it arrived, whatever was answered."""

    at: float
    public_id: str
    fields: dict[str, str]
    status: int = 0


@dataclass
class FakeCloudinary:
    cloud_name: str = "demo-cloud"
    api_key: str = "614335564976464"
    api_secret: str = "fake-secret-QTVf1bZl2x"
    url: str = ""
    assets: dict[str, Asset] = field(default_factory=dict)
    # Every upload request in arrival order, and every stored upload's public ID.
    attempts: list[Attempt] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    # Canned (status, headers) answers for the next upload requests, before any check.
    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    # Seconds between storing an upload and answering it.
    answer_delay: float = 0.0
    unanswered: int = 0
    # Upload requests being handled (a request that arrived whole is handled, and its
    # upload stored, even if the client is gone).
    handling: int = 0
    # Client (host, port) pairs seen: one per TCP connection.
    peers: set[tuple[str, int]] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    delete_page: int = 1000
    _version: int = 1_700_000_000
    _served: Served | None = None

    @property
    def cloudinary_url(self) -> str:
        return f"cloudinary://{self.api_key}:{self.api_secret}@{self.cloud_name}"

    def secure_url(self, asset: Asset) -> str:
        return f"https://res.cloudinary.com/{self.cloud_name}{asset.secure_url}"

    def fail_next(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.script.append((status, headers or {}))

    def upload_attempts(self, public_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.public_id == public_id]

    # --- server ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1_1/{cloud}/{resource_type}/upload", self._upload)
        app.router.add_delete("/v1_1/{cloud}/resources/{resource_type}/upload", self._delete)
        app.router.add_get("/v1_1/{cloud}/ping", self._ping)
        app.router.add_get("/_stats", self._stats)
        return app

    async def start(self, port: int = 0) -> str:
        sock = socket.socket()
        sock.bind((HOST, port))
        self._served = await serve(self.app(), sock=sock, access_log=None)
        self.url = self._served.url
        return self.url

    async def stop(self) -> None:
        if self._served is not None:
            await self._served.close()

    # --- Upload API -----------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        self._saw(request)
        self.handling += 1
        try:
            form = await request.post()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            upload = form.get("file")
            attempt = Attempt(time.monotonic(), _full_public_id(fields), fields)
            self.attempts.append(attempt)
            response = await self._answer_upload(request, fields, upload)
            attempt.status = response.status
            return response
        finally:
            self.handling -= 1

    async def _answer_upload(
        self, request: web.Request, fields: dict[str, str], upload: Any
    ) -> web.Response:
        if self.script:
            status, headers = self.script.popleft()
            return _error(status, f"scripted failure {status}", headers)
        refusal = self._check_auth(request.match_info["cloud"], fields)
        if refusal is not None:
            return refusal
        if not isinstance(upload, web.FileField):
            return _error(400, "Missing required parameter - file")
        data = upload.file.read()
        resource_type = request.match_info["resource_type"]
        public_id = _full_public_id(fields) or uuid.uuid4().hex[:20]
        existing = self.assets.get(public_id)
        if existing is not None and fields.get("overwrite") not in ("1", "true"):
            return web.json_response(self._describe(existing) | {"existing": True})
        try:
            asset = self._asset(public_id, resource_type, data)
        except pyvips.Error:
            return _error(400, "Invalid image file")
        self.assets[public_id] = asset
        self.stored.append(public_id)
        self.unanswered += 1
        try:
            await asyncio.sleep(self.answer_delay)
        finally:
            self.unanswered -= 1
        answer = self._describe(asset) | {"original_filename": PurePosixPath(upload.filename).stem}
        if existing is not None:
            answer["overwritten"] = True
        return web.json_response(answer)

    def _check_auth(self, cloud: str, fields: dict[str, str]) -> web.Response | None:
        if cloud != self.cloud_name:
            return self._refuse(f"Invalid cloud_name {cloud}")
        if fields.get("api_key") != self.api_key:
            return self._refuse(f"Unknown API key {fields.get('api_key')}")
        timestamp = fields.get("timestamp", "")
        if not timestamp.isdigit():
            return _error(400, "Missing required parameter - timestamp")
        if abs(time.time() - int(timestamp)) > STALE_AFTER:
            return _error(400, f"Stale request - reported time is {timestamp}")
        signed = {k: v for k, v in fields.items() if k not in UNSIGNED_FIELDS}
        expected = api_sign_request(signed, self.api_secret)
        if fields.get("signature") != expected:
            to_sign = "&".join(f"{k}={v}" for k, v in sorted(signed.items()))
            return self._refuse(
                f"Invalid Signature {fields.get('signature')}. String to sign - '{to_sign}'."
            )
        return None

    def _refuse(self, message: str) -> web.Response:
        self.refusals.append(message)
        return _error(401, message)

    def _asset(self, public_id: str, resource_type: str, data: bytes) -> Asset:
        self._version += 1
        if resource_type != "image":
            return Asset(public_id, resource_type, data, "", self._version)
        image = pyvips.Image.new_from_buffer(data, "")
        loader = str(image.get("vips-loader")).removesuffix("load_buffer")
        fmt = VIPS_FORMATS.get(loader, loader)
        return Asset(public_id, "image", data, fmt, self._version, image.width, image.height)

    def _describe(self, asset: Asset) -> dict[str, Any]:
        signature = api_sign_request(
            {"public_id": asset.public_id, "version": asset.version},
            self.api_secret,
            signature_version=1,
        )
        secure = self.secure_url(asset)
        described: dict[str, Any] = {
            "asset_id": hashlib.md5(asset.public_id.encode()).hexdigest(),
            "public_id": asset.public_id,
            "version": asset.version,
            "version_id": uuid.uuid4().hex,
            "signature": signature,
            "resource_type": asset.resource_type,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tags": [],
            "bytes": len(asset.data),
            "type": "upload",
            "etag": hashlib.md5(asset.data).hexdigest(),
            "placeholder": False,
            "url": secure.replace("https://", "http://", 1),
            "secure_url": secure,
            "asset_folder": str(PurePosixPath(asset.public_id).parent).strip("."),
            "display_name": PurePosixPath(asset.public_id).name,
            "api_key": self.api_key,
        }
        if asset.resource_type == "image":
            described |= {"format": asset.format, "width": asset.width, "height": asset.height}
        return described

    # --- Admin API ------------------------------------------------------------------

    async def _delete(self, request: web.Request) -> web.Response:
        self._saw(request)
        refusal = self._check_basic_auth(request)
        if refusal is not None:
            return refusal
        prefix = request.query.get("prefix", "")
        resource_type = request.match_info["resource_type"]
        matching = [
            a.public_id
            for a in self.assets.values()
            if a.resource_type == resource_type and a.public_id.startswith(prefix)
        ]
        page = matching[: self.delete_page]
        for public_id in page:
            del self.assets[public_id]
        answer: dict[str, Any] = {
            "deleted": {p: "deleted" for p in page},
            "deleted_counts": {p: {"original": 1, "derived": 0} for p in page},
            "partial": len(matching) > len(page),
        }
        if len(matching) > len(page):
            answer["next_cursor"] = uuid.uuid4().hex
        return web.json_response(answer)

    async def _ping(self, request: web.Request) -> web.Response:
        self._saw(request)
        return self._check_basic_auth(request) or web.json_response({"status": "ok"})

    def _check_basic_auth(self, request: web.Request) -> web.Response | None:
        if request.match_info["cloud"] != self.cloud_name:
            return self._refuse(f"Invalid cloud_name {request.match_info['cloud']}")
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return self._refuse("Must supply api_key")
        if scheme != "Basic" or (login, password) != (self.api_key, self.api_secret):
            return self._refuse("Invalid api_key or api_secret")
        return None

    # --- for the benchmark ------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        stats = {
            "uploads": len(self.stored),
            "assets": len(self.assets),
            "connections": len(self.peers),
        }
        if request.query.get("reset"):
            self.assets.clear()
            self.stored.clear()
            self.attempts.clear()
            self.peers.clear()
        return web.json_response(stats)

    def _saw(self, request: web.Request) -> None:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if peer is not None:
            self.peers.add((str(peer[0]), int(peer[1])))


def _full_public_id(fields: dict[str, str]) -> str:
    public_id = fields.get("public_id", "")
    folder = fields.get("folder", "").strip("/")
    return f"{folder}/{public_id}" if folder and public_id else public_id


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps({"error": {"message": message}}),
        content_type="application/json",
        headers=headers,
    )


async def _serve(port: int) -> None:
    fake = FakeCloudinary()
    url = await fake.start(port)
    print(json.dumps({"url": url, "cloudinary_url": fake.cloudinary_url}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a fake Cloudinary API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_serve(parser.parse_args().port))
