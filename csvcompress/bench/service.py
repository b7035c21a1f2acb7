"""The real service as a subprocess (`python -m csvcompress serve`), and talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

READY_POLL_SECONDS = 0.005
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
# As a script would poll; the throughput figures use the service's own timestamps.
STATUS_POLL_SECONDS = 0.5
WAIT_LIMIT_SECONDS = 3600.0
KIB = 1024

Settings = Mapping[str, Mapping[str, Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds used so far by a process's threads, grouped by what they do."""
    groups: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except FileNotFoundError:  # the thread just ended
            continue
        if name == "libvips worker":
            group = "libvips workers"
        elif tid == str(pid):
            group = "event loop"
        elif int(fields[16]) > 0:  # the nicer pool threads (cpupool)
            group = "pool threads"
        else:
            group = "other threads"
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        groups[group] = groups.get(group, 0.0) + seconds
    return groups


def toml(sections: Settings) -> str:
    """Just enough TOML for a config file: tables of strings, numbers, booleans and lists."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


class ServiceProcess:
    """`python -m csvcompress serve` on a free port with everything under `workdir`."""

    def __init__(
        self, workdir: Path, settings: Settings | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        sections: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "database": {"path": str(workdir / "data" / "csvcompress.sqlite3")},
            "storage": {"backend": "local", "dir": str(workdir / "data" / "storage")},
            "fetch": {"allowed_networks": ["127.0.0.0/8"]},
            "log": {"level": "warning"},
        }
        for name, values in (settings or {}).items():
            sections.setdefault(name, {}).update(values)
        self.config = workdir / "config.toml"
        self.env = {**os.environ, **(env or {})}
        self.env.pop("CSVCOMPRESS_CONFIG", None)
        self._sections = sections
        self._proc: asyncio.subprocess.Process | None = None
        self.startup_seconds = 0.0

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the service is not running")
        return self._proc.pid

    async def start(self, session: aiohttp.ClientSession) -> float:
        """Spawn the process and wait for the first request served; returns the seconds."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(toml(self._sections))
        log = (self.workdir / "service.log").open("wb")
        command = [sys.executable, "-m", "csvcompress", "--config", str(self.config), "serve"]
        started = time.perf_counter()
        self._proc = await asyncio.create_subprocess_exec(
            *command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        deadline = started + READY_TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            if self._proc.returncode is not None:
                raise SystemExit(f"the service exited at start:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.base_url}/") as resp:
                    if resp.status == 200:
                        self.startup_seconds = time.perf_counter() - started
                        return self.startup_seconds
            await asyncio.sleep(READY_POLL_SECONDS)
        raise SystemExit(f"the service did not answer within {READY_TIMEOUT_SECONDS} s")

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "service.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # --- memory, from /proc ------------------------------------------------------

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS since start or the last reset_peak) in MiB."""
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) / KIB
        return fields["VmRSS"], fields["VmHWM"]

    def reset_peak(self) -> None:
        """Start a new peak-RSS window (Linux: "5" to clear_refs resets VmHWM)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")


# --- the API, as a client uses it ------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    request_id: str
    images: int
    seconds: float  # from the start of the upload to the 202


async def upload(session: aiohttp.ClientSession, base_url: str, csv_data: bytes) -> Accepted:
    form = aiohttp.FormData()
    form.add_field("file", csv_data, filename="products.csv", content_type="text/csv")
    started = time.perf_counter()
    async with session.post(f"{base_url}/upload", data=form) as resp:
        body = await resp.json()
        seconds = time.perf_counter() - started
        if resp.status != 202:
            raise SystemExit(f"upload refused ({resp.status}): {body}")
    return Accepted(body["request_id"], body["images"], seconds)


async def status(session: aiohttp.ClientSession, base_url: str, request_id: str) -> dict[str, Any]:
    async with session.get(f"{base_url}/status/{request_id}") as resp:
        doc: dict[str, Any] = await resp.json()
        return doc


async def wait_until(
    session: aiohttp.ClientSession,
    base_url: str,
    request_id: str,
    done: Callable[[dict[str, Any]], bool],
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the status until `done(doc)`; a failed request stops the benchmark."""
    deadline = time.perf_counter() + WAIT_LIMIT_SECONDS
    while True:
        doc = await status(session, base_url, request_id)
        if on_poll is not None:
            on_poll(doc)
        if doc["status"] == "failed":
            raise SystemExit(f"request {request_id} failed: {doc.get('error')}")
        if done(doc):
            return doc
        if time.perf_counter() > deadline:
            raise SystemExit(f"request {request_id} not done in {WAIT_LIMIT_SECONDS:.0f} s: {doc}")
        await asyncio.sleep(STATUS_POLL_SECONDS)


def is_complete(doc: dict[str, Any]) -> bool:
    return bool(doc["status"] == "complete")
