"""The guard's end-to-end tests, where nothing but loopback can be reached.

Tests marked `loopback_only` (conftest.LOOPBACK_ONLY) name private, link-local and public
addresses (10.0.0.5, 169.254.169.254, a public name to resolve) and expect the network
guard to refuse them with its own reason. Run in the ordinary way they are skipped; this
test runs them in a new network namespace (`unshare --net`) whose only interface is
loopback, so that if the guard broke, the service still could not reach any of them:
no packet, not even a DNS query, leaves the machine. It needs root (`.ci/run` runs as
root) and skips elsewhere, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Generous: the security scenario alone runs for a while on a loaded machine.
RUN_TIMEOUT = 280.0


def loopback_only(command: list[str]) -> list[str]:
    """`command` in a new network namespace whose only interface, loopback, is up."""
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]


@pytest.mark.timeout(RUN_TIMEOUT + 20)
def test_the_guard_tests_pass_where_only_loopback_is_reachable() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip for a loopback-only network namespace")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]
    command += ["-m", "loopback_only", "tests/test_security.py", "tests/test_webhooks.py"]
    command += ["tests/http/test_uploads.py"]
    run = subprocess.run(
        loopback_only(command), cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    # Every marked test ran there: none was skipped for want of the namespace.
    assert " passed" in report and "skipped" not in report, report
