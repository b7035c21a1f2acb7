"""A start that cannot succeed stops with one line naming the port, file or directory and
what to do, and exit status 2: no traceback, and nothing started before it (the port is
bound before any worker or webhook runs, the data directory locked before the database
is opened). Each runs `python -m csvcompress serve` as a real process."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from csvcompress.cli.serve import bind
from csvcompress.config import ServerSettings
from csvcompress.errors import StartupError
from tests.procs import ServiceProcess
from tests.servers import free_port


def refused(line: str) -> list[str]:
    return [f"csvcompress: cannot start: {line}"]


async def test_a_port_in_use_stops_the_start_before_anything_runs(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceProcess(tmp_path, server={"host": "127.0.0.1", "port": port})

        code, log = await service.start_refused()

    assert code == 2
    assert log.splitlines() == refused(
        f"port {port} on 127.0.0.1 is in use by another program; stop it, or choose another"
        " [server] port"
    )
    # Nothing was started: not even the database was created.
    assert not service.db_path.exists()


async def test_a_corrupt_database_stops_the_start(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path)
    service.db_path.parent.mkdir(parents=True)
    service.db_path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)

    code, log = await service.start_refused()

    assert code == 2
    assert log.splitlines() == refused(
        f"the database {service.db_path} is not a SQLite database or is damaged (file is not a"
        " database); move it aside to start with an empty one, or restore it from a backup"
    )


async def test_an_unreadable_data_directory_stops_the_start(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path)
    data = service.db_path.parent
    data.mkdir()
    data.chmod(0)
    try:
        code, log = await service.start_refused(drop_root_overrides=True)
    finally:
        data.chmod(0o755)

    assert code == 2
    [line] = log.splitlines()
    assert line.startswith(f"csvcompress: cannot start: cannot use {data}: Permission denied;")
    assert line.endswith("read and write access to it, or choose another [database] path")


@contextlib.contextmanager
def mounted_read_only(path: Path) -> Iterator[None]:
    """A real read-only file system at `path` (a tmpfs mounted ro), or skip without root."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


async def test_a_read_only_data_directory_stops_the_start(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path)
    with mounted_read_only(service.db_path.parent):
        code, log = await service.start_refused()

    assert code == 2
    assert log.splitlines() == refused(
        f"{service.db_path.parent} is on a read-only file system; choose a writable [database] path"
    )


async def test_a_second_service_on_the_same_data_directory_stops(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = ServiceProcess(tmp_path / "first")
    await first.start()
    try:
        second = ServiceProcess(
            tmp_path / "second",
            database={"path": str(first.db_path)},
            storage={"dir": str(first.storage_dir)},
        )
        code, log = await second.start_refused()
    finally:
        assert await first.stop(timeout=30) == 0

    assert code == 2
    assert log.splitlines() == refused(
        f"the data directory {first.db_path.parent} is in use by another csvcompress (process"
        f" {first.pid}); stop it first, or give this one another [database] path"
    )
    # Once the first has stopped, the directory is free again.
    await second.start()
    assert await second.stop(timeout=30) == 0


def test_the_port_is_bound_on_every_address_the_host_stands_for() -> None:
    port = free_port()
    expected = {
        address[:2]
        for *_, address in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    }
    sockets = bind(ServerSettings(host="localhost", port=port))
    try:
        assert {sock.getsockname()[:2] for sock in sockets} == expected
        with pytest.raises(StartupError, match=f"port {port} on localhost is in use"):
            bind(ServerSettings(host="localhost", port=port))
    finally:
        for sock in sockets:
            sock.close()
