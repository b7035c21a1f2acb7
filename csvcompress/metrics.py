"""Prometheus metrics: one registry per service, so several services in one process never mix.

Counters and histograms are fed where things happen (the Processor times each
stage, the queue counts each recorded image, the webhook sender counts each
delivery attempt). Figures that SQLite already knows exactly (requests by
status, images waiting) are read from it at scrape time instead of being kept
in step by hand.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from csvcompress.models import ImageResult, ImageStatus, RequestStatus

STAGES = ("download", "compress", "store")
# Seconds; a download can take up to fetch.timeout, a compression a few seconds for 24 MP.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# What a webhook delivery attempt can end as; the sender passes one of these.
WEBHOOK_OUTCOMES = ("delivered", "failed", "retrying")


class Figures(Protocol):
    """Where the gauges read from at each scrape (the store, without importing it)."""

    async def requests_by_status(self) -> dict[RequestStatus, int]: ...

    async def queued_images(self) -> int: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.images_succeeded = Counter(
            "csvcompress_images_succeeded",
            "Images recompressed and stored (a URL repeated in a request counts each time).",
            registry=r,
        )
        self.images_failed = Counter(
            "csvcompress_images_failed",
            "Images that failed, by reason code (fetch, too_large, image_rejected, storage, ...).",
            ["reason"],
            registry=r,
        )
        self.bytes_in = Counter(
            "csvcompress_input_bytes",
            "Bytes downloaded for images that succeeded (once per distinct URL).",
            registry=r,
        )
        self.bytes_out = Counter(
            "csvcompress_output_bytes",
            "Bytes of recompressed images stored (once per distinct URL).",
            registry=r,
        )
        self.in_flight = Gauge(
            "csvcompress_in_flight",
            "Images in a stage right now: downloads, compressions, storage writes.",
            ["stage"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "csvcompress_stage_seconds",
            "Time one image spent in a stage, failures included.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "csvcompress_webhook_deliveries",
            "Webhook delivery attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        self.queued_images = Gauge(
            "csvcompress_queued_images",
            "Images of unfinished requests still waiting for a result.",
            registry=r,
        )
        self.requests = Gauge(
            "csvcompress_requests",
            "Requests kept in the database, by status.",
            ["status"],
            registry=r,
        )
        # Every labelled series exists from the start, so a dashboard sees 0, not "no data".
        # (Children looked up once: stage() runs several times per image, also in threads.)
        self._stages = {
            stage: (self.in_flight.labels(stage), self.stage_seconds.labels(stage))
            for stage in STAGES
        }
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Count an image in `name` while the block runs, and time it."""
        gauge, seconds = self._stages[name]
        gauge.inc()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds.observe(time.perf_counter() - start)
            gauge.dec()

    def image_recorded(self, result: ImageResult, images: int) -> None:
        """One result was stored for `images` images (the URL and its repeats)."""
        if images <= 0:
            return
        if result.status is ImageStatus.SUCCEEDED:
            self.images_succeeded.inc(images)
            self.bytes_in.inc(result.bytes_in)
            self.bytes_out.inc(result.bytes_out)
        else:
            self.images_failed.labels(result.error_code or "internal").inc(images)

    def webhook_delivery(self, outcome: str) -> None:
        """Called by the webhook sender once per delivery attempt."""
        self.webhook_deliveries.labels(outcome).inc()

    async def render(self, figures: Figures) -> bytes:
        """The Prometheus text exposition, with the figures read from the store refreshed first."""
        for status, count in (await figures.requests_by_status()).items():
            self.requests.labels(status.value).set(count)
        self.queued_images.set(await figures.queued_images())
        return generate_latest(self.registry)
