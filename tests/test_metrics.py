"""/metrics counts what the service did, exactly."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests import images
from tests.conftest import Service, ServiceFactory, csv_bytes
from tests.servers import Origin, Receiver
from tests.waiting import poll

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(service: Service) -> Samples:
    async with service.client.get(f"{service.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_metrics_count_a_known_job_exactly(
    create_service: ServiceFactory,
    origin: Origin,
    receiver: Receiver,
) -> None:
    service = await create_service()
    shirt = images.photo_jpeg(120, 80)
    hat = images.photo_jpeg(60, 40, seed=2)
    a = origin.add("shirt.jpg", shirt)
    b = origin.add("hat.jpg", hat)
    missing = f"{origin.url}/missing.jpg"

    request_id = await service.submit(
        csv_bytes([["1", "Shirt", f"{a}, {missing}"], ["2", "Hat", b]]),
        webhook_url=receiver.url,
    )
    doc = await service.wait(request_id)
    await receiver.wait_for(1)
    samples = await scrape(service)

    assert doc["images"] == {"total": 3, "succeeded": 2, "failed": 1, "pending": 0}
    stored = Path(service.settings.storage.dir) / request_id
    out_bytes = sum(f.stat().st_size for f in stored.iterdir())
    assert value(samples, "csvcompress_images_succeeded_total") == 2
    assert value(samples, "csvcompress_images_failed_total", reason="fetch") == 1
    assert value(samples, "csvcompress_input_bytes_total") == len(shirt) + len(hat)
    assert value(samples, "csvcompress_output_bytes_total") == out_bytes
    assert doc["bytes"] == {"input": len(shirt) + len(hat), "output": out_bytes,
                            "saved": len(shirt) + len(hat) - out_bytes}  # fmt: skip
    # Three downloads (the 404 included), two compressions, two writes.
    assert value(samples, "csvcompress_stage_seconds_count", stage="download") == 3
    assert value(samples, "csvcompress_stage_seconds_count", stage="compress") == 2
    assert value(samples, "csvcompress_stage_seconds_count", stage="store") == 2
    for stage in ("download", "compress", "store"):
        assert value(samples, "csvcompress_in_flight", stage=stage) == 0
    assert value(samples, "csvcompress_webhook_deliveries_total", outcome="delivered") == 1
    assert value(samples, "csvcompress_webhook_deliveries_total", outcome="failed") == 0
    assert value(samples, "csvcompress_requests", status="complete") == 1
    assert value(samples, "csvcompress_requests", status="processing") == 0
    assert value(samples, "csvcompress_queued_images") == 0


async def test_queue_depth_and_in_flight_downloads_while_a_job_runs(
    create_service: ServiceFactory, origin: Origin
) -> None:
    # Two download slots plus one compression thread: three workers.
    service = await create_service(fetch={"concurrency": 2}, workers={"threads": 1})
    data = images.photo_jpeg(32, 24)
    urls = [origin.add(f"held/{n}.jpg", data, held=True) for n in range(7)]

    async def running() -> dict[str, float]:
        samples = await scrape(service)
        return {
            "downloading": value(samples, "csvcompress_in_flight", stage="download"),
            "compressing": value(samples, "csvcompress_in_flight", stage="compress"),
            "queued": value(samples, "csvcompress_queued_images"),
            "processing": value(samples, "csvcompress_requests", status="processing"),
        }

    try:
        request_id = await service.submit(csv_bytes([["1", "Many", ", ".join(urls)]]))
        # Every worker ends up in the download stage: two on the wire (fetch.concurrency is
        # the connection limit), the third waiting for a connection; nothing can finish.
        expected = {"downloading": 3, "compressing": 0, "queued": 7, "processing": 1}
        await poll(running, until=lambda seen: seen == expected, what=f"metrics {expected}")
        assert sum(origin.hits.values()) == 2
    finally:
        origin.release()
    await service.wait(request_id)
    samples = await scrape(service)
    assert value(samples, "csvcompress_queued_images") == 0
    assert value(samples, "csvcompress_images_succeeded_total") == 7
    assert value(samples, "csvcompress_in_flight", stage="download") == 0
