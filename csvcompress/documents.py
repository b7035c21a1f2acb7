"""The JSON documents the API answers with and webhooks carry, and the URLs in them.

One place builds them, so /status and the webhook payload never disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from csvcompress.models import (
    DeliveryRecord,
    DeliveryState,
    ImageCounts,
    RequestRecord,
    RequestStatus,
)


def status_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/status/{request_id}"


def output_csv_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/requests/{request_id}/output.csv"


def delivery_document(delivery: DeliveryRecord | None) -> dict[str, Any] | None:
    """A webhook delivery as /status shows it; `id` is the webhook-id header it is sent with.

    `last_status` is the HTTP status of the last attempt (null if it got no answer,
    `last_error` then says why); `next_attempt_at` is an ISO 8601 UTC time while the
    delivery is pending, else null.
    """
    if delivery is None:
        return None
    pending = delivery.state is DeliveryState.PENDING
    next_at = delivery.next_attempt_at if pending else None
    return {
        "id": delivery.id,
        "url": delivery.url,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "next_attempt_at": None if next_at is None else iso_time(next_at),
    }


def iso_time(unix_seconds: float) -> str:
    """1764090000.5 -> "2025-11-25T17:00:00.500Z"."""
    when = datetime.fromtimestamp(unix_seconds, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_data(record: RequestRecord, counts: ImageCounts, base_url: str) -> dict[str, Any]:
    """What both /status and a webhook say about a request."""
    done = (
        record.status in (RequestStatus.COMPLETE, RequestStatus.CANCELLED)
        and record.output_file_path
    )
    data: dict[str, Any] = {
        "request_id": record.id,
        "status": record.status.value,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "rows": record.rows,
        "images": counts.to_json(),
        "bytes": {
            "input": record.bytes_in,
            "output": record.bytes_out,
            "saved": record.bytes_in - record.bytes_out,
        },
        "output_csv_url": output_csv_url(base_url, record.id) if done else None,
    }
    if record.error:
        data["error"] = record.error
    return data


def status_document(
    record: RequestRecord,
    counts: ImageCounts,
    delivery: DeliveryRecord | None,
    base_url: str,
) -> dict[str, Any]:
    doc = request_data(record, counts, base_url)
    doc["webhook"] = delivery_document(delivery) if record.webhook_url else None
    if record.webhook_url and delivery is None:
        # The webhook is sent once the request finishes; until then it is waiting.
        doc["webhook"] = {"url": record.webhook_url, "state": "waiting", "attempts": 0}
    return doc
