"""Webhook deliveries against a real local receiver that verifies every signature."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import sqlite3
import stat
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from csvcompress.config import settings_from_dict
from csvcompress.errors import ConfigError
from csvcompress.http.keys import SERVICE
from csvcompress.jobs.lifecycle import Lifecycle
from csvcompress.models import DeliveryState
from csvcompress.webhooks import (
    MAX_CONCURRENT_DELIVERIES,
    MAX_RETRY_AFTER,
    Outcome,
    outcome_of_response,
    plan_next,
    resolve_secret,
)
from tests import images
from tests.conftest import WEBHOOK_SECRET, ServeApp, Service, ServiceFactory, csv_bytes, refused
from tests.procs import ServiceProcess
from tests.servers import Origin, Receiver, Reply, free_port, status
from tests.waiting import never

ROOT = Path(__file__).resolve().parent.parent
FAST = (0, 0.1, 0.1)
# Seconds within which a delivery that was going to come has come: the schedules here
# retry within 0.1 s, and queued deliveries go at once.
WOULD_HAVE_ARRIVED = 0.5


# --- helpers ----------------------------------------------------------------------


async def finished_request(service: Service, origin: Origin, webhook_url: str) -> str:
    url = origin.add("shirt.jpg", images.photo_jpeg(32, 24))
    request_id = await service.submit(csv_bytes([["1", "Shirt", url]]), webhook_url)
    doc = await service.wait(request_id)
    assert doc["status"] == "complete"
    return request_id


async def wait_webhook(
    service: Service | ServiceProcess, request_id: str, state: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The status document once its webhook has reached `state`."""
    return await service.wait_until(
        request_id,
        lambda doc: doc["webhook"]["state"] == state,
        f"the webhook to become {state}",
        timeout,
    )


def webhook_settings(**values: Any) -> dict[str, Any]:
    return {"retry_schedule": FAST, **values}


# --- signing and the payload -------------------------------------------------------


async def test_delivery_is_signed_the_standard_webhooks_way(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service(webhook=webhook_settings())
    request_id = await finished_request(service, origin, receiver.url)

    (got,) = await receiver.wait_for(1)
    doc = await wait_webhook(service, request_id, "delivered")

    assert got.refused is None
    assert got.verified == json.loads(got.body)
    assert got.verified["type"] == "request.completed"
    assert got.verified["data"] == {k: v for k, v in doc.items() if k != "webhook"}
    assert got.verified["data"]["output_csv_url"].endswith(f"/requests/{request_id}/output.csv")
    assert re.fullmatch(r"msg_[0-9a-f]{32}", got.headers["webhook-id"])
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert got.headers["webhook-signature"].startswith("v1,")
    assert got.headers["Content-Type"] == "application/json"
    # Signed with our secret, not just any: another key does not verify it.
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(got.body, got.headers)
    assert doc["webhook"] == {
        "id": got.headers["webhook-id"],
        "url": receiver.url,
        "state": "delivered",
        "attempts": 1,
        "last_status": 204,
        "last_error": None,
        "next_attempt_at": None,
    }


# --- retries ----------------------------------------------------------------------


async def test_fails_twice_then_succeeds_with_one_webhook_id(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    receiver.script(status(500), status(500), status(200))
    service = await create_service(webhook=webhook_settings())
    request_id = await finished_request(service, origin, receiver.url)

    doc = await wait_webhook(service, request_id, "delivered")
    got = receiver.received

    assert len(got) == 3
    assert len({g.headers["webhook-id"] for g in got}) == 1
    assert len({g.body for g in got}) == 1
    assert all(g.refused is None for g in got)
    assert doc["status"] == "complete"
    webhook = doc["webhook"]
    assert (webhook["attempts"], webhook["last_status"], webhook["last_error"]) == (3, 200, None)
    assert webhook["id"] == got[0].headers["webhook-id"]


async def test_receiver_down_ends_failed_and_the_request_stays_complete(
    create_service: ServiceFactory, origin: Origin
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"
    service = await create_service(webhook=webhook_settings())
    request_id = await finished_request(service, origin, down)

    doc = await wait_webhook(service, request_id, "failed")

    assert doc["status"] == "complete"
    assert doc["output_csv_url"] is not None
    assert doc["webhook"]["attempts"] == len(FAST)
    assert doc["webhook"]["last_status"] is None
    assert doc["webhook"]["last_error"] == "connection failed: Connection refused"
    assert doc["webhook"]["next_attempt_at"] is None


async def test_pending_delivery_shows_when_it_is_tried_next(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    receiver.script(status(502), status(204))
    service = await create_service(webhook=webhook_settings(retry_schedule=(0, 30)))
    request_id = await finished_request(service, origin, receiver.url)
    await receiver.wait_for(1)

    doc = await service.wait_until(
        request_id, lambda doc: doc["webhook"]["attempts"] >= 1, "the first attempt recorded"
    )
    webhook = doc["webhook"]

    assert webhook["state"] == "pending"
    assert (webhook["last_status"], webhook["last_error"]) == (502, "HTTP 502")
    next_at = datetime.fromisoformat(webhook["next_attempt_at"].replace("Z", "+00:00"))
    # 30 s with 10 % jitter, counted from the first attempt.
    assert 27 - 1 <= next_at.timestamp() - receiver.received[0].at <= 33 + 1


async def test_gone_stops_retrying(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    receiver.script(status(410))
    service = await create_service(webhook=webhook_settings(retry_schedule=(0, 0.05, 0.05)))
    request_id = await finished_request(service, origin, receiver.url)

    doc = await wait_webhook(service, request_id, "failed")
    await never(
        lambda: len(receiver.received) > 1,
        what="another attempt after 410 Gone",
        within=WOULD_HAVE_ARRIVED,
    )

    assert len(receiver.received) == 1
    assert doc["webhook"]["attempts"] == 1
    assert doc["webhook"]["last_status"] == 410
    assert doc["webhook"]["last_error"] == "HTTP 410: the receiver asked for no more deliveries"


async def test_redirect_is_a_failure_and_not_followed(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    receiver.script(status(307, Location="/elsewhere"))
    service = await create_service(webhook=webhook_settings(retry_schedule=(0, 0.05)))
    request_id = await finished_request(service, origin, receiver.url)

    doc = await wait_webhook(service, request_id, "failed")

    assert len(receiver.received) == 2
    assert receiver.other_hits == 0
    assert doc["webhook"]["last_status"] == 307
    assert doc["webhook"]["last_error"] == "HTTP 307: redirects are not followed"


@pytest.mark.parametrize("code", [429, 503])
async def test_retry_after_is_honoured(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver, code: int
) -> None:
    receiver.script(status(code, **{"Retry-After": "1"}), status(204))
    service = await create_service(webhook=webhook_settings(retry_schedule=(0, 0.05)))
    request_id = await finished_request(service, origin, receiver.url)

    await wait_webhook(service, request_id, "delivered")
    first, second = receiver.received

    # The schedule alone would have retried after about 0.05 s.
    assert second.at - first.at >= 1.0
    assert second.headers["webhook-id"] == first.headers["webhook-id"]


async def test_a_receiver_too_slow_to_answer_times_out_and_is_retried(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    receiver.script(Reply(status=204, held=True), status(204))
    service = await create_service(webhook=webhook_settings(timeout=0.3))
    request_id = await finished_request(service, origin, receiver.url)

    try:
        doc = await wait_webhook(service, request_id, "delivered")
    finally:
        receiver.release()

    assert len(receiver.received) == 2
    assert doc["webhook"]["attempts"] == 2


async def finish_directly(service: Service, request_id: str, webhook_url: str) -> None:
    """Store a finished request and hand it to the webhook sender, as the workers do,
    without processing images or going through the upload checks."""
    running = service.runner.app[SERVICE]

    def insert() -> None:
        with running.store.request_writer(request_id) as writer:
            writer.add(0, [f"http://127.0.0.1:{free_port()}/a.jpg"])  # never fetched
            writer.finish(input_path="unused.csv", webhook_url=webhook_url, rows=1)

    await asyncio.to_thread(insert)
    assert await Lifecycle(running.store).finish(request_id, "unused-output.csv")
    await running.webhooks.request_finished(request_id)


@pytest.mark.loopback_only
async def test_forbidden_address_is_refused_at_delivery(create_service: ServiceFactory) -> None:
    # Uploads refuse such a URL up front; the guard refuses it again when dialling,
    # for an address that only became forbidden later (DNS changed, settings changed).
    service = await create_service(webhook=webhook_settings())
    await finish_directly(service, "r-metadata", "http://169.254.169.254/latest/meta-data")

    doc = await wait_webhook(service, "r-metadata", "failed")

    assert doc["webhook"]["attempts"] == 1
    assert doc["webhook"]["last_error"] == refused("169.254.169.254")


async def test_deliveries_in_flight_are_bounded(
    create_service: ServiceFactory, receiver: Receiver
) -> None:
    now_open = peak = 0
    released = receiver.gate()

    async def held(_: web.Request) -> web.StreamResponse:
        nonlocal now_open, peak
        now_open += 1
        peak = max(peak, now_open)
        await released.wait()
        now_open -= 1
        return web.Response(status=204)

    receiver.script(held)
    service = await create_service(webhook=webhook_settings())
    try:
        for n in range(20):
            await finish_directly(service, f"r-{n}", receiver.url)
        await receiver.wait_for(MAX_CONCURRENT_DELIVERIES)
        await never(
            lambda: len(receiver.received) > MAX_CONCURRENT_DELIVERIES,
            what=f"more than {MAX_CONCURRENT_DELIVERIES} deliveries in flight at once",
            within=WOULD_HAVE_ARRIVED,
        )
        assert len(receiver.received) == MAX_CONCURRENT_DELIVERIES
    finally:
        receiver.release()
    for n in range(20):
        await wait_webhook(service, f"r-{n}", "delivered")

    assert peak == MAX_CONCURRENT_DELIVERIES
    assert len(receiver.received) == 20
    assert len({got.headers["webhook-id"] for got in receiver.received}) == 20


# --- redelivery -------------------------------------------------------------------


async def test_redeliver_sends_the_same_event_again(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service(webhook=webhook_settings())
    request_id = await finished_request(service, origin, receiver.url)
    await wait_webhook(service, request_id, "delivered")

    async with service.client.post(
        f"{service.url}/requests/{request_id}/webhook/redeliver"
    ) as resp:
        assert resp.status == 202
        queued = await resp.json()
    first, again = await receiver.wait_for(2)
    doc = await wait_webhook(service, request_id, "delivered")

    assert queued["state"] == "pending"
    assert queued["attempts"] == 0
    assert queued["id"] == first.headers["webhook-id"]
    assert again.headers["webhook-id"] == first.headers["webhook-id"]
    assert again.body == first.body
    assert again.refused is None
    assert doc["webhook"]["attempts"] == 1


async def test_redeliver_refusals(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service(webhook=webhook_settings())
    slow_url = origin.add("slow.jpg", images.photo_jpeg(16, 16), held=True)
    plain = origin.add("plain.jpg", images.photo_jpeg(16, 16))
    waiting = await service.submit(csv_bytes([["1", "Slow", slow_url]]), receiver.url)
    no_hook = await service.submit(csv_bytes([["1", "Plain", plain]]))
    await service.wait(no_hook)

    async def redeliver(request_id: str) -> tuple[int, Any]:
        url = f"{service.url}/requests/{request_id}/webhook/redeliver"
        async with service.client.post(url) as resp:
            return resp.status, await resp.json()

    try:
        assert await redeliver("nope") == (404, {"error": "no request with id nope"})
        assert await redeliver(no_hook) == (
            409,
            {"error": f"request {no_hook} has no webhook URL"},
        )
        code, body = await redeliver(waiting)
        assert code == 409
        assert re.fullmatch(
            f"request {waiting} is (pending|processing); its webhook is sent when it finishes",
            body["error"],
        )
        assert (await service.status(waiting))["webhook"]["state"] == "waiting"
    finally:
        origin.release()
    await wait_webhook(service, waiting, "delivered")


# --- durability -------------------------------------------------------------------


async def test_webhook_lost_between_finish_and_queueing_is_sent_at_start(
    create_service: ServiceFactory, origin: Origin, receiver: Receiver
) -> None:
    service = await create_service(webhook=webhook_settings())
    request_id = await finished_request(service, origin, receiver.url)
    await wait_webhook(service, request_id, "delivered")
    await service.runner.cleanup()
    # What a crash right after the request finished, before its webhook was stored, leaves.
    with sqlite3.connect(service.settings.database.path) as conn:
        conn.execute("DELETE FROM deliveries")

    restarted = await create_service(webhook=webhook_settings())
    doc = await wait_webhook(restarted, request_id, "delivered")

    assert len(receiver.received) == 2
    second = receiver.received[1]
    assert second.payload["data"]["request_id"] == request_id
    assert doc["webhook"]["id"] == second.headers["webhook-id"]


async def test_generated_secret_is_kept_and_used(
    create_service: ServiceFactory,
    origin: Origin,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="csvcompress.webhooks")
    # No secret in the settings: the service makes one.
    service = await create_service(webhook={"secret": "", "retry_schedule": FAST})
    path = service.settings.data_dir / "webhook_secret"
    secret = path.read_text().strip()
    receiver.secret = secret
    await finished_request(service, origin, receiver.url)
    (got,) = await receiver.wait_for(1)
    await service.runner.cleanup()

    await create_service(webhook={"secret": "", "retry_schedule": FAST})

    assert got.refused is None and got.verified is not None
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret
    messages = [r.getMessage() for r in caplog.records]
    assert any("generated a webhook signing secret" in m and str(path) in m for m in messages)
    assert any(m.startswith("webhook deliveries are signed with the secret in") for m in messages)
    assert not any(secret in m for m in messages)


def test_secret_setting_is_checked() -> None:
    settings_from_dict({"webhook": {"secret": WEBHOOK_SECRET}})
    with pytest.raises(ConfigError) as refused:
        settings_from_dict({"webhook": {"secret": "hunter2"}})
    assert refused.value.message == (
        'webhook.secret: must be "whsec_" followed by base64 of 24 to 64 bytes'
    )
    short = "whsec_" + base64.b64encode(b"k" * 8).decode()
    with pytest.raises(ConfigError, match=r"^webhook\.secret: .*, not 8$"):
        settings_from_dict({"webhook": {"secret": short}})
    with pytest.raises(ConfigError, match=r"^webhook\.secret: .* not base64$"):
        settings_from_dict({"webhook": {"secret": "whsec_***"}})


def test_a_damaged_secret_file_stops_the_start(tmp_path: Path) -> None:
    settings = settings_from_dict({"database": {"path": str(tmp_path / "db.sqlite3")}})
    (tmp_path / "webhook_secret").write_text("whsec_\n")

    with pytest.raises(ConfigError, match=r"^webhook secret file .*webhook_secret: must be"):
        resolve_secret(settings)


# --- the retry plan ---------------------------------------------------------------


def test_plan_next_follows_the_schedule_with_jitter() -> None:
    rng = random.Random(1)
    schedule = (0.0, 10.0, 100.0)
    failed = Outcome(500, "HTTP 500")
    waits = []
    for _ in range(200):
        state, at = plan_next(failed, 1, schedule, 1000.0, rng)
        assert state is DeliveryState.PENDING and at is not None
        waits.append(at - 1000.0)
    assert 9.0 <= min(waits) < 9.5 and 10.5 < max(waits) <= 11.0
    assert plan_next(failed, 3, schedule, 0.0, rng) == (DeliveryState.FAILED, None)
    assert plan_next(Outcome(204, None), 1, schedule, 0.0, rng) == (DeliveryState.DELIVERED, None)
    assert plan_next(outcome_of_response(410, None), 1, schedule, 0.0, rng) == (
        DeliveryState.FAILED,
        None,
    )
    # A zero wait stays zero; a long Retry-After wins over the schedule, up to a cap.
    assert plan_next(failed, 0, schedule, 5.0, rng) == (DeliveryState.PENDING, 5.0)
    busy = outcome_of_response(503, "86400")
    assert busy.retry_after == MAX_RETRY_AFTER
    assert plan_next(busy, 1, schedule, 0.0, rng) == (DeliveryState.PENDING, MAX_RETRY_AFTER)
    assert outcome_of_response(500, "120").retry_after is None


# --- the README receiver ------------------------------------------------------------


def readme_receiver() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Verifying a delivery", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_readme_receiver_verifies_deliveries(
    create_service: ServiceFactory,
    origin: Origin,
    serve_app: ServeApp,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = readme_receiver()
    assert code.count('"whsec_..."') == 1
    namespace: dict[str, Any] = {"__name__": "readme_receiver"}
    exec(compile(code.replace('"whsec_..."', repr(WEBHOOK_SECRET)), "README.md", "exec"), namespace)
    readme_app = await serve_app(namespace["app"])
    hook = f"{readme_app.url}/hooks/csv"
    try:
        service = await create_service(webhook=webhook_settings())
        request_id = await finished_request(service, origin, hook)
        await wait_webhook(service, request_id, "delivered")
        async with service.client.post(
            f"{service.url}/requests/{request_id}/webhook/redeliver"
        ) as resp:
            assert resp.status == 202
        await wait_webhook(service, request_id, "delivered")
        # A forged delivery is refused.
        async with service.client.post(
            hook,
            data=b'{"type": "request.completed"}',
            headers={
                "webhook-id": "msg_forged",
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": "v1,AAAA",
            },
        ) as resp:
            assert resp.status == 400
    finally:
        await readme_app.close()

    doc = await service.status(request_id)
    printed = capsys.readouterr().out.splitlines()
    # Handled once, although delivered twice (the redelivery has the same webhook-id).
    assert printed == [f"request.completed {request_id} {doc['output_csv_url']}"]


# --- surviving a kill -------------------------------------------------------------


async def test_kill_during_the_retry_wait_resumes_after_restart(
    tmp_path: Path, origin: Origin, receiver: Receiver
) -> None:
    service = ServiceProcess(
        tmp_path,
        fetch={"allowed_networks": ["127.0.0.0/8"]},
        webhook={"retry_schedule": [0, 4]},
    )
    receiver.script(status(500), status(204))
    image = origin.add("shirt.jpg", images.photo_jpeg(32, 24))
    secret_file = tmp_path / "data" / "webhook_secret"

    await service.start()
    try:
        # Generated by the service at its first start.
        receiver.secret = secret = secret_file.read_text().strip()
        request_id = await service.submit(csv_bytes([["1", "Shirt", image]]), receiver.url)
        doc = await service.wait_until(
            request_id, lambda doc: doc["webhook"]["attempts"] >= 1, "the first attempt", 20
        )
    finally:
        service.kill()
    planned = datetime.fromisoformat(doc["webhook"]["next_attempt_at"].replace("Z", "+00:00"))
    assert doc["status"] == "complete"
    assert doc["webhook"]["state"] == "pending"
    assert len(receiver.received) == 1

    await service.start()
    try:
        first, second = await receiver.wait_for(2, timeout=30)
        after = await wait_webhook(service, request_id, "delivered", timeout=10)
    finally:
        await service.stop(timeout=10)

    assert second.headers["webhook-id"] == first.headers["webhook-id"] == doc["webhook"]["id"]
    assert second.body == first.body
    # Resumed at its planned time, not before.
    assert second.at >= planned.timestamp() - 0.05
    assert after["webhook"]["attempts"] == 2
    # Both attempts were signed with the secret generated at the first start.
    assert secret_file.read_text().strip() == secret
    for got in (first, second):
        assert Webhook(secret).verify(got.body, got.headers)["data"]["request_id"] == request_id
