"""The PostgreSQL store against a real server: schema, ingest, conditional moves, leases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from csvcompress.bench.servers import Postgres
from csvcompress.errors import ConfigError
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.models import DueDeliveries, ImageJob, ImageResult, ImageStatus, RequestStatus
from csvcompress.store.postgres import PostgresStore, migrate_blocking

REQUEST = "a" * 32


@pytest.fixture
async def store(postgres: Postgres) -> AsyncIterator[PostgresStore]:
    url = postgres.create_database()
    migrate_blocking(url)
    opened = PostgresStore(url)
    await opened.open()
    yield opened
    await opened.close()


def _ingest(store: PostgresStore, request_id: str, rows: list[list[str]]) -> int:
    with store.request_writer(request_id) as writer:
        for number, urls in enumerate(rows, start=1):
            writer.add(number, urls)
        return writer.finish(input_path=f"/in/{request_id}.csv", webhook_url=None, rows=len(rows))


async def test_open_refuses_a_database_that_was_not_migrated(postgres: Postgres) -> None:
    with pytest.raises(ConfigError, match="run `python -m csvcompress migrate` first"):
        await PostgresStore(postgres.create_database()).open()


async def test_migrate_twice_changes_nothing(postgres: Postgres) -> None:
    url = postgres.create_database()
    assert migrate_blocking(url) == migrate_blocking(url)


async def test_ingest_keeps_input_order_and_links_repeats(store: PostgresStore) -> None:
    rows = [["http://o/1", "http://o/2"], ["http://o/1"], ["http://o/3"]]
    assert await asyncio.to_thread(_ingest, store, REQUEST, rows) == 4

    pending = await store.pending_images(REQUEST, 0, 10)
    # The repeat of http://o/1 is not work of its own: it shares the first one's result.
    assert [(j.row, j.position, j.url) for j in pending] == [
        (1, 0, "http://o/1"),
        (1, 1, "http://o/2"),
        (3, 0, "http://o/3"),
    ]
    await Lifecycle(store).record([(pending[0], ImageResult("http://s/1.jpg", None))])
    outcomes = await asyncio.to_thread(lambda: list(store.image_outcomes_blocking(REQUEST)))
    assert [(o.row, o.position, o.output_url) for o in outcomes] == [
        (1, 0, "http://s/1.jpg"),
        (1, 1, None),
        (2, 0, "http://s/1.jpg"),
        (3, 0, None),
    ]


async def test_a_refused_upload_leaves_nothing(store: PostgresStore) -> None:
    def refuse() -> None:
        with store.request_writer(REQUEST) as writer:
            writer.add(1, ["http://o/1"])
            raise ValueError("row 2 is bad")

    with pytest.raises(ValueError):
        await asyncio.to_thread(refuse)
    assert await store.get_request(REQUEST) is None
    assert await store.pending_images(REQUEST, 0, 10) == []


async def test_two_racing_cancels_cannot_both_win(store: PostgresStore) -> None:
    await asyncio.to_thread(_ingest, store, REQUEST, [["http://o/1"], ["http://o/2"]])
    lifecycle = Lifecycle(store)

    won = await asyncio.gather(*(lifecycle.cancel(REQUEST) for _ in range(5)))

    assert sorted(won) == [False, False, False, False, True]
    record, counts = await store.get_request_with_counts(REQUEST) or (None, None)
    # Cancelling until its output CSV is written (the lifecycle's CANCEL event).
    assert record is not None and record.status is RequestStatus.CANCELLING
    assert counts is not None and counts.skipped == 2


async def test_a_result_recorded_twice_counts_once(store: PostgresStore) -> None:
    """A chunk redone after its worker died records its images again: the second is a no-op."""
    await asyncio.to_thread(_ingest, store, REQUEST, [["http://o/1"]])
    job = (await store.pending_images(REQUEST, 0, 10))[0]
    lifecycle = Lifecycle(store)
    result = ImageResult("http://s/1.jpg", None, bytes_in=100, bytes_out=40)

    assert await lifecycle.record([(job, result)]) == [1]
    assert await lifecycle.record([(job, result)]) == [0]

    counts = await store.get_counts(REQUEST)
    assert (counts.succeeded, counts.pending) == (1, 0)
    page = await store.image_page(REQUEST, 0, 10)
    assert page[0].status is ImageStatus.SUCCEEDED


async def test_a_due_delivery_goes_to_one_sender_of_many(
    store: PostgresStore, postgres: Postgres
) -> None:
    """Each process has its own store; a due delivery is leased to exactly one of them."""
    others = [PostgresStore(store.url) for _ in range(3)]
    for other in others:
        await other.open()
    try:
        for n in range(6):
            request_id = f"{n:032d}"
            await store.add_delivery(f"msg_{n}", request_id, "request.completed", "http://h", "{}")
            # Queued again by a second process: still one delivery per request.
            await store.add_delivery(f"dup_{n}", request_id, "request.completed", "http://h", "{}")

        picks = await asyncio.gather(*(s.next_pending_deliveries((), 10) for s in [store, *others]))

        due = [delivery_id for pick in picks for delivery_id in pick.due]
        assert sorted(due) == [f"msg_{n}" for n in range(6)]
    finally:
        for other in others:
            await other.close()


async def test_a_delivery_not_yet_due_is_no_senders_until_one_leases_it(
    store: PostgresStore,
) -> None:
    """Told when the next delivery is due, every sender waits for it; once due, exactly one
    leases it. (Starting it when its time came, without a lease, sent it twice.)"""
    others = [PostgresStore(store.url) for _ in range(3)]
    for other in others:
        await other.open()
    senders = [store, *others]
    try:
        at = time.time() + 0.5
        await store.add_delivery(
            "msg_later", "l" * 32, "request.completed", "http://h", "{}", next_attempt_at=at
        )
        picks = await asyncio.gather(*(s.next_pending_deliveries((), 10) for s in senders))
        assert all(pick == DueDeliveries(due=[], next_at=at) for pick in picks)

        await asyncio.sleep(max(0.0, at - time.time()))  # until the time it was given
        picks = await asyncio.gather(*(s.next_pending_deliveries((), 10) for s in senders))
        assert sorted(delivery_id for pick in picks for delivery_id in pick.due) == ["msg_later"]
        # The lease pushed it ahead: the others are told to wait, not to send.
        assert all(pick.next_at is not None and pick.next_at > at for pick in picks if not pick.due)
    finally:
        for other in others:
            await other.close()


async def test_results_racing_a_cancel_do_not_deadlock(store: PostgresStore) -> None:
    """Workers record batches while the API cancels the same request: both take the
    request's row first, so neither waits for the other in a cycle (PostgreSQL would
    abort one with "deadlock detected")."""
    urls = [[f"http://o/{n}"] for n in range(400)]
    await asyncio.to_thread(_ingest, store, REQUEST, urls)
    jobs = await store.pending_images(REQUEST, 0, 400)
    lifecycle = Lifecycle(store)
    batches = [jobs[start::8] for start in range(8)]  # interleaved ids, as workers do

    async def record(batch: list[ImageJob]) -> list[int]:
        return await lifecycle.record([(job, ImageResult("http://s/x.jpg", None)) for job in batch])

    outcome = await asyncio.gather(*(record(b) for b in batches), lifecycle.cancel(REQUEST))

    assert outcome[-1] is True
    counts = await store.get_counts(REQUEST)
    assert counts.succeeded + counts.skipped == 400
    assert counts.pending == 0
