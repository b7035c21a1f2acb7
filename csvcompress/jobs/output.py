"""The output CSV: the input rows with their output URLs and errors, streamed (in a thread)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

from csvcompress import csv_input
from csvcompress.config import LimitSettings
from csvcompress.csv_input import ImageOutcome
from csvcompress.store import sqlite as db


def write_output_csv(db_path: Path, request_id: str, output: Path, limits: LimitSettings) -> None:
    """Stream the input CSV and the recorded outcomes into the output CSV (runs in a thread)."""
    with closing(db.connect_sync(db_path)) as conn:
        stored = db.request_input_sync(conn, request_id)
        if stored is None:
            raise FileNotFoundError(f"request {request_id} has no input")
        input_path, rows, images = stored
        # validate() passed this file at upload; its header is all that is needed now.
        summary = csv_input.accepted_summary(Path(input_path), rows, images)
        outcomes = _group_by_row(db.iter_image_outcomes_sync(conn, request_id))
        csv_input.write_output(Path(input_path), output, summary, outcomes)


def _group_by_row(
    rows: Iterable[tuple[int, int, str | None, str | None]],
) -> Iterator[tuple[int, list[ImageOutcome]]]:
    for row, group in itertools.groupby(rows, key=operator.itemgetter(0)):
        yield row, [ImageOutcome(position, url, error) for _, position, url, error in group]
