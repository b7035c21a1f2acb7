"""Distributed mode end to end: PostgreSQL, SeaweedFS, the API and worker processes."""

from __future__ import annotations

import csv
import io
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pyvips

from tests import images
from tests.conftest import csv_bytes
from tests.distributed.conftest import ClusterFactory
from tests.procs import status, submit
from tests.servers import Origin, Receiver
from tests.waiting import poll

pytestmark = pytest.mark.timeout(180)

Check = Callable[[], Awaitable[bool]]


async def until(condition: Check, what: str, timeout: float = 60.0) -> None:
    """Wait for an event (polling through the suite's one poll helper)."""
    await poll(condition, what=what, timeout=timeout)


async def finished(url: str, request_id: str, timeout: float = 90.0) -> dict[str, Any]:
    doc: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal doc
        doc = await status(url, request_id)
        return doc["status"] in ("complete", "failed") or (
            doc["status"] == "cancelled" and bool(doc.get("output_csv_url"))
        )

    await until(done, f"request {request_id} to finish", timeout)
    return doc


async def output_rows(doc: dict[str, Any]) -> list[dict[str, str]]:
    async with aiohttp.ClientSession() as client, client.get(doc["output_csv_url"]) as resp:
        assert resp.status == 200
        text = await resp.text()
    return list(csv.DictReader(io.StringIO(text)))


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as client, client.get(url) as resp:
        assert resp.status == 200, url
        return await resp.read()


def photo_rows(origin: Origin, count: int, prefix: str = "p") -> list[list[str]]:
    rows = []
    for n in range(count):
        url = origin.add(f"{prefix}{n}.jpg", images.photo_jpeg(320 + n, 200 + n, seed=n))
        rows.append([str(n + 1), f"Item {n}", url])
    return rows


async def test_api_and_two_workers_complete_a_request_of_real_photos(
    make_cluster: ClusterFactory, origin: Origin
) -> None:
    cluster = make_cluster(cluster={"chunk_size": 2})
    await cluster.start_api()
    workers = [await cluster.start_worker(), await cluster.start_worker()]
    rows = photo_rows(origin, 8)

    doc = await finished(cluster.url, await submit(cluster.url, csv_bytes(rows)))

    assert doc["status"] == "complete"
    assert doc["images"]["succeeded"] == 8
    out = await output_rows(doc)
    assert [row["S. No."] for row in out] == [str(n + 1) for n in range(8)]
    for n, row in enumerate(out):
        url = row["Output Image Urls"]
        assert url.startswith(f"{cluster.seaweed.endpoint}/images/{cluster.prefix}/")
        image = pyvips.Image.new_from_buffer(await fetch(url), "")
        assert (image.width, image.height) == (320 + n, 200 + n)
    # Both workers took chunks: the work was shared, not done by whichever started first.
    for worker in workers:
        assert "csvcompress.chunk" in worker.log(), worker.log()
    # The CSVs live in the bucket, where every process reads them, not on the API's disk.
    request_id = doc["request_id"]
    kept = cluster.seaweed.get(f"{cluster.prefix}/csv/inputs/{request_id}.csv")
    assert kept == csv_bytes(rows)
    output = cluster.seaweed.get(f"{cluster.prefix}/csv/outputs/{request_id}.csv").decode()
    assert [r["S. No."] for r in csv.DictReader(io.StringIO(output))] == [
        str(n + 1) for n in range(8)
    ]
    assert not list(cluster.root.glob("data/**/*.csv"))


class Gate:
    """Origin paths whose responses wait until the test opens the gate."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.sizes: dict[str, tuple[int, int]] = {}

    def url(self, n: int) -> str:
        size = (200 + n, 150 + n)
        path = f"held{n}.jpg"
        self.sizes[path] = size
        return self.origin.add(path, images.photo_jpeg(*size, seed=n), held=True)

    def open(self) -> None:
        self.origin.release()

    @property
    def hits(self) -> int:
        return sum(self.origin.hits[path] for path in self.sizes)


async def test_a_worker_killed_mid_image_loses_nothing(
    make_cluster: ClusterFactory, origin: Origin
) -> None:
    cluster = make_cluster(cluster={"chunk_size": 3})
    await cluster.start_api()
    doomed = await cluster.start_worker()
    gate = Gate(origin)
    rows = [[str(n + 1), f"Item {n}", gate.url(n)] for n in range(6)]
    request_id = await submit(cluster.url, csv_bytes(rows))

    async def downloading() -> bool:
        return gate.hits >= 1

    await until(downloading, "the first worker to be downloading")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.proc.wait()  # type: ignore[union-attr]
    survivor = await cluster.start_worker()
    gate.open()

    doc = await finished(cluster.url, request_id)

    assert doc["status"] == "complete", doc
    assert doc["images"]["succeeded"] == 6
    assert "of a dead worker queued again" in survivor.log()
    out = await output_rows(doc)
    assert [row["S. No."] for row in out] == ["1", "2", "3", "4", "5", "6"]
    for n, row in enumerate(out):
        image = pyvips.Image.new_from_buffer(await fetch(row["Output Image Urls"]), "")
        assert (image.width, image.height) == gate.sizes[f"held{n}.jpg"]
    # At most once per attempt: the killed worker's try, and the survivor's.
    assert all(origin.hits[path] <= 2 for path in gate.sizes), origin.hits


async def test_a_one_image_request_is_not_stuck_behind_a_2000_image_one(
    make_cluster: ClusterFactory, origin: Origin
) -> None:
    cluster = make_cluster()
    await cluster.start_api()
    await cluster.start_worker()
    tiny = images.solid_jpeg(width=16, height=16)
    big = [[str(n + 1), f"Item {n}", origin.add(f"big{n}.jpg", tiny)] for n in range(2000)]
    big_id = await submit(cluster.url, csv_bytes(big))

    async def big_started() -> bool:
        return (await status(cluster.url, big_id))["images"]["succeeded"] > 0

    await until(big_started, "the big request to start")
    small_id = await submit(cluster.url, csv_bytes([["1", "Alone", origin.add("one.jpg", tiny)]]))

    small = await finished(cluster.url, small_id)
    big_then = await status(cluster.url, big_id)

    assert small["status"] == "complete"
    # The small one finished while most of the big one was still waiting.
    assert big_then["images"]["pending"] > 1000, big_then["images"]

    # Cancelling works across processes too: the API skips what is pending, a worker
    # writes the output CSV with every row, in order.
    async with (
        aiohttp.ClientSession() as client,
        client.delete(f"{cluster.url}/requests/{big_id}") as resp,
    ):
        assert resp.status == 200, await resp.text()
    big_done = await finished(cluster.url, big_id)
    assert big_done["status"] == "cancelled"
    out = await output_rows(big_done)
    assert [row["S. No."] for row in out] == [str(n + 1) for n in range(2000)]
    assert any(row["Output Image Urls"] for row in out)
    assert out[-1]["Output Image Urls"] == ""


async def test_each_webhook_is_delivered_once_across_workers(
    make_cluster: ClusterFactory, origin: Origin, receiver: Receiver
) -> None:
    cluster = make_cluster(cluster={"chunk_size": 1})
    await cluster.start_api()
    await cluster.start_worker()
    await cluster.start_worker()
    ids = []
    for r in range(4):
        rows = [
            [str(n + 1), "x", origin.add(f"w{r}-{n}.jpg", images.solid_jpeg())] for n in range(3)
        ]
        ids.append(await submit(cluster.url, csv_bytes(rows), webhook_url=receiver.url))

    async def all_delivered() -> bool:
        docs = [await status(cluster.url, request_id) for request_id in ids]
        return all((doc.get("webhook") or {}).get("state") == "delivered" for doc in docs)

    await until(all_delivered, "every webhook to be delivered")

    docs = [await status(cluster.url, request_id) for request_id in ids]
    assert [doc["webhook"]["attempts"] for doc in docs] == [1, 1, 1, 1]
    delivered = sorted(event.payload["data"]["request_id"] for event in receiver.received)
    assert delivered == sorted(ids)


async def test_restarting_the_api_during_a_job_loses_nothing(
    make_cluster: ClusterFactory, origin: Origin
) -> None:
    cluster = make_cluster(cluster={"chunk_size": 2})
    api = await cluster.start_api()
    await cluster.start_worker()
    gate = Gate(origin)
    rows = [[str(n + 1), f"Item {n}", gate.url(n)] for n in range(4)]
    request_id = await submit(cluster.url, csv_bytes(rows))

    async def downloading() -> bool:
        return gate.hits >= 1

    await until(downloading, "the worker to be downloading")
    api.kill()
    gate.open()
    api = await cluster.start_api()

    doc = await finished(cluster.url, request_id)

    assert doc["status"] == "complete", doc
    out = await output_rows(doc)
    assert [row["S. No."] for row in out] == ["1", "2", "3", "4"]
    assert all(row["Output Image Urls"] for row in out)


async def test_a_chunk_that_keeps_killing_workers_fails_then_retries(
    make_cluster: ClusterFactory, origin: Origin
) -> None:
    """crash_retries = 0: the first crash gives the chunk up (no crash loop); a retry later
    (POST .../retry) queues its images again and they succeed."""
    cluster = make_cluster(cluster={"chunk_size": 2, "crash_retries": 0})
    await cluster.start_api()
    doomed = await cluster.start_worker()
    gate = Gate(origin)
    rows = [[str(n + 1), f"Item {n}", gate.url(n)] for n in range(2)]
    request_id = await submit(cluster.url, csv_bytes(rows))

    async def downloading() -> bool:
        return gate.hits >= 1

    await until(downloading, "the worker to be downloading")
    doomed.kill()
    survivor = await cluster.start_worker()

    doc = await finished(cluster.url, request_id)

    assert doc["status"] == "complete"
    assert doc["images"]["failed"] == 2
    out = await output_rows(doc)
    assert all("worker processing this image died (1 attempt)" in row["Errors"] for row in out), out
    assert "failed for good" in survivor.log()

    gate.open()
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{cluster.url}/requests/{request_id}/retry") as resp,
    ):
        assert resp.status == 202, await resp.text()
    doc = await finished(cluster.url, request_id)
    assert doc["images"]["succeeded"] == 2, doc

    # Removing a finished request removes its images and CSVs from the bucket too.
    image_url = (await output_rows(doc))[0]["Output Image Urls"]
    async with (
        aiohttp.ClientSession() as client,
        client.delete(f"{cluster.url}/requests/{request_id}") as resp,
    ):
        assert resp.status == 204, await resp.text()
    async with aiohttp.ClientSession() as client:
        for url in (
            image_url,
            f"{cluster.seaweed.endpoint}/images/{cluster.prefix}/csv/inputs/{request_id}.csv",
            f"{cluster.seaweed.endpoint}/images/{cluster.prefix}/csv/outputs/{request_id}.csv",
        ):
            async with client.get(url) as resp:
                assert resp.status == 404, url


async def test_a_worker_stops_on_sigterm_and_another_carries_on(
    make_cluster: ClusterFactory, origin: Origin
) -> None:
    cluster = make_cluster()
    await cluster.start_api()
    leaving = await cluster.start_worker()

    assert await leaving.stop() == 0
    assert "stopped" in leaving.log()

    await cluster.start_worker()
    doc = await finished(cluster.url, await submit(cluster.url, csv_bytes(photo_rows(origin, 2))))
    assert doc["status"] == "complete"
