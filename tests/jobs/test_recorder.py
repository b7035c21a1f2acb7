"""Batched result writes: one transaction per batch, nothing marked done that was not recorded."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from csvcompress.errors import StoreFull
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.jobs.recorder import ResultRecorder
from csvcompress.models import ImageJob, ImageResult
from csvcompress.store import sqlite
from csvcompress.store.sqlite import SqliteStore
from tests.waiting import never

REQUEST = "r" * 32


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    database = SqliteStore(tmp_path / "db.sqlite3")
    await database.open()
    with database.request_writer(REQUEST) as writer:
        for row in range(20):
            writer.add(row, [f"https://example.com/{2 * row + n}.jpg" for n in range(2)])
        writer.add(20, ["https://example.com/0.jpg"])  # a repeat of the first URL
        writer.finish(input_path="in.csv", webhook_url=None, rows=21)
    yield database
    await database.close()


def ok(n: int) -> ImageResult:
    return ImageResult(output_url=f"https://out/{n}.jpg", error=None, bytes_in=100, bytes_out=10)


async def jobs(database: SqliteStore) -> list[ImageJob]:
    return await database.pending_images(REQUEST, 0, 100)


def count_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = sqlite.record_results_blocking

    def spy(conn: sqlite3.Connection, results: Sequence[Any]) -> list[int]:
        sizes.append(len(results))
        return real(conn, results)

    monkeypatch.setattr(sqlite, "record_results_blocking", spy)
    return sizes


async def test_results_arriving_together_are_written_in_one_transaction(
    database: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = count_batches(monkeypatch)
    recorder = ResultRecorder(Lifecycle(database))
    await recorder.start()
    todo = await jobs(database)
    changed = await asyncio.gather(*(recorder.record(job, ok(job.id)) for job in todo))
    await recorder.close()

    assert len(todo) == 40
    assert sizes == [40]
    # The first image counts for its repeat too.
    assert sorted(changed) == [1] * 39 + [2]
    counts = await database.get_counts(REQUEST)
    assert (counts.total, counts.succeeded, counts.failed, counts.pending) == (41, 41, 0, 0)
    record = await database.get_request(REQUEST)
    assert record is not None and (record.bytes_in, record.bytes_out) == (4000, 400)


async def test_close_writes_what_was_handed_over(database: SqliteStore) -> None:
    recorder = ResultRecorder(Lifecycle(database))
    await recorder.start()
    todo = await jobs(database)
    waiting = [asyncio.create_task(recorder.record(job, ok(job.id))) for job in todo[:5]]
    # One turn of the loop: each task's first step hands its result over (record() queues
    # it before it first awaits), so close() comes after all five.
    await asyncio.sleep(0)
    await recorder.close()

    assert [await task for task in waiting] == [2, 1, 1, 1, 1]
    assert (await database.get_counts(REQUEST)).succeeded == 6
    with pytest.raises(RuntimeError, match="not running"):
        await recorder.record(todo[5], ok(5))


async def test_a_write_the_database_refuses_is_tried_again_until_it_is_taken(
    database: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk or an I/O error must not drop a result (its request would never finish):
    the worker waits, and the write is tried again with back-off until it commits."""
    real = sqlite.record_results_blocking
    failures = []

    def failing_twice(conn: sqlite3.Connection, results: Sequence[Any]) -> list[int]:
        if len(failures) < 2:
            failures.append(results)
            raise sqlite3.OperationalError("disk I/O error")
        return real(conn, results)

    monkeypatch.setattr(sqlite, "record_results_blocking", failing_twice)
    recorder = ResultRecorder(Lifecycle(database))
    await recorder.start()
    job = (await jobs(database))[1]
    assert await recorder.record(job, ok(job.id)) == 1
    assert len(failures) == 2
    await recorder.close()
    assert (await database.get_counts(REQUEST)).succeeded == 1


async def test_a_write_still_refused_when_the_recorder_closes_leaves_images_pending(
    database: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: sqlite3.Connection, results: Sequence[Any]) -> list[int]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite, "record_results_blocking", broken)
    recorder = ResultRecorder(Lifecycle(database))
    await recorder.start()
    job = (await jobs(database))[1]
    waiting = asyncio.create_task(recorder.record(job, ok(job.id)))
    closing = asyncio.create_task(recorder.close())
    with pytest.raises(StoreFull, match=r"the disk holding the database .* is full"):
        await waiting
    await closing
    counts = await database.get_counts(REQUEST)
    assert (counts.succeeded, counts.pending) == (0, counts.total)


async def test_a_result_is_recorded_once_even_if_handed_over_twice(database: SqliteStore) -> None:
    recorder = ResultRecorder(Lifecycle(database))
    await recorder.start()
    job = (await jobs(database))[3]
    first, second = await asyncio.gather(
        recorder.record(job, ok(job.id)),
        recorder.record(job, ImageResult(output_url=None, error="late failure")),
    )
    await recorder.close()
    assert (first, second) == (1, 0)
    counts = await database.get_counts(REQUEST)
    assert (counts.succeeded, counts.failed) == (1, 0)


# Seconds between results handed over one after another.
SPACING = 0.01


async def record_spaced(recorder: ResultRecorder, todo: list[ImageJob]) -> list[int]:
    """Hand results over SPACING apart, as workers finishing one after another do."""
    tasks = []
    for job in todo:
        tasks.append(asyncio.create_task(recorder.record(job, ok(job.id))))
        await asyncio.sleep(SPACING)  # the spacing is the scenario
    return [await task for task in tasks]


async def test_results_arriving_within_the_window_share_one_commit(
    database: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = count_batches(monkeypatch)
    recorder = ResultRecorder(Lifecycle(database), window=2.0)
    await recorder.start()

    assert await record_spaced(recorder, (await jobs(database))[:6]) == [2, 1, 1, 1, 1, 1]
    await recorder.close()

    assert sizes == [6]
    assert (await database.get_counts(REQUEST)).succeeded == 7


async def test_without_a_window_results_spaced_apart_commit_separately(
    database: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = count_batches(monkeypatch)
    recorder = ResultRecorder(Lifecycle(database), window=0)
    await recorder.start()

    assert await record_spaced(recorder, (await jobs(database))[:6]) == [2, 1, 1, 1, 1, 1]
    await recorder.close()

    # Each commit takes well under 10 ms, so most results go alone (a slow one may pair up).
    assert sum(sizes) == 6 and len(sizes) >= 3


async def test_close_does_not_wait_out_the_window(database: SqliteStore) -> None:
    recorder = ResultRecorder(Lifecycle(database), window=30.0)
    await recorder.start()
    job = (await jobs(database))[2]
    waiting = asyncio.create_task(recorder.record(job, ok(job.id)))
    # Held for the window: not committed within many times what a commit takes.
    await never(waiting.done, what="the result was committed before the window ended", within=0.05)

    started = asyncio.get_running_loop().time()
    await recorder.close()

    assert await waiting == 1
    assert asyncio.get_running_loop().time() - started < 10.0  # not the 30 s window
    assert (await database.get_counts(REQUEST)).succeeded == 1
