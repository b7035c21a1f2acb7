"""retry: the back-off rule, Retry-After, and what is tried again."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from tenacity import RetryCallState

from csvcompress.errors import (
    FetchError,
    FetchRetryable,
    ImageRejected,
    StorageError,
    StorageFailed,
    StoreFull,
)
from csvcompress.retry import (
    DISK_FULL_PATIENCE,
    KEEP_TRYING_LONGEST,
    MAX_RETRY_AFTER,
    Backoff,
    is_retryable,
    keep_trying,
    parse_retry_after,
    retry_after_of,
)

# --- Retry-After ---------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after("0") == 0
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("3600") == MAX_RETRY_AFTER
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0
    far = format_datetime(now + timedelta(days=1), usegmt=True)
    assert parse_retry_after(far, now=now) == MAX_RETRY_AFTER


def test_parse_retry_after_takes_the_callers_cap() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", cap=3600) == 120
    assert parse_retry_after("86400", cap=3600) == 3600
    # An HTTP date without a zone is read as UTC.
    naive = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S")
    assert parse_retry_after(naive, now=now, cap=3600) == 90


def test_an_http_date_from_a_server_is_read_against_the_time_now() -> None:
    # A server's Retry-After date comes without a `now` of ours: the clock is read.
    long_past = format_datetime(datetime(1990, 1, 1, tzinfo=UTC), usegmt=True)
    far_ahead = format_datetime(datetime(2100, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(long_past) == 0
    assert parse_retry_after(far_ahead) == MAX_RETRY_AFTER


# --- the policy ----------------------------------------------------------------------------


def test_exponential_doubles_from_initial_and_is_capped() -> None:
    assert Backoff.exponential(1, 0.5).waits == (0.0,)
    assert Backoff.exponential(5, 0.5).waits == (0.0, 0.5, 1.0, 2.0, 4.0)
    assert Backoff.exponential(6, 10, max_delay=30).waits == (0.0, 10, 20, 30, 30, 30)
    assert Backoff.exponential(4, 1, multiplier=3).waits == (0.0, 1, 3, 9)
    # Many attempts do not overflow: the wait stops growing at the cap.
    assert Backoff.exponential(2000, 0.5, max_delay=30).waits[-1] == 30


def test_delay_is_the_wait_before_each_attempt() -> None:
    policy = Backoff.exponential(4, 0.2)
    assert [policy.delay(n) for n in range(1, 5)] == [0.0, 0.2, 0.4, 0.8]
    assert policy.attempts == 4
    with pytest.raises(ValueError):
        policy.delay(0)
    with pytest.raises(ValueError):
        policy.delay(5)


def test_retry_after_lengthens_a_wait_but_never_shortens_it() -> None:
    policy = Backoff((0.0, 5.0, 300.0))
    assert policy.delay(2, retry_after=60) == 60
    assert policy.delay(3, retry_after=60) == 300
    assert policy.delay(2, retry_after=0) == 5
    assert policy.delay(1, retry_after=None) == 0


def test_jitter_spreads_each_wait_within_its_fraction() -> None:
    policy = Backoff((0.0, 10.0), jitter=0.1)
    rng = random.Random(1)
    waits = [policy.delay(2, rng=rng) for _ in range(200)]
    assert 9.0 <= min(waits) < 9.5 and 10.5 < max(waits) <= 11.0
    assert policy.delay(1, rng=rng) == 0  # no wait stays no wait
    assert policy.delay(2, retry_after=3600, rng=rng) == 3600


def test_a_policy_that_makes_no_sense_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(())
    with pytest.raises(ValueError):
        Backoff((0.0, -1.0))
    with pytest.raises(ValueError):
        Backoff((0.0,), jitter=1.0)
    with pytest.raises(ValueError):
        Backoff.exponential(0, 1.0)
    with pytest.raises(ValueError):
        Backoff.exponential(3, 1.0).retrying(done=3)


# --- what is tried again -------------------------------------------------------------------


def test_the_error_hierarchy_says_what_is_retryable() -> None:
    assert is_retryable(FetchRetryable("HTTP 503"))
    assert is_retryable(StorageError("disk busy"))
    assert not is_retryable(FetchError("HTTP 404"))
    assert not is_retryable(StorageFailed("refused"))
    assert not is_retryable(ImageRejected("not an image"))
    assert not is_retryable(ValueError("a bug"))


class Script:
    """A call that raises the scripted errors in turn, then answers "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.waits: list[float] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"

    def before_sleep(self, state: RetryCallState) -> None:
        assert state.next_action is not None
        self.waits.append(state.next_action.sleep)


async def test_run_retries_with_the_policys_waits_until_it_succeeds() -> None:
    script = Script(StorageError("busy"), StorageError("busy"))
    policy = Backoff.exponential(3, 0.01)
    assert await policy.run(script, before_sleep=script.before_sleep) == "done"
    assert script.calls == 3
    assert script.waits == [0.01, 0.02]


async def test_run_waits_as_long_as_the_error_says_the_other_side_asked() -> None:
    script = Script(FetchRetryable("HTTP 429", retry_after=0.05))
    policy = Backoff.exponential(2, 0.0)
    assert await policy.run(script, before_sleep=script.before_sleep) == "done"
    assert script.waits == [0.05]


async def test_run_re_raises_the_last_error_once_the_attempts_run_out() -> None:
    last = StorageError("still busy")
    script = Script(StorageError("busy"), StorageError("busy"), last)
    with pytest.raises(StorageError) as info:
        await Backoff.exponential(3, 0.0).run(script)
    assert info.value is last
    assert script.calls == 3


@pytest.mark.parametrize("error", [StorageFailed("refused"), FetchError("HTTP 404"), KeyError(1)])
async def test_an_error_that_is_not_retryable_is_not_retried(error: BaseException) -> None:
    script = Script(error)
    with pytest.raises(type(error)) as info:
        await Backoff.exponential(5, 0.0).run(script)
    assert info.value is error
    assert script.calls == 1


async def test_run_after_attempts_made_elsewhere_waits_first_and_makes_the_rest(
    slept: list[float],
) -> None:
    script = Script(StorageError("busy"), StorageError("busy"), StorageError("busy"))
    policy = Backoff.exponential(3, 0.1)
    with pytest.raises(StorageError):
        await policy.run(script, done=1, before_sleep=script.before_sleep)
    # Attempt 2 after 0.1 s, attempt 3 after 0.2 s more; attempt 1 was made elsewhere.
    assert script.calls == 2
    assert script.waits == [0.2]
    assert slept == [0.1, 0.2]


async def test_keep_trying_waits_out_a_retryable_error_and_says_so_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("tests.keep_trying")
    failures = [StoreFull("the disk holding the database x is full")] * 3

    async def write() -> str:
        if failures:
            raise failures.pop()
        return "stored"

    caplog.set_level(logging.INFO, logger=log.name)
    assert await keep_trying(write, what="writing", log=log, first=0.001) == "stored"
    assert [r.getMessage() for r in caplog.records] == [
        "writing failed: the disk holding the database x is full; trying again until it succeeds",
        "writing succeeded after 3 failed tries",
    ]


def waits_are_the_only_time(monkeypatch: pytest.MonkeyPatch, slept: list[float]) -> None:
    """From now on the event loop's clock moves on by exactly the waits asked for (`slept`):
    keep_trying's patience is then counted in those waits, however fast the machine is."""
    loop = asyncio.get_running_loop()
    start = float(int(loop.time()))  # whole seconds: adding binary fractions stays exact
    monkeypatch.setattr(loop, "time", lambda: start + sum(slept))


async def test_keep_trying_waits_a_tenth_of_a_second_then_doubles_up_to_five(
    slept: list[float],
) -> None:
    # A database on a full disk, freed after eight tries: the write is made on the ninth.
    script = Script(*[StoreFull("the disk holding the database x is full")] * 8)
    log = logging.getLogger("tests.keep_trying")
    assert await keep_trying(script, what="writing", log=log) == "done"
    assert script.calls == 9
    assert slept == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


async def test_keep_trying_warns_at_the_first_failure(caplog: pytest.LogCaptureFixture) -> None:
    # One failed try is already worth a line: the operator hears of the full disk at once.
    script = Script(StoreFull("the disk holding the database x is full"))
    log = logging.getLogger("tests.keep_trying")
    caplog.set_level(logging.INFO, logger=log.name)
    assert await keep_trying(script, what="writing", log=log, first=0.001) == "done"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "writing failed: the disk holding the database x is full;"
            " trying again until it succeeds",
        ),
        ("INFO", "writing succeeded after 1 failed tries"),
    ]


async def test_a_full_disk_is_waited_out_for_five_minutes_then_the_write_fails_with_why(
    slept: list[float], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits_are_the_only_time(monkeypatch, slept)
    full = StoreFull("the disk holding the database x is full")
    script = Script(*[full] * 1000)  # space is never freed
    log = logging.getLogger("tests.keep_trying")
    caplog.set_level(logging.INFO, logger=log.name)
    with pytest.raises(StoreFull) as info:
        await keep_trying(script, what="writing the result", log=log, patience=DISK_FULL_PATIENCE)
    assert info.value is full
    # Tried for as long as its patience allows and no longer: one more wait would pass it.
    assert sum(slept) <= DISK_FULL_PATIENCE < sum(slept) + KEEP_TRYING_LONGEST
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            "writing the result failed: the disk holding the database x is full;"
            " trying again until it succeeds",
        ),
        (
            "WARNING",
            "writing the result failed for good: the disk holding the database x is full",
        ),
    ]


async def test_keep_trying_makes_its_last_try_when_its_patience_ends(
    slept: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tries at 0, 0.25 and 0.75 s: the third falls on the end of the patience itself.
    waits_are_the_only_time(monkeypatch, slept)
    script = Script(*[StoreFull("full")] * 10)
    log = logging.getLogger("tests.keep_trying")
    with pytest.raises(StoreFull):
        await keep_trying(script, what="w", log=log, patience=0.75, first=0.25)
    assert (script.calls, slept) == (3, [0.25, 0.5])


async def test_keep_trying_stops_when_the_service_does_and_says_why(
    slept: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(*[StoreFull("full")] * 10)
    log = logging.getLogger("tests.keep_trying")
    caplog.set_level(logging.INFO, logger=log.name)
    with pytest.raises(StoreFull, match=r"^full$"):
        await keep_trying(script, what="w", log=log, give_up=lambda: script.calls >= 3)
    assert (script.calls, slept) == (3, [0.1, 0.2])
    assert [r.getMessage() for r in caplog.records] == [
        "w failed: full; trying again until it succeeds",
        "w failed for good: full",
    ]


async def test_keep_trying_does_not_retry_what_trying_again_cannot_mend(
    slept: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.keep_trying")
    caplog.set_level(logging.INFO, logger=log.name)
    # A bug at the first try: raised at once, no wait, and no line (the caller reports it).
    bug = Script(RuntimeError("not retryable"))
    with pytest.raises(RuntimeError, match=r"^not retryable$"):
        await keep_trying(bug, what="w", log=log)
    assert (bug.calls, slept, caplog.records) == (1, [], [])
    # A refusal after a full disk: given up at once, with why.
    refused = Script(StoreFull("full"), StorageFailed("refused"))
    with pytest.raises(StorageFailed):
        await keep_trying(refused, what="w", log=log)
    assert (refused.calls, slept) == (2, [0.1])
    assert [r.getMessage() for r in caplog.records] == [
        "w failed: full; trying again until it succeeds",
        "w failed for good: refused",
    ]


async def test_the_first_attempt_is_made_at_once_and_the_last_error_without_a_wait(
    slept: list[float],
) -> None:
    script = Script(StorageError("busy"), StorageError("busy"))
    with pytest.raises(StorageError):
        await Backoff((0.0, 5.0)).run(script)
    assert script.calls == 2
    assert slept == [5.0]  # before attempt 2 only: none before the first, none after the last


async def test_the_controller_alone_makes_every_attempt_of_the_policy() -> None:
    calls = 0
    with pytest.raises(StorageError):
        async for attempt in Backoff((0.0, 0.0, 0.0)).retrying():
            with attempt:
                calls += 1
                raise StorageError("busy")
    assert calls == 3


def test_an_error_outside_the_hierarchy_asks_for_no_particular_wait() -> None:
    assert retry_after_of(ValueError("a bug")) is None
    assert retry_after_of(None) is None
    assert retry_after_of(FetchRetryable("HTTP 429", retry_after=7.0)) == 7.0


def test_a_seeded_generator_makes_the_jitter_reproducible() -> None:
    policy = Backoff((0.0, 10.0), jitter=0.5)
    first = [policy.delay(2, rng=random.Random(7)) for _ in range(3)]
    assert first == [random.Random(7).uniform(0.5, 1.5) * 10.0] * 3


def test_an_exponential_policy_keeps_its_jitter() -> None:
    policy = Backoff.exponential(3, 1.0, jitter=0.25)
    assert policy.jitter == 0.25
    assert 0.75 <= policy.delay(2, rng=random.Random(1)) <= 1.25


def test_a_refused_policy_says_what_is_wrong() -> None:
    # An operator who mistypes a back-off setting reads these messages at start-up.
    with pytest.raises(ValueError, match=r"^a back-off needs at least one attempt$"):
        Backoff(())
    with pytest.raises(ValueError, match=r"0 or more, not \(0.0, -1.0\)"):
        Backoff((0.0, -1.0))
    with pytest.raises(ValueError, match=r"jitter must be at least 0 and below 1, not 1\.0"):
        Backoff((0.0,), jitter=1.0)
    with pytest.raises(ValueError, match="attempts must be at least 1, not 0"):
        Backoff.exponential(0, 1.0)
    with pytest.raises(ValueError, match="3 attempts done leaves none of 3 to make"):
        Backoff.exponential(3, 1.0).retrying(done=3)
    with pytest.raises(ValueError, match="attempt 4 is not one of the 3 attempts"):
        Backoff.exponential(3, 1.0).delay(4)
