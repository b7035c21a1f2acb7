"""The reads every SQL store runs the same way, but for its placeholder ("?" or "%s")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from csvcompress.models import DeliveryRecord, ImageCounts, ImageRecord, RequestRecord
from csvcompress.store.rows import (
    COUNT_COLUMNS,
    DELIVERY_COLUMNS,
    IMAGE_COLUMNS,
    REQUEST_COLUMNS,
    Row,
    counts_of,
    delivery_of,
    image_of,
    request_of,
)


class SharedReads:
    """Mixed into a store that provides `_row`/`_rows` (each read to its end in one call)."""

    # The driver's parameter placeholder.
    PLACEHOLDER: ClassVar[str]

    async def _row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        raise NotImplementedError

    async def _rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]:
        raise NotImplementedError

    async def get_request(self, request_id: str) -> RequestRecord | None:
        p = self.PLACEHOLDER
        row = await self._row(
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = {p}", (request_id,)
        )
        return request_of(row) if row else None

    async def get_request_with_counts(
        self, request_id: str
    ) -> tuple[RequestRecord, ImageCounts] | None:
        """get_request and get_counts in one query: one trip to the database, not two."""
        p = self.PLACEHOLDER
        row = await self._row(
            f"SELECT {REQUEST_COLUMNS}, {COUNT_COLUMNS} FROM requests WHERE request_id = {p}",
            (request_id,),
        )
        return (request_of(row), counts_of(row)) if row else None

    async def get_counts(self, request_id: str) -> ImageCounts:
        p = self.PLACEHOLDER
        row = await self._row(
            f"SELECT {COUNT_COLUMNS} FROM requests WHERE request_id = {p}", (request_id,)
        )
        return counts_of(row) if row else ImageCounts()

    async def image_page(self, request_id: str, after: int, limit: int) -> list[ImageRecord]:
        p = self.PLACEHOLDER
        rows = await self._rows(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE request_id = {p} AND id > {p} "
            f"ORDER BY id LIMIT {p}",
            (request_id, after, limit),
        )
        return [image_of(row) for row in rows]

    async def get_delivery(self, delivery_id: str) -> tuple[DeliveryRecord, str] | None:
        """A delivery and its payload."""
        p = self.PLACEHOLDER
        row = await self._row(
            f"SELECT {DELIVERY_COLUMNS}, payload FROM deliveries WHERE id = {p}", (delivery_id,)
        )
        return (delivery_of(row), str(row["payload"])) if row else None
