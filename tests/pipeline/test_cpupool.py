"""The recompression pool: one thread per core, nicer than the event loop on Linux."""

from __future__ import annotations

import os
import platform
import threading

import pytest

from csvcompress.config import WorkerSettings
from csvcompress.pipeline import cpupool


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(platform.system() != "Linux", reason="per-thread nice is Linux's")
def test_pool_threads_are_nicer_than_the_caller_which_keeps_its_priority() -> None:
    before = _own_nice()
    with cpupool.create(WorkerSettings(threads=2, nice=5)) as pool:
        niceness = {pool.submit(_own_nice).result() for _ in range(4)}
    assert niceness == {min(cpupool.MAX_NICE, before + 5)}
    assert _own_nice() == before


def test_nice_zero_leaves_priority_alone() -> None:
    with cpupool.create(WorkerSettings(threads=1, nice=0)) as pool:
        assert pool.submit(_own_nice).result() == _own_nice()
