"""The lifecycle: the transition tables, the retry rule, and that nothing else writes a status."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import csvcompress
from csvcompress.jobs.lifecycle import (
    IMAGE_TRANSITIONS,
    REQUEST_TRANSITIONS,
    ImageEvent,
    RequestEvent,
    allows,
    image_move,
    request_move,
    retry_refusal,
)
from csvcompress.models import (
    FINISHED_STATUSES,
    UNFINISHED_STATUSES,
    ImageCounts,
    ImageStatus,
    RequestRecord,
    RequestStatus,
)

PACKAGE = Path(csvcompress.__file__).parent
# The store's methods that change a status; only the lifecycle may call them.
STATUS_WRITES = {
    "start_request",
    "finish_request",
    "cancel_request",
    "retry_request",
    "record_results",
}


def test_only_an_unfinished_request_can_be_cancelled_and_only_a_finished_one_retried() -> None:
    # Unfinished states but cancelling itself (a second DELETE there is refused).
    cancellable = set(UNFINISHED_STATUSES) - {RequestStatus.CANCELLING}
    assert set(request_move(RequestEvent.CANCEL)) == cancellable
    assert set(request_move(RequestEvent.CANCEL).values()) == {RequestStatus.CANCELLING}
    assert request_move(RequestEvent.RETRY) == dict.fromkeys(
        FINISHED_STATUSES, RequestStatus.PENDING
    )
    for status in RequestStatus:
        assert allows(status, RequestEvent.CANCEL) is (status in cancellable)
        assert allows(status, RequestEvent.RETRY) is status.finished


def test_finishing_never_undoes_a_cancel() -> None:
    for event in (RequestEvent.FINISH, RequestEvent.FAIL):
        move = request_move(event)
        # A cancel becomes final only with its output, and is never undone by it.
        assert move[RequestStatus.CANCELLING] is RequestStatus.CANCELLED
        assert move[RequestStatus.CANCELLED] is RequestStatus.CANCELLED
        assert not any(src.finished and src is not RequestStatus.CANCELLED for src in move)
    assert request_move(RequestEvent.FINISH)[RequestStatus.PROCESSING] is RequestStatus.COMPLETE
    assert request_move(RequestEvent.FAIL)[RequestStatus.PENDING] is RequestStatus.FAILED
    assert request_move(RequestEvent.START) == {RequestStatus.PENDING: RequestStatus.PROCESSING}


def test_every_state_is_reachable_and_every_finished_state_can_start_over() -> None:
    targets = set(REQUEST_TRANSITIONS.values())
    assert targets == set(RequestStatus)
    assert set(IMAGE_TRANSITIONS.values()) == set(ImageStatus)
    # A result is only ever recorded on a pending image; retry only takes images back.
    for event in (ImageEvent.SUCCEED, ImageEvent.FAIL, ImageEvent.SKIP):
        assert set(image_move(event)) == {ImageStatus.PENDING}
    assert image_move(ImageEvent.RETRY) == {
        ImageStatus.FAILED: ImageStatus.PENDING,
        ImageStatus.SKIPPED: ImageStatus.PENDING,
    }


def record(status: RequestStatus) -> RequestRecord:
    return RequestRecord("r1", status, None, None, None, 1, "t", "t")


@pytest.mark.parametrize(
    ("status", "counts", "refusal"),
    [
        (RequestStatus.PROCESSING, ImageCounts(2, 1, 1), "r1 is processing; only a finished"),
        (RequestStatus.COMPLETE, ImageCounts(2, 2), "r1 has no failed images to retry"),
        (RequestStatus.COMPLETE, ImageCounts(2, 1, 1), None),
        (RequestStatus.CANCELLED, ImageCounts(2, 1, 0, 1), None),
        (RequestStatus.CANCELLED, ImageCounts(3, 1, 1, 1), None),  # one failed, one skipped
        # The output CSV could not be written: retrying writes it, with nothing to re-fetch.
        (RequestStatus.FAILED, ImageCounts(2, 2), None),
    ],
)
def test_retry_is_refused_with_the_reason(
    status: RequestStatus, counts: ImageCounts, refusal: str | None
) -> None:
    found = retry_refusal(record(status), counts)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and refusal in found


def _status_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in STATUS_WRITES
    ]


def test_only_the_lifecycle_calls_the_stores_status_writes() -> None:
    allowed = {PACKAGE / "jobs" / "lifecycle.py"}
    outside = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed and PACKAGE / "store" not in path.parents
        for call in _status_writes(path)
    ]
    assert outside == []
    # And the check sees the calls it is looking for.
    found = {call.rsplit(" ", 1)[1] for call in _status_writes(PACKAGE / "jobs" / "lifecycle.py")}
    assert found == STATUS_WRITES
