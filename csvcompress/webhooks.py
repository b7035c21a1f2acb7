"""Telling the user's system that a request finished: signed, persisted, retried.

Deliveries follow the Standard Webhooks specification (standardwebhooks.com).
When a request finishes (after the output CSV is in place) its event is stored
once as a row in `deliveries`: the webhook-id, the URL and the exact JSON body.
Every attempt sends that same body with the same `webhook-id`, a fresh
`webhook-timestamp` and a `webhook-signature` over "id.timestamp.body", so a
receiver can verify each attempt and de-duplicate retries.

One scheduler task sleeps until the soonest pending delivery is due (or until a
new one is queued), sends at most MAX_CONCURRENT_DELIVERIES at once, and records
each attempt before planning the next one from `[webhook] retry_schedule`. The
schedule lives in SQLite, so a restart resumes every pending delivery at its
planned time; an attempt cut short by a crash is simply made again, with the same
webhook-id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import secrets
import stat
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from standardwebhooks import Webhook

from csvcompress.clock import now_iso
from csvcompress.config import WEBHOOK_SECRET_PREFIX, Settings, webhook_secret_problem
from csvcompress.documents import request_data
from csvcompress.errors import AddressNotAllowed, ConfigError, Conflict, NotFound
from csvcompress.logs import add_secret
from csvcompress.metrics import Metrics
from csvcompress.models import DeliveryRecord, DeliveryState, RequestStatus
from csvcompress.pipeline.netguard import NetGuard, create_session, find_refusal
from csvcompress.retry import Backoff, parse_retry_after
from csvcompress.store.base import Store

log = logging.getLogger(__name__)

EVENT_TYPES = {
    RequestStatus.COMPLETE: "request.completed",
    RequestStatus.FAILED: "request.failed",
    RequestStatus.CANCELLED: "request.cancelled",
}

# What an attempt counts as in csvcompress_webhook_deliveries_total, by the state it leaves.
ATTEMPT_OUTCOMES = {
    DeliveryState.DELIVERED: "delivered",
    DeliveryState.FAILED: "failed",
    DeliveryState.PENDING: "retrying",
}

# Deliveries in flight at once; a slow receiver cannot hold up more than this.
MAX_CONCURRENT_DELIVERIES = 8
# Each wait of the retry schedule is stretched or shrunk by up to this fraction.
JITTER = 0.1
# Statuses whose Retry-After header is honoured, and the longest wait it may ask for.
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER = 3600.0
# 410 Gone: the receiver wants no more deliveries of this event.
GONE = 410
# The scheduler looks at the table at least this often, whatever the clock does.
MAX_IDLE_SECONDS = 60.0
# Pause after an unexpected error (the database, say) before the delivery is picked again.
ERROR_PAUSE_SECONDS = 1.0
# The generated secret's file in the data directory, and the random bytes it holds.
SECRET_FILE = "webhook_secret"
GENERATED_SECRET_BYTES = 32


# --- the secret --------------------------------------------------------------------


def secret_path(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE


def generate_secret() -> str:
    return (
        WEBHOOK_SECRET_PREFIX
        + base64.b64encode(secrets.token_bytes(GENERATED_SECRET_BYTES)).decode()
    )


def resolve_secret(settings: Settings) -> str:
    """`[webhook] secret`, or the one kept in the data directory, generated on first use.

    Runs in a thread: it reads and may write a file. The secret itself is never
    logged, only where to read it.
    """
    if settings.webhook.secret:
        return settings.webhook.secret
    path = secret_path(settings)
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        secret = generate_secret()
        _write_private(path, secret + "\n")
        log.info(
            "generated a webhook signing secret; receivers need it to verify deliveries: "
            "read it with `cat %s`, or set [webhook] secret",
            path.resolve(),
        )
        return secret
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"webhook secret file {path}: cannot be read: {exc}") from None
    problem = webhook_secret_problem(secret)
    if problem is not None:
        raise ConfigError(f"webhook secret file {path}: {problem}")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("webhook secret file %s is open to other users; chmod 600 it", path)
    log.info("webhook deliveries are signed with the secret in %s", path.resolve())
    return secret


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by the owner only, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # a leftover would keep its old permissions
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
        # Make the rename itself durable: losing the file would mean a new secret.
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def signed_headers(signer: Webhook, msg_id: str, body: str, at: int) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt made at unix time `at`."""
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": signer.sign(msg_id, datetime.fromtimestamp(at, UTC), body),
    }


# --- what an attempt means for the next one ----------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code, or an error with no response."""

    status: int | None
    error: str | None
    retry_after: float | None = None
    # True when trying again cannot help (410 Gone, an address the guard refuses).
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def outcome_of_response(status: int, retry_after_header: str | None) -> Outcome:
    if 200 <= status < 300:
        return Outcome(status, None)
    if status == GONE:
        return Outcome(status, "HTTP 410: the receiver asked for no more deliveries", final=True)
    if 300 <= status < 400:
        return Outcome(status, f"HTTP {status}: redirects are not followed")
    retry_after = None
    if status in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(retry_after_header, cap=MAX_RETRY_AFTER)
    return Outcome(status, f"HTTP {status}", retry_after)


def outcome_of_error(exc: BaseException, timeout: float) -> Outcome:
    refusal = find_refusal(exc)
    if refusal is not None:
        return Outcome(None, refusal.message, final=True)
    if isinstance(exc, TimeoutError):
        return Outcome(None, f"no answer within {timeout:g} s")
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error.errno:
        return Outcome(None, f"connection failed: {os.strerror(exc.os_error.errno)}")
    return Outcome(None, f"connection failed: {str(exc) or type(exc).__name__}")


def retry_policy(schedule: tuple[float, ...]) -> Backoff:
    """`[webhook] retry_schedule` as a back-off: the wait before each attempt, give or
    take JITTER of it, so retries of many deliveries spread out."""
    return Backoff(schedule, jitter=JITTER)


def plan_next(
    outcome: Outcome,
    attempts_made: int,
    schedule: tuple[float, ...],
    now: float,
    rng: random.Random,
) -> tuple[DeliveryState, float | None]:
    """The delivery's state after an attempt, and when to make the next one.

    The time is stored with the delivery (a restart resumes it), so this asks the
    back-off for one wait rather than retrying in process.
    """
    if outcome.delivered:
        return DeliveryState.DELIVERED, None
    policy = retry_policy(schedule)
    if outcome.final or attempts_made >= policy.attempts:
        return DeliveryState.FAILED, None
    wait = policy.delay(attempts_made + 1, outcome.retry_after, rng=rng)
    return DeliveryState.PENDING, now + wait


# --- the sender --------------------------------------------------------------------


class WebhookSender:
    """Queues deliveries when requests finish and sends them on schedule."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        guard: NetGuard,
        metrics: Metrics | None = None,
    ) -> None:
        settings.webhook.validate()
        self._settings = settings
        self._schedule = settings.webhook.retry_schedule
        self._store = store
        self._guard = guard
        self._metrics = metrics or Metrics()
        self._rng = random.Random()
        self._signer: Webhook | None = None
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        # Held while deliveries are picked, so a redelivery cannot race the scheduler.
        self._pick_lock = asyncio.Lock()
        # Held while an event is stored, so one request never gets two deliveries.
        self._queue_lock = asyncio.Lock()

    async def start(self) -> None:
        secret = await asyncio.to_thread(resolve_secret, self._settings)
        add_secret(secret)  # never in a log line, whatever prints it
        self._signer = Webhook(secret)
        # A session of its own: image downloads cannot starve deliveries of connections,
        # and every connection is still judged by the network guard.
        self._session = create_session(
            self._settings.fetch, self._guard, total_timeout=self._settings.webhook.timeout
        )
        for request_id in await self._store.finished_requests_without_delivery():
            log.info("queueing the webhook of %s, lost by an earlier stop", request_id)
            await self.request_finished(request_id)
        self._scheduler = asyncio.create_task(self._run(), name="webhook-scheduler")

    async def close(self) -> None:
        """Stop sending. Attempts cut short stay pending and are made again on the next start."""
        self._closing = True
        self._wake.set()
        tasks = list(self._in_flight.values())
        if self._scheduler is not None:
            tasks.append(self._scheduler)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def request_finished(self, request_id: str) -> None:
        """Queue the event of a finished request (once: a second call changes nothing)."""
        async with self._queue_lock:
            await self._queue_event(request_id)
        self._wake.set()

    async def _queue_event(self, request_id: str) -> None:
        record = await self._store.get_request(request_id)
        if record is None or not record.webhook_url or not record.status.finished:
            return
        if await self._store.latest_delivery(request_id) is not None:
            return
        counts = await self._store.get_counts(request_id)
        event_type = EVENT_TYPES[record.status]
        payload = {
            "type": event_type,
            "timestamp": now_iso(),
            "data": request_data(record, counts, self._settings.server.base_url),
        }
        delivery_id = f"msg_{uuid.uuid4().hex}"
        await self._store.add_delivery(
            delivery_id,
            request_id,
            event_type,
            record.webhook_url,
            json.dumps(payload),
            next_attempt_at=self._first_attempt_at(),
        )

    async def redeliver(self, request_id: str) -> DeliveryRecord:
        """Send a finished request's event again, from the first step of the schedule.

        It is the same event, so it keeps its webhook-id and body: a receiver that
        already handled it recognises it, one that missed it handles it now.
        """
        record = await self._store.get_request(request_id)
        if record is None:
            raise NotFound(f"no request with id {request_id}")
        if not record.webhook_url:
            raise Conflict(f"request {request_id} has no webhook URL")
        if not record.status.finished:
            raise Conflict(
                f"request {request_id} is {record.status}; its webhook is sent when it finishes"
            )
        delivery = await self._store.latest_delivery(request_id)
        if delivery is None:
            await self.request_finished(request_id)
        else:
            async with self._pick_lock:
                running = self._in_flight.get(delivery.id)
                if running is not None:
                    # Let the attempt under way record itself first; never cancel it.
                    await asyncio.wait({running})
                await self._store.requeue_delivery(delivery.id, self._first_attempt_at())
            self._wake.set()
        fresh = await self._store.latest_delivery(request_id)
        assert fresh is not None
        log.info("webhook %s of %s queued again", fresh.id, request_id)
        return fresh

    def _first_attempt_at(self) -> float:
        return time.time() + retry_policy(self._schedule).delay(1, rng=self._rng)

    # --- the scheduler -------------------------------------------------------------

    async def _run(self) -> None:
        # Not `while True`: on Python 3.11, asyncio.wait_for swallows a cancellation that
        # lands as the event it waits for is set (a request finishing during shutdown
        # does that), and the loop would sleep on for up to MAX_IDLE_SECONDS.
        while not self._closing:
            self._wake.clear()
            try:
                wait = await self._dispatch_due()
            except Exception:
                log.exception("webhook scheduler error")
                wait = ERROR_PAUSE_SECONDS
            if wait is None or wait > 0:
                timeout = MAX_IDLE_SECONDS if wait is None else min(wait, MAX_IDLE_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def _dispatch_due(self) -> float | None:
        """Start every due delivery there is room for.

        Returns the seconds until the next one is due, or None to wait for a wake-up
        (nothing else pending, or every slot busy: a finishing attempt wakes the loop).
        """
        async with self._pick_lock:
            free = MAX_CONCURRENT_DELIVERIES - len(self._in_flight)
            if free <= 0:
                return None
            pending = await self._store.next_pending_deliveries(self._in_flight.keys(), free)
            for delivery_id in pending.due:
                self._start(delivery_id)
            if pending.next_at is None or len(pending.due) >= free:
                return None
            return max(0.0, pending.next_at - time.time())

    def _start(self, delivery_id: str) -> None:
        task = asyncio.create_task(self._attempt(delivery_id), name=f"webhook-{delivery_id}")
        self._in_flight[delivery_id] = task

        def finished(_: asyncio.Task[None]) -> None:
            self._in_flight.pop(delivery_id, None)
            self._wake.set()

        task.add_done_callback(finished)

    async def _attempt(self, delivery_id: str) -> None:
        try:
            found = await self._store.get_delivery(delivery_id)
            if found is None or found[0].state is not DeliveryState.PENDING:
                return
            delivery, body = found
            outcome = await self._post(delivery.url, delivery.id, body)
            attempts = delivery.attempts + 1
            state, next_at = plan_next(outcome, attempts, self._schedule, time.time(), self._rng)
            self._metrics.webhook_delivery(ATTEMPT_OUTCOMES[state])
            await self._store.record_attempt(
                delivery_id,
                state=state,
                next_attempt_at=next_at,
                last_status=outcome.status,
                last_error=outcome.error,
            )
            log.info(
                "webhook %s of %s, attempt %d: %s -> %s",
                delivery_id,
                delivery.request_id,
                attempts,
                outcome.error or outcome.status,
                state,
                extra={"request_id": delivery.request_id},
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook %s: attempt failed unexpectedly", delivery_id)
            await asyncio.sleep(ERROR_PAUSE_SECONDS)

    async def _post(self, url: str, msg_id: str, body: str) -> Outcome:
        assert self._session is not None and self._signer is not None
        headers = signed_headers(self._signer, msg_id, body, int(time.time()))
        try:
            async with self._session.post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as resp:
                return outcome_of_response(resp.status, resp.headers.get("Retry-After"))
        except (AddressNotAllowed, aiohttp.ClientError, OSError) as exc:
            # The guard refuses before dialling (AddressNotAllowed) or while dialling
            # (wrapped in a ClientError); TimeoutError is an OSError.
            return outcome_of_error(exc, self._settings.webhook.timeout)
