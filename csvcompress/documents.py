"""The JSON documents the API answers with and webhooks carry, and the URLs in them.

One place builds every JSON body the service sends (errors aside: those come from
`errors`), so /status, the listing and the webhook payload never disagree, and a
field added here is added everywhere (and must be described in http/openapi.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from csvcompress.clock import iso_from_unix
from csvcompress.models import (
    FINISHED_STATUSES,
    DeliveryRecord,
    DeliveryState,
    ImageCounts,
    ImageRecord,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)

# An image's thumbnails: of the original ("before") and of the output ("after").
THUMBNAIL_SIDES = ("before", "after")


def thumbnail_urls(base_url: str, request_id: str, image_id: int) -> dict[str, str]:
    """Where the page gets an image's thumbnails (made on first view, then kept)."""
    return {
        side: f"{base_url}/thumbnails/{request_id}/{image_id}-{side}.webp"
        for side in THUMBNAIL_SIDES
    }


def status_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/status/{request_id}"


def output_csv_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/requests/{request_id}/output.csv"


def shown_url(url: str) -> str:
    """A URL as documents show it: credentials in its user-info part are replaced by
    `***`, so a password in a webhook URL is used for the delivery but never echoed."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


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
        "url": shown_url(delivery.url),
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "next_attempt_at": None if next_at is None else iso_from_unix(next_at),
    }


def request_data(record: RequestRecord, counts: ImageCounts, base_url: str) -> dict[str, Any]:
    """What both /status and a webhook say about a request."""
    # A failed request has no output CSV; a retried one keeps its old path until it
    # finishes again, so the URL is given only once the request is finished.
    done = record.status in FINISHED_STATUSES and record.output_file_path
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
        "file_name": record.file_name,
        "processing_seconds": round(_processing_seconds(record), 3),
    }
    if record.error:
        data["error"] = record.error
    return data


def _processing_seconds(record: RequestRecord) -> float:
    """Time spent processing: not the wait before it starts, nor time after a cancel or
    before a retry; counting on while it processes."""
    since = record.processing_since
    running = max(0.0, time.time() - since) if since is not None else 0.0
    return record.processing_seconds + running


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
        doc["webhook"] = {"url": shown_url(record.webhook_url), "state": "waiting", "attempts": 0}
    return doc


def request_list_document(
    page: Sequence[tuple[RequestRecord, ImageCounts]], next_cursor: str | None, base_url: str
) -> dict[str, Any]:
    """A page of GET /requests: each request as /status tells it, with its status URL."""
    return {
        "requests": [
            {
                **request_data(record, counts, base_url),
                "status_url": status_url(base_url, record.id),
            }
            for record, counts in page
        ],
        "next_cursor": next_cursor,
    }


def image_document(image: ImageRecord, request_id: str, base_url: str) -> dict[str, Any]:
    """One image of a request, `row` and `position` 1-based as people count.

    `thumbnails` (small WebP previews served by the service) only for an image that
    succeeded: the page never loads the original from its origin.
    """
    succeeded = image.status is ImageStatus.SUCCEEDED
    return {
        "row": image.row + 1,
        "position": image.position + 1,
        "url": image.url,
        "status": image.status.value,
        "output_url": image.output_url,
        "bytes": {"input": image.bytes_in, "output": image.bytes_out},
        "error": image.error,
        "error_code": image.error_code,
        "thumbnails": thumbnail_urls(base_url, request_id, image.id) if succeeded else None,
    }


def image_page_document(
    request_id: str, images: Sequence[ImageRecord], next_cursor: str | None, base_url: str
) -> dict[str, Any]:
    """A page of GET /requests/{id}/images."""
    return {
        "request_id": request_id,
        "images": [image_document(image, request_id, base_url) for image in images],
        "next_cursor": next_cursor,
    }


def upload_accepted_document(
    request_id: str, rows: int, images: int, base_url: str
) -> dict[str, Any]:
    """The 202 of POST /upload; its `status_url` is also the Location header."""
    return {
        "request_id": request_id,
        "status": RequestStatus.PENDING.value,
        "status_url": status_url(base_url, request_id),
        "rows": rows,
        "images": images,
    }


def retry_accepted_document(request_id: str, images: int, base_url: str) -> dict[str, Any]:
    """The 202 of POST /requests/{id}/retry; `images` is how many went back in the queue."""
    return {
        "request_id": request_id,
        "status": RequestStatus.PENDING.value,
        "status_url": status_url(base_url, request_id),
        "images": images,
    }


def health_document(status: str, checks: dict[str, str]) -> dict[str, Any]:
    """GET /healthz: "ok", "unhealthy" or "stopping", and what each check found."""
    return {"status": status, "checks": checks}
