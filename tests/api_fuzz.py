"""Run schemathesis against a live service, in a network namespace of its own.

`python -m tests.api_fuzz EXAMPLES DIR` starts `python -m csvcompress serve` (data in DIR),
waits for /healthz, runs `schemathesis run` on its /openapi.json, stops the service and
exits with schemathesis' status. tests/http/test_schemathesis.py runs it under
`unshare --net` with only loopback up: schemathesis makes up webhook URLs (https://0.com/)
that the service resolves, and nothing of that may leave the machine.

Checks: every schemathesis check but `positive_data_acceptance`: whether an upload that
the schema allows is accepted depends on the CSV inside it and on the webhook host's DNS,
which no schema can state.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SKIPPED_CHECKS = "positive_data_acceptance"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(examples: int, root: Path) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = root / "config.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[database]\npath = "{root / "data" / "db.sqlite3"}"\n'
        f'[storage]\ndir = "{root / "data" / "storage"}"\n'
        "[workers]\nthreads = 1\n"
    )
    log = open(root / "service.log", "wb")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSVCOMPRESS_")}
    service = subprocess.Popen(
        [sys.executable, "-m", "csvcompress", "--config", str(config), "serve"],
        stdout=log,
        stderr=log,
        env=env,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or service.poll() is not None:
                    print("the service did not start", file=sys.stderr)
                    return 3
                time.sleep(0.1)
        st = Path(sys.executable).with_name("schemathesis")
        return subprocess.run(
            [
                str(st),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                SKIPPED_CHECKS,
                "--max-examples",
                str(examples),
                "--generation-deterministic",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            cwd=root,
            env=env,
        ).returncode
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), Path(sys.argv[2])))
