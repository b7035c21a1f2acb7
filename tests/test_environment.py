"""The tests run the same whatever the user's shell exports (the README suggests some)."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests import images
from tests.conftest import csv_bytes, refused
from tests.procs import ServiceProcess
from tests.servers import Origin

ROOT = Path(__file__).resolve().parent.parent


async def test_a_service_process_is_configured_by_its_file_alone(
    tmp_path: Path, origin: Origin
) -> None:
    """Its config file allows no network: loopback is refused, on the port the file names."""
    service = ServiceProcess(tmp_path, fetch={"allowed_networks": []})
    await service.start()
    try:
        url = origin.add("a.jpg", images.photo_jpeg(40, 30))
        doc = await service.wait(await service.submit(csv_bytes([["1", "A", url]])))
        rows = list(csv.DictReader(io.StringIO(await service.output_csv(doc))))
        assert rows[0]["Errors"] == f"#1: {refused('127.0.0.1')}"
    finally:
        await service.stop(timeout=30)


async def test_the_suite_runs_the_same_with_settings_exported_in_the_shell() -> None:
    """As a user who followed the README: loopback allowed, and a port taken by another
    program. Neither reaches the services the tests start."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **os.environ,
            "CSVCOMPRESS_FETCH_ALLOWED_NETWORKS": "127.0.0.0/8",
            "CSVCOMPRESS_SERVER_PORT": str(taken.getsockname()[1]),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_a_service_process_is_configured_by_its_file_alone",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=55)
    assert proc.returncode == 0, out.decode()
