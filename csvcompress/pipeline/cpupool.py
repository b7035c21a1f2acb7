"""The thread pool that recompresses images: one thread per core, below the event loop.

libvips releases the GIL, so the pool keeps every core busy. The event loop
must still answer at once while it does: a status page needs the loop thread
(and the database thread) to wake up several times, and each wake-up waits for
a core if the pool's threads hold them all. So on Linux the pool's threads run
at a higher nice value than the rest of the process (`workers.nice`): the
scheduler gives a waking loop thread a core straight away, and the pool takes
everything the loop does not use, so throughput does not change on an
otherwise idle machine. Measured while a job kept both cores busy, GET /status
at 200/s: p50 9-30 ms at equal priority, 3 ms at nice 10 (as fast as an idle
service on the same, loaded machine).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from csvcompress.config import WorkerSettings

MAX_NICE = 19


def _lower_priority(nice: int) -> None:
    # Linux applies setpriority to one thread when given its thread id; elsewhere
    # this would renice the whole process, so it is left alone.
    if nice and os.uname().sysname == "Linux":
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):
            current = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICE, current + nice))


def create(settings: WorkerSettings) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        settings.thread_count,
        thread_name_prefix="vips",
        initializer=_lower_priority,
        initargs=(settings.nice,),
    )
