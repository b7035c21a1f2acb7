"""Telling the user's system that a request finished.

A delivery is a row in SQLite written when the request finishes (after the
output CSV is in place), then sent by a background task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime

import aiohttp

from .config import Settings
from .db import Database
from .documents import request_data
from .metrics import Metrics
from .models import DeliveryState, RequestStatus

log = logging.getLogger(__name__)

EVENT_TYPES = {
    RequestStatus.COMPLETE: "request.completed",
    RequestStatus.FAILED: "request.failed",
    RequestStatus.CANCELLED: "request.cancelled",
}


class WebhookSender:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
    ):
        self._settings = settings
        self._db = database
        self._session = session
        self._metrics = metrics or Metrics()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for delivery_id, _due in await self._db.due_delivery_ids():
            self._spawn(delivery_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def request_finished(self, request_id: str) -> None:
        record = await self._db.get_request(request_id)
        if record is None or not record.webhook_url or not record.status.finished:
            return
        counts = await self._db.get_counts(request_id)
        event_type = EVENT_TYPES[record.status]
        payload = {
            "type": event_type,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": request_data(record, counts, self._settings.server.base_url),
        }
        delivery_id = f"msg_{uuid.uuid4().hex}"
        await self._db.add_delivery(
            delivery_id, request_id, event_type, record.webhook_url, json.dumps(payload)
        )
        self._spawn(delivery_id)

    def _spawn(self, delivery_id: str) -> None:
        task = asyncio.create_task(self._deliver(delivery_id), name=f"webhook-{delivery_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery_id: str) -> None:
        found = await self._db.get_delivery(delivery_id)
        if found is None:
            return
        delivery, payload = found
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(
                delivery.url,
                data=payload.encode(),
                headers={"Content-Type": "application/json"},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._settings.webhook.timeout),
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
        ok = status is not None and 200 <= status < 300
        if not ok and error is None:
            error = f"HTTP {status}"
        self._metrics.webhook_delivery("delivered" if ok else "failed")
        await self._db.record_attempt(
            delivery_id,
            state=DeliveryState.DELIVERED if ok else DeliveryState.FAILED,
            next_attempt_at=None,
            last_status=status,
            last_error=error,
        )
        log.info("webhook %s for %s: %s", delivery_id, delivery.request_id, error or status)
