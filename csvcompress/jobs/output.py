"""Finishing a request: its output CSV is written, then its status, then it is announced.

The output CSV is the input file's rows with the recorded outcomes added, streamed
from the store in a worker thread, so a 300,000-URL request never sits in memory.
Whatever dispatches the images calls `Finisher.finish` once a request has no image
left in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

from csvcompress import csv_input
from csvcompress.csv_input import ImageOutcome
from csvcompress.errors import CsvCompressError, InsufficientStorage
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.logs import REQUEST_ID
from csvcompress.retry import DISK_FULL_PATIENCE, keep_trying
from csvcompress.storage.files import CsvFiles, LocalFiles
from csvcompress.store.base import OutcomeRow, Store

log = logging.getLogger(__name__)

FinishedCallback = Callable[[str], Awaitable[None]]


def write_output_csv(
    store: Store,
    request_id: str,
    output: Path,
    files: CsvFiles | None = None,
    *,
    escape_formulas: bool = False,
) -> str:
    """Stream the input CSV and the recorded outcomes into the output CSV (runs in a thread);
    returns the output's reference (`files` keeps it: its path, or where it was moved)."""
    files = files or LocalFiles()
    stored = store.request_input_blocking(request_id)
    if stored is None:
        raise FileNotFoundError(f"request {request_id} has no input")
    with files.local_copy_blocking(stored.input_path) as input_path:
        # validate() passed this file at upload; its header is all that is needed now.
        summary = csv_input.accepted_summary(input_path, stored.rows, stored.images)
        outcomes = _group_by_row(store.image_outcomes_blocking(request_id))
        csv_input.write_output(
            input_path, output, summary, outcomes, escape_formulas=escape_formulas
        )
    return files.keep_blocking(output, f"outputs/{request_id}.csv")


def _group_by_row(rows: Iterable[OutcomeRow]) -> Iterator[tuple[int, list[ImageOutcome]]]:
    for row, group in itertools.groupby(rows, key=lambda outcome: outcome.row):
        yield row, [ImageOutcome(o.position, o.output_url, o.error) for o in group]


class Finisher:
    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        outputs_dir: Path,
        on_finished: FinishedCallback | None = None,
        files: CsvFiles | None = None,
        *,
        escape_formulas: bool = False,
    ) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self.outputs_dir = outputs_dir
        self._on_finished = on_finished
        self._files = files or LocalFiles()
        self._escape_formulas = escape_formulas

    async def finish(self, request_id: str, *, stopping: bool = False) -> bool:
        """Write the output CSV, then mark the request finished, then notify.

        False (and nothing written) while images of the request are still pending.
        """
        REQUEST_ID.set(request_id)  # in this task's own context
        counts = await self._store.get_counts(request_id)
        if counts.pending:
            # Images left pending by a stop or an internal error: leave them for the next start.
            if not stopping:
                log.error("request %s drained with %d images pending", request_id, counts.pending)
            return False
        output = self.outputs_dir / f"{request_id}.csv"

        async def write() -> str:
            try:
                return await asyncio.to_thread(
                    write_output_csv,
                    self._store,
                    request_id,
                    output,
                    self._files,
                    escape_formulas=self._escape_formulas,
                )
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise InsufficientStorage(f"{output}: {exc.strerror}") from exc
                raise

        try:
            kept = await keep_trying(
                write,
                what=f"writing the output CSV of {request_id}",
                log=log,
                patience=DISK_FULL_PATIENCE,
            )
        except (OSError, CsvCompressError) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            log.error("request %s failed: could not write the output CSV: %s", request_id, reason)
            error = f"could not write the output CSV: {reason}"
            await keep_trying(
                lambda: self._lifecycle.fail(request_id, error),
                what=f"marking request {request_id} failed",
                log=log,
            )
        else:
            await keep_trying(
                lambda: self._lifecycle.finish(request_id, kept),
                what=f"marking request {request_id} complete",
                log=log,
            )
            log.info("request %s finished: output CSV written", request_id)
        if self._on_finished is not None:
            with contextlib.suppress(Exception):
                await self._on_finished(request_id)
        return True
