"""Log lines: one per event, JSON or text, carrying the request ID, never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from csvcompress import logs
from csvcompress.config import CloudinarySettings, LogSettings
from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin
from tests.waiting import poll

API_KEY = "ak-7Hq2vN9xLmP4"
CLOUDINARY_KEY = "874837483274837"
CLOUDINARY_SECRET = "a676b67565c6767a6767d6767f676fe1"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CLOUDINARY_URL = f"cloudinary://{CLOUDINARY_KEY}:{CLOUDINARY_SECRET}@demo-cloud"
SECRETS = (API_KEY, CLOUDINARY_KEY, CLOUDINARY_SECRET, WEBHOOK_SECRET)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What the service would write to stderr, restoring the logging set-up afterwards."""
    monkeypatch.setenv("CLOUDINARY_URL", CLOUDINARY_URL)
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    yield stream
    for handler in [h for h in root.handlers if h.get_name() == "csvcompress"]:
        root.removeHandler(handler)
    root.setLevel(level)


async def test_json_lines_carry_the_request_id_and_no_secret(
    create_service: ServiceFactory, origin: Origin, captured: io.StringIO
) -> None:
    service = await create_service(
        log={"format": "json"},
        webhook={"secret": WEBHOOK_SECRET},
        storage={
            "cloudinary": CloudinarySettings(api_key=CLOUDINARY_KEY, api_secret=CLOUDINARY_SECRET)
        },
    )
    settings = service.settings
    # As `csvcompress serve` does, with the service's settings and environment.
    logs.configure(settings.log, logs.settings_secrets(settings), stream=captured)
    good = origin.add("good.jpg", images.photo_jpeg(40, 30))
    request_id = await service.submit(csv_bytes([["1", "A", f"{good}, {origin.url}/gone.jpg"]]))
    await service.wait(request_id)
    # Logged just after the status turns complete: wait for the line itself.
    await poll(lambda: "output CSV written" in captured.getvalue(), what="the finishing line")

    # Careless lines of the kind that leak secrets: a settings dump, a header, an error.
    log = logging.getLogger("csvcompress.careless")
    log.warning("settings: %r", settings)
    log.warning("signing with %s, uploading with %s", WEBHOOK_SECRET, CLOUDINARY_SECRET)
    log.warning("sent Authorization: Bearer %s", API_KEY)
    try:
        raise RuntimeError(f"could not reach {CLOUDINARY_URL}/upload (key {CLOUDINARY_KEY})")
    except RuntimeError:
        log.exception("upload failed")

    text = captured.getvalue()
    for secret in SECRETS:
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"level", "logger", "message", "request_id", "timestamp"} <= set(lines[0])
    careless = [line for line in lines if line["logger"] == "csvcompress.careless"]
    assert len(careless) == 4
    assert "CloudinarySettings(cloud_name='', api_key='[redacted]'" in careless[0]["message"]
    assert "WebhookSettings(secret='[redacted]'" in careless[0]["message"]
    assert careless[1]["message"] == "signing with [redacted], uploading with [redacted]"
    assert careless[2]["message"] == "sent Authorization: Bearer [redacted]"
    assert "could not reach [redacted]/upload (key [redacted])" in careless[3]["exc_info"]

    failed = [line for line in lines if "gone.jpg failed" in line["message"]]
    assert len(failed) == 1
    assert failed[0]["request_id"] == request_id
    assert failed[0]["level"] == "INFO"
    assert failed[0]["message"].endswith("gone.jpg failed (fetch): HTTP 404 from origin")
    assert failed[0]["error"] == "HTTP 404 from origin"
    finished = [line for line in lines if line["message"].endswith("output CSV written")]
    assert [line["request_id"] for line in finished] == [request_id]


async def test_text_lines_are_tagged_with_the_request(
    create_service: ServiceFactory, origin: Origin, captured: io.StringIO
) -> None:
    service = await create_service()
    logs.configure(LogSettings(level="info", format="text"), stream=captured)
    request_id = await service.submit(csv_bytes([["1", "A", f"{origin.url}/gone.jpg"]]))
    await service.wait(request_id)

    lines = captured.getvalue().splitlines()
    failed = [line for line in lines if "gone.jpg failed" in line]
    assert len(failed) == 1
    # The line says why, as the README's example line does.
    assert failed[0].endswith(
        f" INFO csvcompress.jobs.dispatcher [{request_id}]: image {origin.url}/gone.jpg failed"
        " (fetch): HTTP 404 from origin"
    )
    # A line about no request in particular has no tag.
    logging.getLogger("csvcompress.test").info("hello")
    assert captured.getvalue().splitlines()[-1].endswith(" INFO csvcompress.test: hello")


def test_known_secrets_and_credential_shapes_are_redacted() -> None:
    redactor = logs.Redactor()
    redactor.add('p"ss\\word')
    assert redactor('got p"ss\\word') == "got [redacted]"
    # JSON escapes quotes and backslashes; the escaped spelling goes too.
    assert redactor(json.dumps({"v": 'p"ss\\word'})) == '{"v": "[redacted]"}'
    assert redactor("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redactor("{'Authorization': 'Basic a2V5OnNlY3JldA=='}") == (
        "{'Authorization': 'Basic [redacted]'}"
    )
    assert redactor("new whsec_abc+/= made") == "new [redacted] made"
    assert redactor("cloudinary://k:s3cr3t@cloud") == "cloudinary://k:[redacted]@cloud"
    assert (
        redactor("?api_key=1&signature=abc&x=1") == "?api_key=[redacted]&signature=[redacted]&x=1"
    )
    assert redactor("an ordinary line") == "an ordinary line"
