"""What the benchmark measures, one function per figure."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any

import aiohttp
import pyvips

from csvcompress.bench.corpus import Corpus, csv_bytes
from csvcompress.bench.service import (
    ServiceProcess,
    cpu_seconds,
    is_complete,
    status,
    thread_cpu_seconds,
    upload,
    wait_until,
)
from csvcompress.config import ImageSettings, WorkerSettings
from csvcompress.errors import ImageRejected
from csvcompress.pipeline import colour, cpupool, imaging
from csvcompress.pipeline.admission import WEBP_EFFORT


@dataclass(frozen=True)
class Origin:
    url: str
    pid: int


MIB = 1024 * 1024
# Rows of the throughput CSVs carry this many URLs each (the example has 2).
URLS_PER_ROW = 2
# Status latency: requests outstanding at once at most, and how long one may take.
MAX_OUTSTANDING = 200
REQUEST_TIMEOUT = 5.0
# The job under the status-latency client must still be running when it stops.
LATENCY_JOB_SECONDS_PER_IMAGE = 0.01


@dataclass(frozen=True)
class Throughput:
    label: str
    images: int
    seconds: float
    bytes_in: int
    bytes_out: int
    failed: int = 0
    peak_rss_mb: float | None = None
    startup_seconds: float | None = None
    # CPU time per image of the process doing the work, and of the origin serving it.
    cpu_ms: float = 0.0
    origin_cpu_ms: float = 0.0
    # The service's CPU per image by group of threads (see service.thread_cpu_seconds).
    thread_cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def saved(self) -> int:
        return self.bytes_in - self.bytes_out


def _recompress_size(data: bytes, settings: ImageSettings) -> int:
    try:
        return len(imaging.recompress(data, settings).data)
    except ImageRejected:
        return -1


def raw(corpus: Corpus, count: int, settings: ImageSettings, threads: int) -> Throughput:
    """imaging.recompress from memory in `threads` threads: what the service does per image
    (sniff, header, limits, decode, rotate, colour, encode), without I/O or bookkeeping."""
    payloads = corpus.payloads(count)
    # As the service does: the pool gives one image per core, under the same pixel budget.
    imaging.configure(concurrency=1, pixel_budget=WorkerSettings().pixel_budget)
    # The service's pool (same thread count, same priority), so the comparison is fair.
    with cpupool.create(WorkerSettings(threads=threads)) as pool:
        cpu = time.process_time()
        started = time.perf_counter()
        sizes = list(pool.map(_recompress_size, payloads, repeat(settings)))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    ok = [(len(p), s) for p, s in zip(payloads, sizes, strict=True) if s >= 0]
    label = f"raw {settings.engine}, {threads} threads, from memory"
    if settings.optimize_coding != ImageSettings.optimize_coding:
        label += f", optimize_coding={settings.optimize_coding}"
    return Throughput(
        label=label,
        images=count,
        seconds=seconds,
        bytes_in=sum(p for p, _ in ok),
        bytes_out=sum(s for _, s in ok),
        failed=count - len(ok),
        cpu_ms=cpu * 1000 / count,
    )


def _server_seconds(doc: dict[str, Any]) -> float:
    """From the request's creation (before the 202) to its completion, by the service's clock."""
    created = datetime.fromisoformat(doc["created_at"])
    finished = datetime.fromisoformat(doc["updated_at"])
    return (finished - created).total_seconds()


async def end_to_end(
    session: aiohttp.ClientSession,
    workdir: Path,
    origin: Origin,
    corpus: Corpus,
    count: int,
    images: Mapping[str, Any],
    env: Mapping[str, str],
) -> Throughput:
    """Upload a CSV of `count` distinct URLs to a fresh service; time it to `complete`."""
    service = ServiceProcess(workdir, {"images": images}, env)
    startup = await service.start(session)
    try:
        csv_data = csv_bytes(corpus.urls(origin.url, count), URLS_PER_ROW)
        cpu, origin_cpu = service.cpu_seconds(), cpu_seconds(origin.pid)
        threads = thread_cpu_seconds(service.pid)
        accepted = await upload(session, service.base_url, csv_data)
        doc = await wait_until(session, service.base_url, accepted.request_id, is_complete)
        cpu, origin_cpu = service.cpu_seconds() - cpu, cpu_seconds(origin.pid) - origin_cpu
        after = thread_cpu_seconds(service.pid)
        by_thread = {k: (v - threads.get(k, 0.0)) * 1000 / count for k, v in after.items()}
        _, peak = service.memory_mb()
    finally:
        await service.stop()
    counts, sizes = doc["images"], doc["bytes"]
    return Throughput(
        label=f"service end to end, {images.get('engine', 'vips')}",
        images=counts["total"],
        seconds=_server_seconds(doc),
        bytes_in=sizes["input"],
        bytes_out=sizes["output"],
        failed=counts["failed"],
        peak_rss_mb=peak,
        startup_seconds=startup,
        cpu_ms=cpu * 1000 / count,
        origin_cpu_ms=origin_cpu * 1000 / count,
        thread_cpu_ms=by_thread,
    )


@dataclass(frozen=True)
class Memory:
    images: int
    seconds: float
    failed: int
    peak_rss_mb: float
    peak_at_quarter_mb: float
    startup_seconds: float


async def big_images(
    session: aiohttp.ClientSession,
    workdir: Path,
    origin: Origin,
    corpus: Corpus,
    count: int,
    env: Mapping[str, str],
) -> Memory:
    """Peak RSS over a job of big images, one per row, and whether it grows with the rows."""
    service = ServiceProcess(workdir, {}, env)
    startup = await service.start(session)
    quarter: list[float] = []

    def sample(doc: dict[str, Any]) -> None:
        counts = doc["images"]
        if not quarter and counts["total"] - counts["pending"] >= count // 4:
            quarter.append(service.memory_mb()[1])

    try:
        csv_data = csv_bytes(corpus.urls(origin.url, count), 1)
        accepted = await upload(session, service.base_url, csv_data)
        doc = await wait_until(session, service.base_url, accepted.request_id, is_complete, sample)
        _, peak = service.memory_mb()
    finally:
        await service.stop()
    return Memory(
        images=doc["images"]["total"],
        seconds=_server_seconds(doc),
        failed=doc["images"]["failed"],
        peak_rss_mb=peak,
        peak_at_quarter_mb=quarter[0] if quarter else peak,
        startup_seconds=startup,
    )


@dataclass(frozen=True)
class Upload:
    rows: int
    urls: int
    size_bytes: int
    seconds: float
    rss_before_mb: float
    peak_during_mb: float
    startup_seconds: float

    @property
    def growth_mb(self) -> float:
        return self.peak_during_mb - self.rss_before_mb


async def big_upload(
    session: aiohttp.ClientSession,
    workdir: Path,
    rows: int,
    per_row: int,
    env: Mapping[str, str],
) -> Upload:
    """Time from sending a `rows`-row CSV to its 202, and the service's memory meanwhile.

    The URLs are distinct and shaped like product-image URLs (no port, as on a
    CDN; URLs with a port take csv_input's slower, general path, about 3 s more
    for 300,000 of them). They point at a closed port on 127.0.0.1, so the job
    that follows is cheap and the figure is the upload's own.
    """
    urls = [f"http://127.0.0.1/products/{k}/image-{k % 7}.jpg" for k in range(rows * per_row)]
    data = csv_bytes(urls, per_row)
    service = ServiceProcess(workdir, {}, env)
    startup = await service.start(session)
    try:
        before, _ = service.memory_mb()
        service.reset_peak()
        accepted = await upload(session, service.base_url, data)
        _, peak = service.memory_mb()
    finally:
        await service.stop()
    if accepted.images != len(urls):
        raise SystemExit(f"the service counted {accepted.images} URLs, not {len(urls)}")
    return Upload(rows, len(urls), len(data), accepted.seconds, before, peak, startup)


@dataclass(frozen=True)
class Latency:
    rate: float
    sent: int
    answered: int
    errors: int
    skipped: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    job_running_after: bool
    startup_seconds: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(fraction * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def status_latency(
    session: aiohttp.ClientSession,
    workdir: Path,
    origin: Origin,
    corpus: Corpus,
    rate: float,
    seconds: float,
    env: Mapping[str, str],
) -> Latency:
    """GET /status at a fixed rate (open loop) while a big job keeps the service busy.

    Each latency counts from when its request was due, not when it was sent, so
    a client that falls behind cannot hide the service's stalls.
    """
    count = max(200, int(seconds / LATENCY_JOB_SECONDS_PER_IMAGE))
    service = ServiceProcess(workdir, {}, env)
    startup = await service.start(session)
    try:
        accepted = await upload(
            session, service.base_url, csv_bytes(corpus.urls(origin.url, count), URLS_PER_ROW)
        )
        url = f"{service.base_url}/status/{accepted.request_id}"
        # Measure only once images are flowing through every stage.
        await wait_until(
            session, service.base_url, accepted.request_id, lambda d: d["images"]["succeeded"] > 4
        )
        latencies, errors, skipped, sent = await _open_loop(url, rate, seconds)
        doc = await status(session, service.base_url, accepted.request_id)
    finally:
        await service.stop()
    latencies.sort()
    return Latency(
        rate=rate,
        sent=sent,
        answered=len(latencies),
        errors=errors,
        skipped=skipped,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p90_ms=percentile(latencies, 0.90) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
        job_running_after=doc["status"] == "processing",
        startup_seconds=startup,
    )


async def _open_loop(url: str, rate: float, seconds: float) -> tuple[list[float], int, int, int]:
    latencies: list[float] = []
    failures = [0]
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async def one(client: aiohttp.ClientSession, due: float) -> None:
        try:
            async with client.get(url) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            latencies.append(loop.time() - due)
        else:
            failures[0] += 1

    total = int(rate * seconds)
    skipped = 0
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=MAX_OUTSTANDING)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        start = loop.time() + 0.05
        for i in range(total):
            due = start + i / rate
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= MAX_OUTSTANDING:
                skipped += 1  # bounded: counted, never silently dropped
                continue
            task = asyncio.create_task(one(client, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return latencies, failures[0], skipped, total - skipped


# --- the minimal libvips reference (issue 13) ---------------------------------------------

# The savers the minimal path calls for each input format (it keeps the format, as the
# service's default `format = "keep"` does), at the service's quality and encoder settings.
_MINIMAL_SAVERS = {"jpegload_buffer": "jpeg", "pngload_buffer": "png", "webpload_buffer": "webp"}


def _strip() -> dict[str, Any]:
    return {"keep": "none"} if pyvips.at_least_libvips(8, 15) else {"strip": True}


def minimal_steps(data: bytes, settings: ImageSettings, convert: bool) -> list[Any]:
    """The images after each step of the minimal path: decoded, in sRGB."""
    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    decoded = image
    if convert:
        image = image.icc_transform("srgb", embedded=True, depth=8)
    return [decoded, image]


def minimal_encode(image: Any, fmt: str, settings: ImageSettings) -> bytes:
    strip = _strip()
    if fmt == "jpeg":
        data: bytes = image.jpegsave_buffer(
            Q=settings.quality, optimize_coding=settings.optimize_coding, interlace=False, **strip
        )
    elif fmt == "png":
        data = image.pngsave_buffer(palette=True, Q=settings.quality, **strip)
    else:
        data = image.webpsave_buffer(Q=settings.quality, effort=WEBP_EFFORT, **strip)
    return data


def _minimal_size(data: bytes, settings: ImageSettings, convert: bool) -> int:
    image = minimal_steps(data, settings, convert)[-1]
    fmt = _MINIMAL_SAVERS[image.get("vips-loader")]
    return len(minimal_encode(image, fmt, settings))


def needs_conversion(corpus: Corpus) -> dict[str, bool]:
    """Which files of the corpus carry a profile that is not sRGB: worked out once, before
    any timing, so the minimal path converts exactly those and nothing else."""
    out = {}
    for name, data in corpus.files.items():
        image = pyvips.Image.new_from_buffer(data, "")
        has = image.get_typeof("icc-profile-data") != 0
        out[name] = has and not colour.is_srgb(image.get("icc-profile-data"))
    return out


def minimal_raw(corpus: Corpus, count: int, settings: ImageSettings, threads: int) -> Throughput:
    """Decode -> sRGB only where the profile is not sRGB -> encode, from memory, in the
    service's pool: the least work the job needs, none of the service's own code."""
    convert = needs_conversion(corpus)
    names = corpus.names
    flags = [convert[names[k % len(names)]] for k in range(count)]
    payloads = corpus.payloads(count)
    imaging.configure(concurrency=1, pixel_budget=WorkerSettings().pixel_budget)
    with cpupool.create(WorkerSettings(threads=threads)) as pool:
        cpu = time.process_time()
        started = time.perf_counter()
        sizes = list(pool.map(_minimal_size, payloads, repeat(settings), flags))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    return Throughput(
        label=f"raw minimal libvips, {threads} threads, from memory",
        images=count,
        seconds=seconds,
        bytes_in=sum(map(len, payloads)),
        bytes_out=sum(sizes),
        cpu_ms=cpu * 1000 / count,
    )


@dataclass(frozen=True)
class Steps:
    """CPU per image, one thread, by kind of file: the minimal path's steps, and the
    service's whole `recompress` with and without the sRGB shortcut."""

    kind: str
    decode_ms: float
    colour_ms: float
    encode_ms: float
    service_ms: float
    service_no_skip_ms: float


def _cpu_ms(action: Any, rounds: int) -> float:
    action()  # warm
    started = time.process_time()
    for _ in range(rounds):
        action()
    return (time.process_time() - started) * 1000 / rounds


def step_costs(corpus: Corpus, settings: ImageSettings, rounds: int) -> list[Steps]:
    """Each step's CPU by the difference of sinks: decode = load + avg; colour = load +
    transform + avg, less that; encode = the whole minimal path, less load + transform."""
    imaging.configure(concurrency=1)
    convert = needs_conversion(corpus)
    kinds: dict[str, list[str]] = {}
    for name in corpus.names:
        kinds.setdefault(_kind(name, convert[name]), []).append(name)
    out = []
    for kind, names in kinds.items():
        data = [corpus.files[n] for n in names]
        flags = [convert[n] for n in names]

        def run(action: Any, data: list[bytes] = data, flags: list[bool] = flags) -> Any:
            return lambda: [action(d, f) for d, f in zip(data, flags, strict=True)]

        per = len(data)
        decode = _cpu_ms(run(lambda d, f: minimal_steps(d, settings, False)[0].avg()), rounds)
        to_srgb = _cpu_ms(run(lambda d, f: minimal_steps(d, settings, f)[-1].avg()), rounds)
        whole = _cpu_ms(run(lambda d, f: _minimal_size(d, settings, f)), rounds)
        service = _cpu_ms(run(lambda d, f: imaging.recompress(d, settings)), rounds)
        with _no_srgb_shortcut():
            no_skip = _cpu_ms(run(lambda d, f: imaging.recompress(d, settings)), rounds)
        out.append(
            Steps(
                kind=f"{kind} ({per})",
                decode_ms=decode / per,
                colour_ms=(to_srgb - decode) / per,
                encode_ms=(whole - to_srgb) / per,
                service_ms=service / per,
                service_no_skip_ms=no_skip / per,
            )
        )
    return out


def _kind(name: str, convert: bool) -> str:
    stem = re.sub(r"-\d+$", "", name.rsplit(".", 1)[0])
    return stem + (", converted" if convert else "")


class _no_srgb_shortcut:
    """`imaging.to_srgb` as before issue 13: every embedded profile applied."""

    def __enter__(self) -> None:
        self._saved = imaging._tagged_srgb
        imaging._tagged_srgb = lambda image: False

    def __exit__(self, *exc: object) -> None:
        imaging._tagged_srgb = self._saved


# --- hostile downloads (issue 13) ----------------------------------------------------------

HOSTILE_KINDS = ("endless", "bomb")
STATUS_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Hostile:
    rounds: int
    images: int  # per round
    failed: int  # over all rounds
    reasons: dict[str, int]
    rss_before_mb: float
    peak_rss_mb: float
    rss_after_mb: float
    status_max_ms: float
    seconds: float
    startup_seconds: float


async def hostile(
    session: aiohttp.ClientSession,
    workdir: Path,
    origin: Origin,
    per_kind: int,
    rounds: int,
    env: Mapping[str, str],
) -> Hostile:
    """`per_kind` endless bodies and as many gzip bombs in one request, `rounds` times in a
    row, against the service with default settings; GET /status timed all along."""
    service = ServiceProcess(workdir, {}, env)
    startup = await service.start(session)
    reasons: dict[str, int] = {}
    failed = 0
    slowest = 0.0
    started = time.perf_counter()
    try:
        before, _ = service.memory_mb()
        service.reset_peak()
        for n in range(rounds):
            urls = [
                f"{origin.url}/hostile/{n}-{k}/{kind}"
                for kind in HOSTILE_KINDS
                for k in range(per_kind)
            ]
            accepted = await upload(session, service.base_url, csv_bytes(urls, 1))
            while True:
                asked = time.perf_counter()
                doc = await status(session, service.base_url, accepted.request_id)
                slowest = max(slowest, time.perf_counter() - asked)
                if is_complete(doc):
                    break
                await asyncio.sleep(STATUS_POLL_SECONDS)
            failed += doc["images"]["failed"]
            page = f"{service.base_url}/requests/{accepted.request_id}/images?limit=1000"
            async with session.get(page) as resp:
                for image in (await resp.json())["images"]:
                    reason = image["error"] or "(none)"
                    reasons[reason] = reasons.get(reason, 0) + 1
        seconds = time.perf_counter() - started
        _, peak = service.memory_mb()
        after, _ = service.memory_mb()
    finally:
        await service.stop()
    return Hostile(
        rounds=rounds,
        images=per_kind * len(HOSTILE_KINDS),
        failed=failed,
        reasons=reasons,
        rss_before_mb=before,
        peak_rss_mb=peak,
        rss_after_mb=after,
        status_max_ms=slowest * 1000,
        seconds=seconds,
        startup_seconds=startup,
    )
