"""Property-based API testing: schemathesis against the live service's /openapi.json.

Every route gets generated requests, valid and invalid, and every answer is checked
against the document: no 5xx, no status or content type the document does not list,
bodies matching their schemas, invalid input refused. It runs in a network namespace with
only loopback up (tests/api_fuzz.py says why), so it needs root (`.ci/run` runs as root)
and `unshare`; elsewhere it is skipped, saying so.

API_FUZZ_EXAMPLES sets the examples per operation (default 25, about half a minute); the
README's Security section says how to run it longer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "25"))
ROOT = Path(__file__).resolve().parents[2]
# The run's own bound: generous, to prove it ends rather than to time it.
RUN_TIMEOUT = 240.0


def loopback_only(command: list[str]) -> list[str]:
    """`command` in a new network namespace whose only interface, loopback, is up."""
    script = 'ip link set lo up && exec "$@"'
    return ["unshare", "--net", "--", "sh", "-c", script, "sh", *command]


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to run in a loopback-only network namespace")
    command = [sys.executable, "-m", "tests.api_fuzz", str(EXAMPLES), str(tmp_path)]
    run = subprocess.run(
        loopback_only(command),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Test cases:" in report and " passed" in report, report
    service_log = (tmp_path / "service.log").read_text()
    assert "Traceback" not in service_log, service_log
    assert " ERROR " not in service_log, service_log
