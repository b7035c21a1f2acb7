"""The real local servers tests talk to: an image origin, a webhook receiver, a listener.

Each one listens on a port the operating system picks, works on whichever event loop
starts it (the security tests run theirs in a thread of its own), and when closed ends
every answer it was holding back. The fixtures in conftest.py make them for a test and
close them after it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from tests.waiting import TIMEOUT, Changes

HOST = "127.0.0.1"
# What an endless body repeats.
CHUNK = b"\xff" * 65536

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def free_port() -> int:
    """A port nothing listens on, for now: for a process that must be told its port before
    it starts, or for a URL that must be refused. A server the test starts itself binds
    port 0 instead (serve() below), so no other process can take its port in between."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Served:
    """An aiohttp application listening on a port of its own."""

    runner: web.AppRunner
    host: str
    port: int
    sock: socket.socket | None = None  # the socket it was handed, closed with it

    @property
    def url(self) -> str:
        return f"http://{netloc(self.host, self.port)}"

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.sock is not None:
            self.sock.close()


async def serve(
    app: web.Application,
    host: str = HOST,
    *,
    sock: socket.socket | None = None,
    **runner_options: Any,
) -> Served:
    """Start `app` on `sock`, or on a port of `host` that the OS picks as it binds."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, 0)
    await site.start()
    port: int = runner.addresses[0][1]
    return Served(runner, host, port, sock)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


# --- scripted answers ------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    `delay` is part of a scenario (a slow server), not a wait for anything; `held` answers
    only after the server's next release() (or its close).
    """

    body: bytes = b""
    content_type: str | None = None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    held: bool = False


Answer = Reply | Handler


def status(code: int, **headers: str) -> Reply:
    """An answer with no body: status(204), status(429, **{"Retry-After": "1"})."""
    return Reply(status=code, headers=headers)


@dataclass
class _Script:
    answers: Sequence[Answer]
    gate: asyncio.Event  # what its held answers and hanging bodies wait for


class _Scripted:
    """A server answering from scripts: the n-th request gets the n-th answer, and the
    last answer is repeated for every request after it.

    Held answers and hanging bodies wait for the release() that follows their setting up:
    a release opens what was set up before it, for good, and what is set up after it
    waits for the next one. Closing the server releases everything.
    """

    url = ""

    def __init__(self) -> None:
        self.changes = Changes()
        self._gate = asyncio.Event()
        self._served: Served | None = None

    def release(self) -> None:
        """Let everything held so far answer, now and whenever it is asked again."""
        self._gate.set()
        self._gate = asyncio.Event()

    async def close(self) -> None:
        """Release everything and stop listening."""
        self._gate.set()
        if self._served is not None:
            await self._served.close()
            self._served = None

    def gate(self) -> asyncio.Event:
        """What the next release() sets: for a handler of the test's own to wait on."""
        return self._gate

    def _script(self, answers: Sequence[Answer]) -> _Script:
        return _Script(answers, self._gate)

    async def _answer(self, request: web.Request, script: _Script, n: int) -> web.StreamResponse:
        answer = script.answers[min(n, len(script.answers)) - 1]
        if not isinstance(answer, Reply):
            return await answer(request)
        if answer.delay:
            await asyncio.sleep(answer.delay)  # a slow server: the scenario itself
        if answer.held:
            await script.gate.wait()
        return web.Response(
            status=answer.status,
            body=answer.body,
            content_type=answer.content_type,
            headers=dict(answer.headers),
        )


# --- the image origin ------------------------------------------------------------------


class Origin(_Scripted):
    """A real HTTP server serving image bytes; counts every hit per path.

    Paths are given without the leading slash; the query does not count. add() serves
    bytes, or anything a plain answer can be (add(path, status=404), a redirect with a
    Location header); script() answers each hit with the next reply or handler;
    endless(), drip() and stall() send bodies that misbehave until released.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hits: Counter[str] = Counter()
        # Seconds every answer takes: a slow origin, part of a scenario.
        self.delay = 0.0
        self._scripts: dict[str, _Script] = {}

    async def start(self, host: str = HOST) -> None:
        app = web.Application()
        app.router.add_get("/{path:.+}", self._serve)
        self._served = await serve(app, host)
        self.url = self._served.url

    def script(self, path: str, *answers: Answer) -> str:
        """Answer the hits on `path` in turn (the last answer repeats); its URL."""
        self._scripts[path] = self._script(answers)
        return f"{self.url}/{path}"

    def add(
        self,
        path: str,
        data: bytes = b"",
        content_type: str = "image/jpeg",
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        held: bool = False,
    ) -> str:
        """Serve `data` at `path` (replacing what was there); its URL."""
        reply = Reply(data, content_type, status, headers or {}, delay, held)
        return self.script(path, reply)

    def route(self, path: str, handler: Handler) -> str:
        """Answer every hit on `path` with `handler`; its URL."""
        return self.script(path, handler)

    def endless(self, path: str) -> str:
        """A chunked body that never ends."""

        released = self._gate

        async def endless(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            while not released.is_set():
                try:
                    await response.write(CHUNK)
                except (OSError, RuntimeError):  # the client hung up
                    break
            return response

        return self.script(path, endless)

    def drip(self, path: str, data: bytes, every: float) -> str:
        """`data` (its length announced) one byte every `every` seconds."""

        released = self._gate

        async def drip(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = len(data)
            await response.prepare(request)
            for byte in data:
                try:
                    await response.write(bytes([byte]))
                except (OSError, RuntimeError):
                    break
                if await _set_within(released, every):
                    break
            return response

        return self.script(path, drip)

    def stall(self, path: str, length: int, sent: bytes = b"") -> str:
        """Announces `length` bytes, sends `sent`, then nothing more until released."""

        released = self._gate

        async def stall(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            response.content_length = length
            await response.prepare(request)
            if sent:
                await response.write(sent)
            await released.wait()
            return response

        return self.script(path, stall)

    async def wait_for_hits(self, count: int, *paths: str, timeout: float = TIMEOUT) -> None:
        """Return once `paths` (any path, if none is named) were asked for `count` times."""

        def seen() -> int:
            return sum(self.hits[p] for p in paths) if paths else self.hits.total()

        await self.changes.wait_until(
            lambda: seen() >= count,
            what=f"{count} request(s) for {', '.join(paths) or 'any path'}",
            show=lambda: dict(self.hits),
            timeout=timeout,
        )

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        self.hits[path] += 1
        self.changes.notify()
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow origin: the scenario itself
        if path not in self._scripts:
            raise web.HTTPNotFound()
        return await self._answer(request, self._scripts[path], self.hits[path])


# --- the webhook receiver --------------------------------------------------------------


@dataclass
class Received:
    """One delivery as it arrived, and what verifying its signature said."""

    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival
    verified: Any = None  # the payload standardwebhooks' verifier returned
    refused: str | None = None  # why the verifier refused it

    @property
    def payload(self) -> Any:
        """The delivered JSON, which must have carried a valid signature."""
        assert self.refused is None, f"signature refused: {self.refused}"
        return self.verified


class Receiver(_Scripted):
    """A real webhook endpoint at /hook: keeps every delivery, verifies its Standard
    Webhooks signature with `secret`, and answers as scripted (script()). /elsewhere
    counts visits: a redirect target never to be reached.
    """

    def __init__(self, secret: str | None) -> None:
        super().__init__()
        self.secret = secret
        self._replies = self._script([status(204)])
        self.received: list[Received] = []
        self.other_hits = 0

    async def start(self, host: str = HOST) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_route("*", "/elsewhere", self._other)
        self._served = await serve(app, host)
        self.url = f"{self._served.url}/hook"

    def script(self, *answers: Answer) -> None:
        """Answer the deliveries in turn (the last answer repeats); 204 until told."""
        self._replies = self._script(answers)

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """The deliveries, once there are `count` of them."""
        await self.changes.wait_until(
            lambda: len(self.received) >= count,
            what=f"{count} webhook deliveries",
            show=lambda: len(self.received),
            timeout=timeout,
        )
        return self.received

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        got = Received(dict(request.headers), body, time.time())
        if self.secret is None:
            got.refused = "the receiver has no secret to verify with"
        else:
            try:
                got.verified = Webhook(self.secret).verify(body, dict(request.headers))
            except WebhookVerificationError as exc:
                got.refused = str(exc)
        self.received.append(got)
        self.changes.notify()
        return await self._answer(request, self._replies, len(self.received))

    async def _other(self, request: web.Request) -> web.StreamResponse:
        self.other_hits += 1
        return web.Response(status=204)


# --- the listener ----------------------------------------------------------------------


class Listener:
    """A bare TCP server on `host` that counts connections and answers any request with
    "ok" (no Content-Type): a forbidden destination to prove no connection was made, or
    an HTTP server plainer than aiohttp."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def netloc(self) -> str:
        return netloc(self.host, self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
