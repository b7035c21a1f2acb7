"""Removing requests: on a schedule once they are old, or at once on DELETE /requests/{id}.

A request is removed files first (its output images in storage, its output CSV,
its uploaded CSV), rows last, so a crash half-way leaves a row that the next
sweep removes again rather than files that nothing points at any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from datetime import UTC, datetime

from csvcompress.clock import iso_days_before
from csvcompress.config import Settings
from csvcompress.datadir import remove_partial_uploads
from csvcompress.errors import StorageError
from csvcompress.jobs.dispatcher import Dispatcher
from csvcompress.logs import request_context
from csvcompress.storage import CsvFiles, LocalFiles, Storage
from csvcompress.store.base import Store

log = logging.getLogger(__name__)

# Requests looked at per query during a sweep.
SWEEP_BATCH = 100


class Retention:
    """Removes requests, and sweeps old finished ones every `[retention] interval` seconds."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        storage: Storage,
        queue: Dispatcher,
        files: CsvFiles | None = None,
    ) -> None:
        self._settings = settings.retention
        self._outputs_dir = settings.outputs_dir
        self._thumbnails_dir = settings.thumbnails_dir
        self._uploads_dir = settings.uploads_dir
        # A partial upload unchanged for longer than an upload may take was abandoned.
        self._partial_after = settings.limits.upload_timeout
        self._store = store
        self._storage = storage
        self._queue = queue
        self._files = files or LocalFiles()
        self._task: asyncio.Task[None] | None = None
        self._removing: set[str] = set()

    async def start(self) -> None:
        # Even with days = 0 (keep every request), abandoned partial uploads are swept.
        self._task = asyncio.create_task(self._run(), name="retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def is_removing(self, request_id: str) -> bool:
        return request_id in self._removing

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(
                    remove_partial_uploads, self._uploads_dir, self._partial_after
                )
                await self.sweep(datetime.now(UTC))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "retention sweep failed; trying again in %g s", self._settings.interval
                )
            await asyncio.sleep(self._settings.interval)

    async def sweep(self, now: datetime) -> int:
        """Remove every finished request last updated more than `days` before `now`."""
        if self._settings.days == 0:
            return 0
        # The updated_at before which a request is `days` old (timestamps sort in time order).
        cutoff = iso_days_before(now, self._settings.days)
        removed = 0
        skipped: set[str] = set()
        while True:
            # Removed requests leave the result; those skipped stay in it, so ask for more.
            found = await self._store.finished_before(cutoff, SWEEP_BATCH + len(skipped))
            todo = [request_id for request_id in found if request_id not in skipped]
            if not todo:
                break
            for request_id in todo:
                if self._queue.is_busy(request_id) or not await self.remove(request_id):
                    skipped.add(request_id)
                else:
                    removed += 1
        if removed:
            log.info(
                "retention: removed %d request(s) finished more than %d days ago",
                removed,
                self._settings.days,
            )
        return removed

    async def remove(self, request_id: str) -> bool:
        """Remove a request's images, CSVs and rows; False if storage refused (kept for later)."""
        if request_id in self._removing:
            return False
        self._removing.add(request_id)
        try:
            with request_context(request_id):
                return await self._remove(request_id)
        finally:
            self._removing.discard(request_id)

    async def _remove(self, request_id: str) -> bool:
        try:
            await self._storage.delete_prefix(f"{request_id}/")
        except StorageError as exc:
            log.warning("could not remove the images of request %s: %s", request_id, exc.message)
            return False
        files = await self._store.request_files(request_id)
        # A half-written output left by a crash has no reference yet.
        files.append(str(self._outputs_dir / f"{request_id}.csv"))
        await self._files.delete(files)
        await asyncio.to_thread(shutil.rmtree, self._thumbnails_dir / request_id, True)
        await self._store.delete_request(request_id)
        log.info("request %s removed with its files", request_id)
        return True
