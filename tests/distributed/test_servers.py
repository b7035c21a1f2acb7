"""Starting the real servers: ports found by binding and releasing may be taken meanwhile."""

from __future__ import annotations

import pytest

from csvcompress.bench.servers import START_ATTEMPTS, started


class _Flaky:
    """A server whose first `failures` starts fail, as one whose port was taken would."""

    made = 0

    def __init__(self, failures: int) -> None:
        _Flaky.made += 1
        self.number = _Flaky.made
        self.failures = failures
        self.running = False
        self.stopped = False

    def start(self) -> None:
        if self.number <= self.failures:
            raise RuntimeError(
                f"SeaweedFS did not start: bind: address already in use ({self.number})"
            )
        self.running = True

    def stop(self) -> None:
        self.stopped = True


def test_a_server_that_fails_to_start_is_made_again_with_new_ports() -> None:
    _Flaky.made = 0
    made: list[_Flaky] = []

    def make() -> _Flaky:
        made.append(_Flaky(failures=START_ATTEMPTS - 1))
        return made[-1]

    server = started(make)
    assert server.running and server is made[-1] and len(made) == START_ATTEMPTS
    assert all(failed.stopped for failed in made[:-1])  # each failed try cleaned up


def test_the_last_failure_is_raised_as_it_was() -> None:
    _Flaky.made = 0
    with pytest.raises(RuntimeError, match=rf"address already in use \({START_ATTEMPTS}\)"):
        started(lambda: _Flaky(failures=START_ATTEMPTS))
    assert _Flaky.made == START_ATTEMPTS
