"""`make demo` (`python -m csvcompress demo`) as a newcomer runs it."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from pathlib import Path


async def test_the_demo_says_what_it_allowed_and_keeps_its_files(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "csvcompress",
        "demo",
        "--rows",
        "2",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,  # no config.toml: the defaults, as on a fresh clone
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    out = stdout.decode()

    assert proc.returncode == 0, stderr.decode()
    # It says that it allowed loopback, and where the setting lives.
    assert 'this run allows it: [fetch] allowed_networks = ["127.0.0.0/8"]' in out
    assert "Complete in " in out and ": 4 of 4 images compressed, 0 failed." in out
    # A readable summary, not a Python dict.
    assert "{" not in out and "'" not in out
    kept = tmp_path / "csvcompress-demo"
    assert f"Kept in {kept.name}/" in out
    rows = list(csv.DictReader(io.StringIO((kept / "output.csv").read_text(encoding="utf-8"))))
    assert [row["Product Name"] for row in rows] == ["Sample product 1", "Sample product 2"]
    assert sorted(p.name for p in (kept / "images").iterdir()) == [
        "1-1.jpg",
        "1-2.jpg",
        "2-1.jpg",
        "2-2.jpg",
    ]
    assert len(list((kept / "originals").iterdir())) == 4
    assert (kept / "products.csv").is_file()
