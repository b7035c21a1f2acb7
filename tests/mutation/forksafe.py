"""A pytest plugin `make mutate` loads (tests/mutation/run.py): libvips made safe to fork.

mutmut runs the clean tests in its own process, then forks each mutant's run from it.
libvips keeps up to two idle worker threads for 15 s after its last work, and a child
forked meanwhile counts them as idle without having them: its first image waits for
ever, and the mutant is reported as a timeout (an equivalent one as killed, so stale).
After a run in mutmut's own process this waits until those workers have left.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

# The name libvips gives its worker threads, as Linux shows it.
LIBVIPS_WORKER = "libvips worker"
# libvips ends an idle worker after 15.5 s; past this, fork anyway (and maybe time out).
PATIENCE = 30.0
INTERVAL = 0.1


def libvips_workers() -> int:
    """How many libvips worker threads this process has."""
    count = 0
    for comm in Path("/proc/self/task").glob("*/comm"):
        with contextlib.suppress(OSError):  # a thread that ended as it was read
            count += comm.read_text().strip() == LIBVIPS_WORKER
    return count


def pytest_sessionfinish() -> None:
    # mutmut names the mutant under test in its children: nothing is forked from those.
    if "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "__mutmut_"):
        return
    deadline = time.monotonic() + PATIENCE
    while libvips_workers() and time.monotonic() < deadline:
        time.sleep(INTERVAL)
