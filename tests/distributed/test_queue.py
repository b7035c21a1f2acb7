"""The queue's planning against a real PostgreSQL: chunks, round-robin ranks, one INSERT."""

from __future__ import annotations

import asyncio
import itertools

import psycopg

from csvcompress.bench.servers import Postgres
from csvcompress.config import Settings, replace_settings
from csvcompress.jobs.cluster import CHUNK_TASK, FINISH_TASK, create_queue, defer_finish, plan
from csvcompress.store.postgres import PostgresStore, migrate_blocking


async def test_a_request_is_planned_as_ranked_chunks(postgres: Postgres) -> None:
    url = postgres.create_database()
    migrate_blocking(url)
    store = PostgresStore(url)
    await store.open()
    queue = create_queue(replace_settings(Settings(), database={"url": url}))
    try:
        with store.request_writer("r" * 32) as writer:
            for row in range(1, 41):
                writer.add(row, [f"http://o/{row}.jpg"])
            writer.finish(input_path="in.csv", webhook_url=None, rows=40)
        async with queue.open_async():
            assert await plan(queue, store, "r" * 32, chunk_size=4) == 15
            # A finish job is queued once, however many chunks ask for it.
            await asyncio.gather(*(defer_finish(queue, "r" * 32) for _ in range(3)))
    finally:
        await store.close()

    with psycopg.connect(url) as conn:
        jobs = conn.execute(
            "SELECT task_name, priority, args FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
    chunks = [(priority, args["after_id"], args["last_id"]) for task, priority, args in jobs
              if task == CHUNK_TASK]  # fmt: skip
    # Full chunks while there is plenty left, then finer ones (an eighth of what is left,
    # down to two), so no worker waits long at the end for another's last chunk.
    sizes = [last - after for _, after, last in chunks]
    assert sizes == [4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1]
    assert [priority for priority, _, _ in chunks] == list(range(0, -15, -1))
    assert chunks[0][1] == 0 and chunks[-1][2] == 40
    assert all(a[2] == b[1] for a, b in itertools.pairwise(chunks))  # contiguous, no gap
    assert [task for task, _, _ in jobs].count(FINISH_TASK) == 1
