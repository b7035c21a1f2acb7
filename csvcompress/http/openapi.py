"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json.

Built from plain dicts: SCHEMAS holds every payload, PATHS every route, one entry each.
A route added to routes.ROUTES gets its entry here (tests/http/test_openapi.py fails on a
route the document does not describe, and checks live responses against these schemas).
Objects are closed (`additionalProperties: false`) so a field added to a payload
without being described here fails that test too.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from csvcompress.http.keys import SERVICE
from csvcompress.http.requests import CURSOR_DIGITS, IMAGES_PAGE, REQUESTS_PAGE
from csvcompress.models import DeliveryState, ImageStatus, RequestStatus

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


_STRING: Schema = {"type": "string"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_URL: Schema = {"type": "string", "format": "uri"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_REQUEST_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_CURSOR: Schema = {
    "type": "string",
    "description": "Pass back as `cursor` for the next page; null on the last page.",
}

# What /status, the listing and the webhook say about a request (documents.request_data).
_REQUEST_FIELDS: dict[str, Schema] = {
    "request_id": _REQUEST_ID,
    "status": {"type": "string", "enum": [s.value for s in RequestStatus]},
    "created_at": _TIME,
    "updated_at": _TIME,
    "rows": _COUNT,
    "images": _ref("ImageCounts"),
    "bytes": _ref("Bytes"),
    "output_csv_url": {**_nullable(_URL), "description": "Set once the output CSV is ready."},
    "file_name": {
        **_nullable(_STRING),
        "description": "The uploaded file's name (null for requests stored before it was kept).",
    },
    "processing_seconds": {
        "type": "number",
        "minimum": 0,
        "description": "Time spent processing: not the wait before it, nor after a cancel "
        "or before a retry; still counting while the request processes.",
    },
}
_REQUEST_OPTIONAL: dict[str, Schema] = {
    "error": {"type": "string", "description": "Why a failed request failed."},
}

SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": {"type": "string", "description": "What went wrong, for people."}}),
    "Problem": _object(
        {
            "line": {"type": "integer", "minimum": 1, "description": "1-based line of the file."},
            "column": _STRING,
            "message": _STRING,
        }
    ),
    "CsvRefusal": _object(
        {
            "error": _STRING,
            "problems": {"type": "array", "items": _ref("Problem")},
        }
    ),
    "UploadAccepted": _object(
        {
            "request_id": _REQUEST_ID,
            "status": {"const": "pending"},
            "status_url": _URL,
            "rows": _COUNT,
            "images": {**_COUNT, "description": "URL occurrences in the CSV."},
        }
    ),
    "ImageCounts": _object(
        {"total": _COUNT, "succeeded": _COUNT, "failed": _COUNT, "pending": _COUNT},
        {"skipped": {**_COUNT, "description": "Left out by a cancel; only when cancelled."}},
    ),
    "RetryAccepted": _object(
        {
            "request_id": _REQUEST_ID,
            "status": {"const": "pending"},
            "status_url": _URL,
            "images": {**_COUNT, "description": "Images put back in the queue."},
        }
    ),
    "Health": _object(
        {
            "status": {"type": "string", "enum": ["ok", "unhealthy", "stopping"]},
            "checks": _object(
                {
                    "database": {**_STRING, "description": '"ok", or what failed.'},
                    "storage": {**_STRING, "description": '"ok", or what failed.'},
                }
            ),
        }
    ),
    "Bytes": _object(
        {
            "input": {**_COUNT, "description": "Bytes downloaded, each distinct image once."},
            "output": {**_COUNT, "description": "Bytes of the recompressed images."},
            "saved": {"type": "integer", "description": "input - output"},
        }
    ),
    "Webhook": _object(
        {
            "url": _URL,
            "state": {"type": "string", "enum": ["waiting", *(s.value for s in DeliveryState)]},
            "attempts": _COUNT,
        },
        {
            "id": {**_STRING, "description": "The webhook-id header; the same on every attempt."},
            "last_status": _nullable({"type": "integer"}),
            "last_error": _nullable(_STRING),
            "next_attempt_at": _nullable(_TIME),
        },
    ),
    "Status": _object(
        {**_REQUEST_FIELDS, "webhook": _nullable(_ref("Webhook"))}, _REQUEST_OPTIONAL
    ),
    "RequestSummary": _object({**_REQUEST_FIELDS, "status_url": _URL}, _REQUEST_OPTIONAL),
    "RequestList": _object(
        {
            "requests": {"type": "array", "items": _ref("RequestSummary")},
            "next_cursor": _nullable(_CURSOR),
        }
    ),
    "Image": _object(
        {
            "row": {"type": "integer", "minimum": 1, "description": "1-based data row."},
            "position": {
                "type": "integer",
                "minimum": 1,
                "description": "1-based place in the row's URL cell.",
            },
            "url": {**_STRING, "description": "The input URL."},
            "status": {"type": "string", "enum": [s.value for s in ImageStatus]},
            "output_url": _nullable(_URL),
            "bytes": _object({"input": _COUNT, "output": _COUNT}),
            "error": _nullable(_STRING),
            "error_code": _nullable(_STRING),
            "thumbnails": {
                **_nullable(_object({"before": _URL, "after": _URL})),
                "description": "Small WebP previews of the original and the output, served "
                "by the service (made on first view); null unless the image succeeded.",
            },
        }
    ),
    "ImagePage": _object(
        {
            "request_id": _REQUEST_ID,
            "images": {"type": "array", "items": _ref("Image")},
            "next_cursor": _nullable(_CURSOR),
        }
    ),
}


def _json(schema: Schema, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_REQUEST_ID_PARAM: Schema = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "schema": _STRING,
}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _limit(default: int, largest: int) -> Schema:
    schema = {"type": "integer", "minimum": 1, "maximum": largest, "default": default}
    return _query("limit", schema, "Items per page.")


_CURSOR_PARAM = _query(
    "cursor",
    {"type": "string", "pattern": f"^[0-9]{{0,{CURSOR_DIGITS}}}$"},
    "`next_cursor` of the previous page (digits); empty (or left out): the first page.",
)
_HTML = {"text/html": {"schema": _STRING}}

PATHS: dict[str, dict[str, Any]] = {
    "/": {
        "get": {
            "tags": ["pages"],
            "summary": "The upload page and the recent requests",
            "responses": {"200": {"description": "HTML", "content": _HTML}},
        }
    },
    "/requests/{request_id}": {
        "parameters": [_REQUEST_ID_PARAM],
        "get": {
            "tags": ["pages"],
            "summary": "A request's live progress and results (HTML; data comes from the API)",
            "responses": {"200": {"description": "HTML", "content": _HTML}},
        },
        "delete": {
            "tags": ["control"],
            "operationId": "cancelOrDelete",
            "summary": "Cancel an unfinished request, or remove a finished one with its files",
            "responses": {
                "200": _json(
                    _ref("Status"),
                    "Being cancelled: the status document (`cancelling` until the output CSV is"
                    " written, then `cancelled`).",
                ),
                "204": {"description": "Removed, with its images, CSVs and rows."},
                "404": _error("No such request."),
                "409": _error("Still being finished, or it finished before the cancel."),
            },
            "description": (
                "A storage backend that refuses to remove the images (Cloudinary down) "
                "makes it answer 503; nothing is removed then."
            ),
        },
    },
    "/requests/{request_id}/retry": {
        "parameters": [_REQUEST_ID_PARAM],
        "post": {
            "tags": ["control"],
            "operationId": "retry",
            "summary": "Queue a finished request's failed (and skipped) images again",
            "responses": {
                "202": _json(
                    _ref("RetryAccepted"),
                    "Queued; a new output CSV and webhook follow when done.",
                    headers={"Location": {"schema": _URL, "description": "The status URL."}},
                ),
                "404": _error("No such request."),
                "409": _error("Not finished, still being finished, or nothing to retry."),
                "503": _error("The service is shutting down."),
            },
        },
    },
    "/upload": {
        "post": {
            "tags": ["requests"],
            "operationId": "upload",
            "summary": "Upload a CSV; answers at once with the request ID",
            "parameters": [_query("webhook_url", _URL, "Same as the form field.")],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {
                                "file": {"type": "string", "contentMediaType": "text/csv"},
                                "webhook_url": _URL,
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": _json(
                    _ref("UploadAccepted"),
                    "Stored; processing has started.",
                    headers={"Location": {"schema": _URL, "description": "The status URL."}},
                ),
                "400": _json(
                    {"oneOf": [_ref("CsvRefusal"), _ref("Error")]},
                    "The CSV was refused (with every problem) or the form is wrong.",
                ),
                "413": _error("The file is over [limits] max_upload_bytes."),
            },
        }
    },
    "/status/{request_id}": {
        "parameters": [_REQUEST_ID_PARAM],
        "get": {
            "tags": ["requests"],
            "operationId": "status",
            "summary": "Progress and result of a request",
            "responses": {
                "200": _json(_ref("Status"), "The status document."),
                "404": _error("No such request."),
            },
        },
    },
    "/requests": {
        "get": {
            "tags": ["requests"],
            "operationId": "listRequests",
            "summary": "Requests, newest first",
            "parameters": [
                _query(
                    "status",
                    {"type": "string", "enum": [*(s.value for s in RequestStatus), ""]},
                    "Only requests in this state; empty (or left out): every state.",
                ),
                _limit(*REQUESTS_PAGE),
                _CURSOR_PARAM,
            ],
            "responses": {
                "200": _json(_ref("RequestList"), "A page of requests."),
                "400": _error("A bad status, limit or cursor."),
            },
        }
    },
    "/requests/{request_id}/images": {
        "parameters": [_REQUEST_ID_PARAM],
        "get": {
            "tags": ["requests"],
            "operationId": "listImages",
            "summary": "A request's images in input order, with results",
            "parameters": [_limit(*IMAGES_PAGE), _CURSOR_PARAM],
            "responses": {
                "200": _json(_ref("ImagePage"), "A page of images."),
                "400": _error("A bad limit or cursor."),
                "404": _error("No such request."),
            },
        },
    },
    "/requests/{request_id}/output.csv": {
        "parameters": [_REQUEST_ID_PARAM],
        "get": {
            "tags": ["requests"],
            "operationId": "outputCsv",
            "summary": "The output CSV, once the request is complete",
            "responses": {
                "200": {"description": "The CSV, UTF-8", "content": {"text/csv": {}}},
                "404": _error("No such request, or no output yet."),
            },
        },
    },
    "/requests/{request_id}/webhook/redeliver": {
        "parameters": [_REQUEST_ID_PARAM],
        "post": {
            "tags": ["webhooks"],
            "operationId": "redeliverWebhook",
            "summary": "Send a finished request's webhook again (same webhook-id and body)",
            "responses": {
                "202": _json(_ref("Webhook"), "Queued from the first step of the schedule."),
                "404": _error("No such request."),
                "409": _error("The request has no webhook URL or has not finished."),
            },
        },
    },
    # The route is /files/{key:.+}; OpenAPI path parameters cannot hold "/", and local keys
    # are always "<request_id>/<row>-<position>.<ext>".
    "/files/{request_id}/{file}": {
        "parameters": [
            _REQUEST_ID_PARAM,
            {"name": "file", "in": "path", "required": True, "schema": _STRING},
        ],
        "get": {
            "tags": ["files"],
            "summary": "An output image (local storage only)",
            "responses": {
                "200": {"description": "The image", "content": {"image/*": {}}},
                "404": _error("No such file."),
            },
        },
    },
    "/thumbnails/{request_id}/{name}": {
        "parameters": [
            _REQUEST_ID_PARAM,
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {**_STRING, "pattern": "^[0-9]+-(before|after)[.]webp$"},
            },
        ],
        "get": {
            "tags": ["files"],
            "summary": "A small preview of an image, before or after (from Image.thumbnails)",
            "responses": {
                "200": {"description": "The thumbnail", "content": {"image/webp": {}}},
                "404": _error("No such image, it did not succeed, or no preview can be made."),
            },
        },
    },
    "/healthz": {
        "get": {
            "tags": ["meta"],
            "operationId": "health",
            "summary": "Whether the database and storage take writes (for probes)",
            "responses": {
                "200": _json(_ref("Health"), "Healthy."),
                "503": _json(_ref("Health"), "A check failed, or the service is stopping."),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["meta"],
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {"200": {"description": "Metrics", "content": {"text/plain": {}}}},
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["meta"],
            "summary": "This document",
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
        }
    },
}


def document(base_url: str) -> dict[str, Any]:
    """The OpenAPI document for a service reachable at base_url."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "csvcompress",
            "version": API_VERSION,
            "description": (
                "Upload a CSV of product-image URLs; every image is fetched, recompressed "
                "and re-hosted, and the CSV comes back with the new URLs."
            ),
        },
        "servers": [{"url": base_url}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <[server] api_key>",
                }
            },
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    base = request.app[SERVICE].settings.server.base_url
    return web.json_response(document(base))
