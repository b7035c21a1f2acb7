"""Cloudinary storage: the real service against a local fake of Cloudinary's API."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pyvips

from csvcompress.config import CloudinarySettings, Settings, replace_settings
from csvcompress.errors import ConfigError, StorageFailed, StorageRejected
from csvcompress.storage import CloudinaryStorage, create_storage
from csvcompress.storage.cloudinary import resolve_credentials
from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.fake_cloudinary import FakeCloudinary
from tests.procs import ServiceProcess
from tests.servers import Origin, free_port
from tests.waiting import poll

REJECTED = "Cloudinary rejected the credentials"


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own CLOUDINARY_URL must not leak into the tests.
    for name in ("CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME", "CLOUDINARY_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCloudinary]:
    server = FakeCloudinary()
    await server.start()
    yield server
    await server.stop()


def storage_section(fake: FakeCloudinary, **cloudinary: Any) -> dict[str, Any]:
    """[storage] for a service using the fake, with quick back-off."""
    options = {
        "cloud_name": fake.cloud_name,
        "api_key": fake.api_key,
        "api_secret": fake.api_secret,
        "upload_prefix": fake.url,
        "backoff": 0.01,
    }
    return {"backend": "cloudinary", "cloudinary": options | cloudinary}


def backend(fake: FakeCloudinary, **cloudinary: Any) -> CloudinaryStorage:
    section = storage_section(fake, **cloudinary)["cloudinary"]
    return CloudinaryStorage(CloudinarySettings(**section))


# --- the service end to end ---------------------------------------------------------


async def test_images_go_to_cloudinary_and_the_csv_lists_their_secure_urls(
    create_service: ServiceFactory, origin: Origin, fake: FakeCloudinary
) -> None:
    service = await create_service(storage=storage_section(fake))
    jpeg = origin.add("a.jpg", images.photo_jpeg(120, 80))
    png = origin.add("b.png", images.png(64, 48), "image/png")
    webp = origin.add("c.webp", images.webp(50, 40), "image/webp")

    doc = await service.wait(
        await service.submit(csv_bytes([["1", "A", f"{jpeg}, {png}"], ["2", "B", webp]]))
    )

    assert doc["images"] == {"total": 3, "succeeded": 3, "failed": 0, "pending": 0}
    request_id = doc["request_id"]
    folder = f"csvcompress/{request_id}"
    assert sorted(fake.assets) == [f"{folder}/1-1", f"{folder}/1-2", f"{folder}/2-1"]
    first, second, third = (fake.assets[f"{folder}/{n}"] for n in ("1-1", "1-2", "2-1"))
    rows = await service.output_rows(doc)
    assert rows[0]["Output Image Urls"] == (
        f"https://res.cloudinary.com/demo-cloud/image/upload/v{first.version}/{folder}/1-1.jpg, "
        f"https://res.cloudinary.com/demo-cloud/image/upload/v{second.version}/{folder}/1-2.png"
    )
    assert rows[1]["Output Image Urls"] == fake.secure_url(third)
    assert third.secure_url.endswith(f"/{folder}/2-1.webp")
    assert [row["Errors"] for row in rows] == ["", ""]
    # The uploaded bytes are the recompressed images, not the originals.
    for asset, size in ((first, (120, 80)), (second, (64, 48)), (third, (50, 40))):
        image = pyvips.Image.new_from_buffer(asset.data, "")
        assert (image.width, image.height) == size
    assert len(first.data) < len(images.photo_jpeg(120, 80))
    # Every upload asked to overwrite, so a repeated upload replaces rather than adds.
    assert all(a.fields["overwrite"] == "1" and a.status == 200 for a in fake.attempts)
    assert doc["bytes"]["output"] == sum(len(a.data) for a in fake.assets.values())


async def test_a_server_error_is_retried(
    create_service: ServiceFactory, origin: Origin, fake: FakeCloudinary
) -> None:
    service = await create_service(storage=storage_section(fake))
    fake.fail_next(500)
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))

    doc = await service.wait(await service.submit(csv_bytes([["1", "A", url]])))

    assert doc["images"]["succeeded"] == 1
    public_id = f"csvcompress/{doc['request_id']}/1-1"
    assert [a.status for a in fake.upload_attempts(public_id)] == [500, 200]
    assert fake.stored == [public_id]
    row = (await service.output_rows(doc))[0]
    assert row["Output Image Urls"] == fake.secure_url(fake.assets[public_id])


async def test_a_rate_limit_waits_as_long_as_retry_after_asks(
    create_service: ServiceFactory, origin: Origin, fake: FakeCloudinary
) -> None:
    service = await create_service(storage=storage_section(fake))
    fake.fail_next(429, {"Retry-After": "1"})
    url = origin.add("a.jpg", images.photo_jpeg(40, 30))

    doc = await service.wait(await service.submit(csv_bytes([["1", "A", url]])))

    assert doc["images"]["succeeded"] == 1
    limited, accepted = fake.upload_attempts(f"csvcompress/{doc['request_id']}/1-1")
    assert (limited.status, accepted.status) == (429, 200)
    # The back-off alone is 0.01 s; the second try waited for Retry-After.
    assert accepted.at - limited.at >= 0.95


async def test_rejected_credentials_fail_every_image_at_once_and_are_logged_once(
    create_service: ServiceFactory,
    origin: Origin,
    fake: FakeCloudinary,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="csvcompress")
    # Two workers, so at most two images are under way when the first refusal comes back.
    service = await create_service(
        storage=storage_section(fake, api_secret="not-the-secret"),
        fetch={"concurrency": 1},
        workers={"threads": 1},
    )
    rows = [
        [
            str(n),
            f"P{n}",
            ", ".join(
                origin.add(f"{n}-{k}.jpg", images.photo_jpeg(32, 24, seed=n)) for k in (1, 2)
            ),
        ]
        for n in range(1, 6)
    ]

    doc = await service.wait(await service.submit(csv_bytes(rows)))

    assert doc["status"] == "complete"
    assert doc["images"] == {"total": 10, "succeeded": 0, "failed": 10, "pending": 0}
    out = await service.output_rows(doc)
    assert [r["Errors"] for r in out] == [f"#1: {REJECTED}; #2: {REJECTED}"] * 5
    assert [r["Output Image Urls"] for r in out] == [", "] * 5
    assert fake.assets == {}
    assert fake.refusals and all(m.startswith("Invalid Signature") for m in fake.refusals)
    logged = [r for r in caplog.records if REJECTED in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert logged[0].levelno == logging.ERROR
    assert doc["request_id"] in logged[0].getMessage()
    # The images after the refusal were not even downloaded.
    assert sum(origin.hits.values()) <= 2
    # Cloudinary's own reason is there for whoever debugs, the secret is not.
    assert "Invalid Signature" in caplog.text
    assert "not-the-secret" not in caplog.text


async def test_kill_during_uploads_and_restart_leaves_no_duplicates(
    tmp_path: Path, origin: Origin, fake: FakeCloudinary
) -> None:
    service = ServiceProcess(
        tmp_path,
        storage={
            "backend": "cloudinary",
            "cloudinary": {"folder": "shop/images", "upload_prefix": fake.url, "backoff": 0.01},
        },
        fetch={"concurrency": 2, "allowed_networks": ["127.0.0.0/8"]},
    )
    # Credentials only from the environment, as in production.
    env = {"PATH": "/usr/bin:/bin", "CLOUDINARY_URL": fake.cloudinary_url}
    # Uploads are stored at once but answered late, so the kill lands while some are
    # stored at "Cloudinary" and not yet recorded by the service.
    fake.answer_delay = 0.15
    total = 24
    rows = [
        [str(n + 1), f"Item {n}", origin.add(f"{n}.jpg", images.photo_jpeg(48, 32, seed=n))]
        for n in range(total)
    ]
    expected = set()
    await service.start(env=env)
    try:
        request_id = await service.submit(csv_bytes(rows))
        expected = {f"shop/images/{request_id}/{n + 1}-1" for n in range(total)}
        await service.wait_until(
            request_id,
            lambda doc: doc["images"]["succeeded"] >= 4 and fake.unanswered > 0,
            "four images done and an upload waiting for its answer",
            20,
        )
        # At once, while that upload waits for its answer.
        service.send(signal.SIGKILL)
    finally:
        service.kill()

    # Uploads that arrived whole before the kill are still stored: let them land.
    await poll(lambda: fake.handling == 0, what="the fake to finish storing uploads")
    with sqlite3.connect(service.db_path) as conn:
        (recorded,) = conn.execute(
            "SELECT count(*) FROM images WHERE status = 'succeeded'"
        ).fetchone()
    stored_before = set(fake.stored)
    assert recorded < len(stored_before) < total

    await service.start(env=env)
    try:
        doc = await service.wait_until(
            request_id, lambda doc: doc["status"] == "complete", "the request to complete", 30
        )
        text = await service.output_csv(doc)
    finally:
        await service.stop(timeout=10)

    assert doc["images"] == {"total": total, "succeeded": total, "failed": 0, "pending": 0}
    # One asset per image: the uploads repeated after the restart replaced, not added.
    assert set(fake.assets) == expected
    repeated = [p for p, n in Counter(fake.stored).items() if n > 1]
    assert repeated, "the kill was meant to interrupt an upload"
    assert set(repeated) <= stored_before
    urls = [row["Output Image Urls"] for row in csv.DictReader(io.StringIO(text))]
    assert sorted(urls) == sorted(fake.secure_url(a) for a in fake.assets.values())


# --- start-up -----------------------------------------------------------------------


async def test_missing_credentials_stop_the_start(create_service: ServiceFactory) -> None:
    with pytest.raises(ConfigError) as info:
        await create_service(storage={"backend": "cloudinary"})
    assert info.value.message == (
        "storage.cloudinary: no cloud_name, api_key, api_secret for Cloudinary: "
        "set CLOUDINARY_URL=cloudinary://<api_key>:<api_secret>@<cloud_name> "
        "or cloud_name, api_key and api_secret in [storage.cloudinary]"
    )


def test_a_malformed_cloudinary_url_stops_the_service_without_showing_the_secret(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\npath = "{tmp_path / "db.sqlite3"}"\n[storage]\nbackend = "cloudinary"\n'
    )
    env = {"PATH": "/usr/bin:/bin", "CLOUDINARY_URL": "https://614335:s3cr3t-value@demo"}
    done = subprocess.run(
        [sys.executable, "-m", "csvcompress", "--config", str(config), "serve"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert stderr.strip().endswith(
        "csvcompress: configuration error: CLOUDINARY_URL is not valid: "
        "Invalid CLOUDINARY_URL scheme. Expecting to start with 'cloudinary://'"
    )
    assert "s3cr3t-value" not in stderr + done.stdout.decode()


@pytest.mark.parametrize(
    ("url", "settings", "message"),
    [
        ("cloudinary://key:secret@", {}, "storage.cloudinary: no cloud_name for Cloudinary"),
        ("cloudinary://key@cloud", {}, "storage.cloudinary: no api_secret for Cloudinary"),
        ("", {"cloud_name": "c", "api_key": "k"}, "storage.cloudinary: no api_secret"),
    ],
)
def test_incomplete_credentials_are_named(
    monkeypatch: pytest.MonkeyPatch, url: str, settings: dict[str, str], message: str
) -> None:
    if url:
        monkeypatch.setenv("CLOUDINARY_URL", url)
    with pytest.raises(ConfigError) as info:
        resolve_credentials(CloudinarySettings(**settings))
    assert info.value.message.startswith(message)
    assert "secret@" not in info.value.message


def test_credentials_come_from_cloudinary_url_and_settings_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "CLOUDINARY_URL",
        "cloudinary://111:env-secret@env-cloud?upload_prefix=http://127.0.0.1:9"
        "&signature_algorithm=sha256",
    )
    from_env = resolve_credentials(CloudinarySettings())
    assert (from_env.cloud_name, from_env.api_key, from_env.api_secret) == (
        "env-cloud",
        "111",
        "env-secret",
    )
    assert from_env.api_base == "http://127.0.0.1:9"
    assert from_env.signature_algorithm == "sha256"
    mixed = resolve_credentials(CloudinarySettings(cloud_name="mine", upload_prefix=""))
    assert (mixed.cloud_name, mixed.api_key) == ("mine", "111")
    # Secrets stay out of reprs, and so out of any log line that prints the settings.
    assert "env-secret" not in repr(from_env)
    assert "topsecret" not in repr(CloudinarySettings(api_secret="topsecret"))


def test_cloudinary_is_a_registered_backend(fake: FakeCloudinary) -> None:
    settings = replace_settings(Settings(), storage=storage_section(fake, folder="x"))
    assert settings.storage.cloudinary.folder == "x"
    assert settings.storage.cloudinary.api_key == fake.api_key
    assert create_storage(settings).name == "cloudinary"


# --- the backend on its own ---------------------------------------------------------


async def test_uploads_reuse_a_bounded_set_of_connections(fake: FakeCloudinary) -> None:
    storage = backend(fake, concurrency=2)
    await storage.start()
    try:
        data = images.photo_jpeg(32, 24)
        urls = await asyncio.gather(
            *(storage.put(f"r/1-{n}.jpg", data, "image/jpeg") for n in range(1, 21))
        )
    finally:
        await storage.close()
    assert len(set(urls)) == 20 and len(fake.assets) == 20
    assert len(fake.peers) <= 2


async def test_a_refused_upload_fails_that_image_without_retrying(fake: FakeCloudinary) -> None:
    storage = backend(fake)
    await storage.start()
    try:
        with pytest.raises(StorageFailed) as info:
            await storage.put("r/1-1.jpg", b"not an image", "image/jpeg")
    finally:
        await storage.close()
    assert info.value.message == "Cloudinary refused it with HTTP 400: Invalid image file"
    assert not info.value.retryable
    assert len(fake.attempts) == 1


async def test_giving_up_after_the_attempts_is_final(fake: FakeCloudinary) -> None:
    storage = backend(fake, attempts=3)
    fake.fail_next(503, times=5)
    await storage.start()
    try:
        with pytest.raises(StorageFailed) as info:
            await storage.put("r/1-1.jpg", images.photo_jpeg(8, 8), "image/jpeg")
    finally:
        await storage.close()
    assert info.value.message == (
        "Cloudinary failed with HTTP 503: scripted failure 503 (after 3 attempts)"
    )
    assert not info.value.retryable
    assert len(fake.attempts) == 3


async def test_an_unreachable_api_is_retried_then_reported() -> None:
    port = free_port()
    settings = CloudinarySettings(
        cloud_name="c",
        api_key="k",
        api_secret="s",
        upload_prefix=f"http://127.0.0.1:{port}",
        attempts=2,
        backoff=0.01,
    )
    storage = CloudinaryStorage(settings)
    await storage.start()
    try:
        with pytest.raises(StorageFailed, match=r"^could not reach Cloudinary: .*\(after 2"):
            await storage.put("r/1-1.jpg", b"x", "image/jpeg")
    finally:
        await storage.close()


async def test_other_files_are_raw_resources_and_delete_prefix_removes_a_request(
    fake: FakeCloudinary,
) -> None:
    fake.delete_page = 2  # so deleting needs next_cursor
    storage = backend(fake, folder="/shop/")
    await storage.start()
    try:
        data = images.photo_jpeg(16, 16)
        for n in range(1, 6):
            await storage.put(f"req/1-{n}.jpg", data, "image/jpeg")
        await storage.put("req2/1-1.jpg", data, "image/jpeg")
        csv_url = await storage.put("req/output.csv", b"a,b\r\n", "text/csv")
        assert csv_url.startswith("https://res.cloudinary.com/demo-cloud/raw/upload/v")
        assert csv_url.endswith("/shop/req/output.csv")
        assert fake.assets["shop/req/output.csv"].data == b"a,b\r\n"

        await storage.delete_prefix("req")
        await storage.check()
    finally:
        await storage.close()
    assert sorted(fake.assets) == ["shop/req2/1-1"]


async def test_check_reports_rejected_credentials(fake: FakeCloudinary) -> None:
    storage = backend(fake, api_secret="wrong")
    await storage.start()
    try:
        with pytest.raises(StorageRejected, match=f"^{REJECTED}$"):
            await storage.check()
    finally:
        await storage.close()
