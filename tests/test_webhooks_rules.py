"""webhooks: what one answer means, and the secret's file, case by case.

The cases a mutation run showed no test would notice going wrong: answers at the edges of
the 2xx and 3xx ranges, what an error without a response is reported as, and the secret
file written into a data directory that does not exist yet.
"""

from __future__ import annotations

import logging
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks import Webhook

from csvcompress.config import Settings, settings_from_dict
from csvcompress.errors import AddressNotAllowed, ConfigError
from csvcompress.pipeline.netguard import AddressRefusedError
from csvcompress.webhooks import (
    JITTER,
    Outcome,
    outcome_of_error,
    outcome_of_response,
    plan_next,
    resolve_secret,
    signed_headers,
)
from tests.conftest import WEBHOOK_SECRET

CONNECTION = aiohttp.client_reqrep.ConnectionKey("hooks.test", 80, False, True, None, None, None)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome(200, None)),
        (299, Outcome(299, None)),
        (300, Outcome(300, "HTTP 300: redirects are not followed")),
        (308, Outcome(308, "HTTP 308: redirects are not followed")),
        (399, Outcome(399, "HTTP 399: redirects are not followed")),
        (400, Outcome(400, "HTTP 400")),
        (410, Outcome(410, "HTTP 410: the receiver asked for no more deliveries", final=True)),
        (500, Outcome(500, "HTTP 500")),
    ],
)
def test_what_an_answer_means_at_the_edges_of_each_range(status: int, outcome: Outcome) -> None:
    assert outcome_of_response(status, None) == outcome
    assert outcome.delivered == (200 <= status < 300)


def test_no_answer_in_time_is_reported_with_the_timeout() -> None:
    assert outcome_of_error(TimeoutError(), 2.5) == Outcome(None, "no answer within 2.5 s")


def test_a_refused_connection_is_reported_as_the_system_says_it() -> None:
    error = aiohttp.ClientConnectorError(CONNECTION, ConnectionRefusedError(111, "refused"))
    assert outcome_of_error(error, 10) == Outcome(None, "connection failed: Connection refused")


def test_an_address_the_guard_refuses_is_final() -> None:
    refusal = AddressRefusedError(AddressNotAllowed("address not allowed: 10.0.0.5"))
    error = aiohttp.ClientConnectorError(CONNECTION, refusal)
    assert outcome_of_error(error, 10) == Outcome(None, "address not allowed: 10.0.0.5", final=True)


def test_a_receiver_that_hangs_up_is_reported_by_what_happened() -> None:
    assert outcome_of_error(aiohttp.ServerDisconnectedError(), 10) == Outcome(
        None, "connection failed: Server disconnected"
    )
    # An error with nothing to say is named by its kind rather than left blank.
    assert outcome_of_error(aiohttp.ClientPayloadError(), 10) == Outcome(
        None, "connection failed: ClientPayloadError"
    )


def test_the_secret_is_generated_into_a_data_directory_that_does_not_exist_yet(
    tmp_path: Path,
) -> None:
    data = tmp_path / "fresh" / "data"
    settings = settings_from_dict({"database": {"path": str(data / "db.sqlite3")}})
    secret = resolve_secret(settings)
    path = data / "webhook_secret"
    assert path.read_text(encoding="ascii") == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_secret(settings) == secret  # kept: the next start signs the same way


def test_a_failed_secret_write_reports_its_own_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_dict({"database": {"path": str(tmp_path / "db.sqlite3")}})

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError, match="No space left on device"):
        resolve_secret(settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_secret_write_whose_temp_file_cannot_go_either_reports_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_dict({"database": {"path": str(tmp_path / "db.sqlite3")}})
    real_unlink = Path.unlink

    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    def stuck(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".tmp") and self.exists():
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", no_space)
    monkeypatch.setattr(Path, "unlink", stuck)
    with pytest.raises(OSError, match="No space left on device"):
        resolve_secret(settings)


@pytest.fixture
def new_york_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is not UTC, as on many a server."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york_time")
def test_a_server_off_utc_signs_deliveries_a_receiver_can_verify() -> None:
    at = int(time.time())
    body = '{"type": "request.finished"}'
    headers = signed_headers(Webhook(WEBHOOK_SECRET), "msg_1", body, at)
    assert headers["webhook-timestamp"] == str(at)
    # The receiver's check: the signature covers the timestamp the headers state.
    assert Webhook(WEBHOOK_SECRET).verify(body, headers) == {"type": "request.finished"}


def test_the_next_attempt_time_comes_from_the_senders_own_generator() -> None:
    # Seeded, the retry times are reproducible: the jitter uses the generator it is given.
    schedule = (0.0, 100.0, 100.0)
    failed = Outcome(503, "HTTP 503")
    first = plan_next(failed, 1, schedule, 1000.0, random.Random(5))
    again = plan_next(failed, 1, schedule, 1000.0, random.Random(5))
    assert first == again
    assert first[1] == 1000.0 + 100.0 * random.Random(5).uniform(1 - JITTER, 1 + JITTER)


def _secret_settings(tmp_path: Path) -> Settings:
    return settings_from_dict({"database": {"path": str(tmp_path / "db.sqlite3")}})


def test_the_operator_is_told_where_a_generated_secret_is_and_how_to_read_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="csvcompress.webhooks"):
        resolve_secret(_secret_settings(tmp_path))
    path = (tmp_path / "webhook_secret").resolve()
    assert caplog.messages == [
        "generated a webhook signing secret; receivers need it to verify deliveries: "
        f"read it with `cat {path}`, or set [webhook] secret"
    ]


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, True), (0o604, True)])
def test_a_secret_file_open_to_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    settings = _secret_settings(tmp_path)
    secret = resolve_secret(settings)
    path = tmp_path / "webhook_secret"
    path.chmod(mode)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="csvcompress.webhooks"):
        assert resolve_secret(settings) == secret
    warning = f"webhook secret file {path} is open to other users; chmod 600 it"
    signed = f"webhook deliveries are signed with the secret in {path.resolve()}"
    assert caplog.messages == ([warning, signed] if warned else [signed])


def test_a_secret_file_that_cannot_be_read_stops_the_start_saying_why(tmp_path: Path) -> None:
    (tmp_path / "webhook_secret").mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError) as info:
        resolve_secret(_secret_settings(tmp_path))
    assert info.value.message.startswith(
        f"webhook secret file {tmp_path / 'webhook_secret'}: cannot be read: [Errno 21]"
    )
