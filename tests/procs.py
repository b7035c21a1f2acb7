"""The service as a real process: started from a config file, stopped with signals."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.waiting import RequestWaits, poll

# Seconds a started service has to answer GET / with 200.
START_TIMEOUT = 30.0
# The line `serve` prints once it listens, with the port it bound.
SERVING = re.compile(r"csvcompress serving on http://[^\s]*:(\d+)")

# Run in the child before the service: as root, give up the capabilities that let root
# write to files whatever their mode (DAC override), so a chmod means what it says.
_DROP_ROOT_OVERRIDES = """
import ctypes, os, sys
PR_CAPBSET_DROP = 24
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_CAPBSET_DROP, {cap}) failed: errno {ctypes.get_errno()}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_tables(tables: dict[str, dict[str, Any]], prefix: str = "") -> list[str]:
    """TOML lines for {table: {key: value}}; a dict value is a sub-table ([storage.cloudinary])."""
    lines = []
    for name, values in tables.items():
        lines.append(f"[{prefix}{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items() if not isinstance(v, dict)]
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += _toml_tables(nested, f"{prefix}{name}.")
    return lines


async def submit(url: str, csv_data: bytes, webhook_url: str | None = None) -> str:
    """POST /upload to the service at `url` as a browser would; the request id of the 202."""
    form = aiohttp.FormData()
    form.add_field("file", csv_data, filename="products.csv", content_type="text/csv")
    if webhook_url is not None:
        form.add_field("webhook_url", webhook_url)
    async with aiohttp.ClientSession() as client, client.post(f"{url}/upload", data=form) as resp:
        assert resp.status == 202, await resp.text()
        request_id: str = (await resp.json())["request_id"]
        return request_id


async def status(url: str, request_id: str) -> dict[str, Any]:
    """GET /status of one request from the service at `url`."""
    async with aiohttp.ClientSession() as client, client.get(f"{url}/status/{request_id}") as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


class ServiceProcess(RequestWaits):
    """`python -m csvcompress serve` on a free port, with its data under `root`.

    Each keyword is a config section ({key: value}; a dict value is a sub-table). A section
    given replaces that section of the defaults below whole, so the config file holds exactly
    what the test names and nothing it did not ask for.
    """

    def __init__(self, root: Path, **sections: dict[str, Any]) -> None:
        self.root = root
        # Port 0 on the first start: the service binds a port the OS chooses and says which
        # (no port is bound here, released, and raced for). Later starts keep that port, as a
        # restarted service would, so links it handed out stay good.
        self.port = 0
        self.db_path = root / "data" / "db.sqlite3"
        self.storage_dir = root / "data" / "storage"
        self.config = root / "config.toml"
        self.log_path = root / "service.log"
        defaults: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": 0},
            "database": {"path": str(self.db_path)},
            "storage": {"dir": str(self.storage_dir)},
            "fetch": {"concurrency": 2, "allowed_networks": ["127.0.0.0/8"], "backoff": 0.01},
            "workers": {"threads": 1},
        }
        self._sections = defaults | sections
        self._write_config()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port, "the service has not told its port yet: start it first"
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        server = self._sections["server"]
        if self.port and server.get("port") == 0:
            self._sections["server"] = server | {"port": self.port}
        self.config.write_text("\n".join(_toml_tables(self._sections)) + "\n")

    def _announced_port(self) -> int | None:
        found = SERVING.findall(self.log())
        return int(found[-1]) if found else None

    async def start(
        self, *, env: dict[str, str] | None = None, drop_root_overrides: bool = False
    ) -> None:
        """Start the process (with `env` as its whole environment, if given); return once
        GET / answers 200. A process that exits or stays silent for 30 s fails with its log."""
        self._write_config()
        args = ["-m", "csvcompress", "--config", str(self.config), "serve"]
        if drop_root_overrides and os.geteuid() == 0:
            args = ["-c", _DROP_ROOT_OVERRIDES, *args]
        self.log_path.touch()
        announced_before = len(SERVING.findall(self.log()))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=log, env=env)
        async with aiohttp.ClientSession() as client:

            async def state() -> str | None:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    return "exited"
                if len(SERVING.findall(self.log())) == announced_before:
                    return None  # not listening yet
                self.port = self._announced_port() or 0
                try:
                    async with client.get(f"{self.url}/") as resp:
                        return "answering" if resp.status == 200 else None
                except aiohttp.ClientError:
                    return None

            with contextlib.suppress(AssertionError):  # silent for too long
                if await poll(state, what="GET / to answer", timeout=START_TIMEOUT) == "answering":
                    return
        self.kill()
        raise AssertionError(f"service did not start:\n{self.log()}")

    async def start_refused(self, *, drop_root_overrides: bool = False) -> tuple[int, str]:
        """Start the process expecting it to refuse to start: its exit code and its log."""
        self._write_config()
        args = ["-m", "csvcompress", "--config", str(self.config), "serve"]
        if drop_root_overrides and os.geteuid() == 0:
            args = ["-c", _DROP_ROOT_OVERRIDES, *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=log)
        code = await self.exit_code(START_TIMEOUT)
        return code, self.log()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def submit(self, csv_data: bytes, webhook_url: str | None = None) -> str:
        return await submit(self.url, csv_data, webhook_url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, signum: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def status(self, request_id: str) -> dict[str, Any]:
        return await status(self.url, request_id)

    async def output_csv(self, doc: dict[str, Any]) -> str:
        """The text of the output CSV a status document points at."""
        async with aiohttp.ClientSession() as client, client.get(doc["output_csv_url"]) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()

    async def exit_code(self, timeout: float) -> int:
        """Wait (without blocking the loop: the test's origin must keep serving) for the exit."""
        assert self.proc is not None
        try:
            code = await poll(
                self.proc.poll,
                until=lambda code: code is not None,
                what="the service to exit",
                timeout=timeout,
            )
        except AssertionError:
            message = f"service still running after {timeout} s:\n{self.log()}"
            raise AssertionError(message) from None
        assert code is not None
        return code

    async def stop(self, timeout: float) -> int:
        """SIGTERM, then the exit code; past `timeout` s, SIGKILL and AssertionError."""
        self.send(signal.SIGTERM)
        try:
            return await self.exit_code(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
