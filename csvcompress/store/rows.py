"""Rows become records by column name: the column lists and builders every store shares.

The SELECT lists alias each column to the field of the record it fills, so one builder
serves every record and every store (sqlite3.Row and psycopg's dict rows both read by
name).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from csvcompress.models import (
    DeliveryRecord,
    DeliveryState,
    ImageCounts,
    ImageRecord,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

REQUEST_COLUMNS = (
    "request_id AS id, status, webhook_url, output_file_path, error, rows, created_at, "
    "updated_at, bytes_in, bytes_out, file_name, processing_seconds, processing_since"
)
COUNT_COLUMNS = (
    "images_total AS total, images_succeeded AS succeeded, images_failed AS failed, "
    "images_skipped AS skipped"
)
DELIVERY_COLUMNS = "id, request_id, url, state, attempts, next_attempt_at, last_status, last_error"
IMAGE_COLUMNS = "id, row, position, url, status, output_url, error, error_code, bytes_in, bytes_out"


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


def record(cls: type[T], row: Row, **converted: Any) -> T:
    """A record from a row: each field from the column of its name."""
    names = (f.name for f in dataclasses.fields(cls) if f.name not in converted)
    return cls(**{name: row[name] for name in names}, **converted)


def request_of(row: Row) -> RequestRecord:
    return record(RequestRecord, row, status=RequestStatus(row["status"]))


def counts_of(row: Row) -> ImageCounts:
    return record(ImageCounts, row)


def delivery_of(row: Row) -> DeliveryRecord:
    return record(DeliveryRecord, row, state=DeliveryState(row["state"]))


def image_of(row: Row) -> ImageRecord:
    return record(ImageRecord, row, status=ImageStatus(row["status"]))
