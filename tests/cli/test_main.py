"""`python -m csvcompress submit/status` against the real service."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from csvcompress.cli import main as cli
from csvcompress.cli.client import Progress
from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin, free_port


async def run(*args: str) -> int:
    """cli.main in a thread: it runs its own event loop, as from a shell."""
    return await asyncio.to_thread(cli.main, list(args))


def write_csv(tmp_path: Path, rows: list[list[str]], name: str = "products.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(csv_bytes(rows))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


async def test_submit_wait_downloads_the_output_and_exits_0(
    create_service: ServiceFactory,
    origin: Origin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(120, 90))
    b = origin.add("b.jpg", images.photo_jpeg(80, 60, seed=1))
    source = write_csv(tmp_path, [["1", "Shirt", f"{a}, {b}"], ["2", "Hat", b]])
    output = tmp_path / "out" / "result.csv"
    output.parent.mkdir()

    code = await run(
        "submit",
        str(source),
        "--server",
        service.url,
        "--wait",
        "--output",
        str(output),
        "--interval",
        "0.1",
    )

    out, err = capsys.readouterr()
    assert code == 0, err
    request_id = out.strip()
    assert out == f"{request_id}\n" and len(request_id) == 32
    rows = read_rows(output)
    assert [r["Product Name"] for r in rows] == ["Shirt", "Hat"]
    files = f"{service.url}/files/{request_id}"
    assert rows[0]["Output Image Urls"] == f"{files}/1-1.jpg, {files}/1-2.jpg"
    assert rows[1]["Output Image Urls"] == f"{files}/1-2.jpg"
    assert [r["Errors"] for r in rows] == ["", ""]
    data, content_type = await service.get_bytes(f"{files}/1-1.jpg")
    assert content_type == "image/jpeg" and data[:2] == b"\xff\xd8"
    lines = err.splitlines()
    assert lines[0] == "2 rows, 3 images; processing…"
    # Not a terminal: whole progress lines, the last one at 100%.
    assert "[########################] 100%  3/3 images  complete" in lines
    assert lines[-2] == f"output CSV saved to {output} ({output.stat().st_size} bytes)"
    assert lines[-1].startswith("complete: all 3 images compressed, ")
    assert "\r" not in err


async def test_a_failed_image_exits_1_and_the_output_lands_in_id_csv(
    create_service: ServiceFactory,
    origin: Origin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(64, 48))
    source = write_csv(tmp_path, [["1", "Shirt", f"{a}, {origin.url}/gone.jpg"]])
    monkeypatch.chdir(tmp_path)

    code = await run("submit", str(source), "--server", service.url, "--wait", "--interval", "0.1")

    out, err = capsys.readouterr()
    assert code == 1, err
    request_id = out.strip()
    rows = read_rows(tmp_path / f"{request_id}.csv")
    assert rows[0]["Output Image Urls"] == f"{service.url}/files/{request_id}/1-1.jpg, "
    assert rows[0]["Errors"] == "#2: HTTP 404 from origin"
    assert err.splitlines()[-1] == "complete: 1 of 2 images failed"


async def test_a_refused_csv_exits_2_with_one_problem_per_line(
    create_service: ServiceFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = await create_service()
    source = write_csv(tmp_path, [["1", "Shirt", ""], ["2", "Hat", "ftp://example.com/x.jpg"]])

    code = await run("submit", str(source), "--server", service.url, "--wait")

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "csvcompress: the CSV was refused: 2 problems",
        "line 2, Input Image Urls: the URL cell is empty",
        "line 3, Input Image Urls: not an http(s) URL: 'ftp://example.com/x.jpg'",
    ]


async def test_an_upload_over_the_limit_exits_2(
    create_service: ServiceFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = await create_service(limits={"max_upload_bytes": 1000})
    source = write_csv(
        tmp_path, [[str(n), "x" * 50, "http://example.com/a.jpg"] for n in range(50)]
    )

    code = await run("submit", str(source), "--server", service.url)

    assert code == 2
    assert (
        capsys.readouterr().err == "csvcompress: the file is larger than the limit of 1000 bytes\n"
    )


async def test_an_unreachable_server_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_csv(tmp_path, [["1", "Shirt", "http://example.com/a.jpg"]])
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    code = await run("submit", str(source), "--server", server, "--wait")

    assert code == 2
    assert capsys.readouterr().err == f"csvcompress: cannot reach {server}: connection refused\n"


async def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = await run("submit", str(tmp_path / "nope.csv"), "--server", "http://127.0.0.1:9")

    assert code == 2
    assert (
        capsys.readouterr().err
        == f"csvcompress: cannot read {tmp_path / 'nope.csv'}: No such file or directory\n"
    )


async def test_status_readable_and_json(
    create_service: ServiceFactory,
    origin: Origin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = await create_service()
    a = origin.add("a.jpg", images.photo_jpeg(64, 48))
    request_id = await service.submit(csv_bytes([["1", "Shirt", f"{a}, {origin.url}/gone.jpg"]]))
    doc = await service.wait(request_id)

    assert await run("status", request_id, "--server", service.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"request  {request_id}", "status   complete"]
    assert "images   2 total: 1 succeeded, 1 failed, 0 pending" in lines
    assert f"output   {doc['output_csv_url']}" in lines
    assert any(line.startswith("bytes    ") and "saved" in line for line in lines)

    assert await run("status", request_id, "--json", "--server", service.url) == 0
    assert json.loads(capsys.readouterr().out) == await service.status(request_id)

    assert await run("status", "nope", "--server", service.url) == 2
    assert capsys.readouterr().err == "csvcompress: no request with id nope\n"


async def test_the_server_defaults_to_the_settings(
    create_service: ServiceFactory,
    origin: Origin,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = await create_service()
    request_id = await service.submit(
        csv_bytes([["1", "Shirt", origin.add("a.jpg", images.photo_jpeg(32, 32))]])
    )
    config = tmp_path / "client.toml"
    config.write_text(f'[server]\npublic_url = "{service.url}"\n')

    assert await run("--config", str(config), "status", request_id) == 0
    assert capsys.readouterr().out.startswith(f"request  {request_id}\n")


async def test_the_api_key_is_sent_from_the_option_or_the_environment(
    origin: Origin,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in service that notes the Authorization header and refuses with 401.
    seen: list[str | None] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"error": "this API needs a key"}, status=401)

    origin.route("status/abc", refuse)
    server = origin.url
    assert await run("status", "abc", "--server", server, "--api-key", "k1") == 2
    monkeypatch.setenv("CSVCOMPRESS_API_KEY", "k2")
    assert await run("status", "abc", "--server", server) == 2
    assert seen == ["Bearer k1", "Bearer k2"]
    assert capsys.readouterr().err == "csvcompress: this API needs a key\n" * 2


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    doc = {
        "status": "processing",
        "images": {"total": 4, "succeeded": 1, "failed": 1, "pending": 2},
    }
    progress.update(doc)
    progress.update(
        {
            **doc,
            "status": "complete",
            "images": {"total": 4, "succeeded": 3, "failed": 1, "pending": 0},
        }
    )
    progress.close()

    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 2
    assert frames[0].startswith("[############------------]  50%  2/4 images  1 failed")
    assert frames[1] == "[########################] 100%  4/4 images  1 failed  complete\x1b[K\n"


async def test_the_real_command_on_a_terminal(
    create_service: ServiceFactory, origin: Origin, tmp_path: Path
) -> None:
    """`python -m csvcompress submit --wait` as a user runs it, its progress on a terminal."""
    service = await create_service()
    origin.delay = 0.3  # slow images, so that the progress line is drawn more than once
    urls = [origin.add(f"{n}.jpg", images.photo_jpeg(64, 48, seed=n)) for n in range(3)]
    source = write_csv(tmp_path, [[str(n), f"P{n}", url] for n, url in enumerate(urls)])
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "csvcompress",
        "submit",
        str(source),
        "--server",
        service.url,
        "--wait",
        "--interval",
        "0.1",
        "--output",
        str(tmp_path / "out.csv"),
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        cwd=tmp_path,
    )
    os.close(follower)
    reading = asyncio.create_task(asyncio.to_thread(_drain, leader))
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    terminal = await reading

    assert proc.returncode == 0, terminal
    assert len(stdout.decode().strip()) == 32
    # Redrawn in place: each frame starts at the line's beginning and clears what was left.
    assert terminal.count("\r▕") >= 2 and "\x1b[K" in terminal
    assert "100%  3/3 images  complete" in terminal
    assert len(read_rows(tmp_path / "out.csv")) == 3


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


async def command(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`python -m csvcompress ARGS` as a user runs it: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "csvcompress",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_server_given_as_host_and_port_means_http(
    create_service: ServiceFactory, origin: Origin, tmp_path: Path
) -> None:
    service = await create_service()
    source = write_csv(tmp_path, [["1", "Shirt", origin.add("a.jpg", images.photo_jpeg(40, 30))]])
    host_port = service.url.removeprefix("http://")

    code, out, err = await command(
        "submit", str(source), "--server", host_port, "--wait", "--interval", "0.1", cwd=tmp_path
    )

    assert code == 0, err
    request_id = out.strip()
    assert (tmp_path / f"{request_id}.csv").is_file()
    code, out, err = await command("status", request_id, "--server", host_port, cwd=tmp_path)
    assert code == 0, err
    assert "status   complete" in out


@pytest.mark.parametrize("server", ["ftp://127.0.0.1:8080", "http://", "http://127.0.0.1:port"])
async def test_a_server_that_is_not_http_is_one_line_and_exit_2(
    tmp_path: Path, server: str
) -> None:
    source = write_csv(tmp_path, [["1", "Shirt", "http://example.com/a.jpg"]])
    for args in (["submit", str(source)], ["status", "0" * 32]):
        code, out, err = await command(*args, "--server", server, cwd=tmp_path)
        assert (code, out) == (2, "")
        assert err == (
            "csvcompress: --server must be an http(s) URL such as http://127.0.0.1:8080,"
            f" not {server!r}\n"
        )


async def test_an_output_path_that_cannot_be_written_is_refused_before_uploading(
    create_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await create_service()
    source = write_csv(tmp_path, [["1", "Shirt", "http://example.com/a.jpg"]])
    missing = tmp_path / "missing" / "dir" / "x.csv"

    code, out, err = await command(
        "submit",
        str(source),
        "--server",
        service.url,
        "--wait",
        "--output",
        str(missing),
        cwd=tmp_path,
    )

    assert (code, out) == (2, "")
    assert (
        err == f"csvcompress: cannot save the output CSV to {missing}: no folder {missing.parent}\n"
    )
    # Nothing was uploaded: the job did not run for nothing.
    async with service.client.get(f"{service.url}/requests") as resp:
        assert (await resp.json())["requests"] == []


async def test_the_help_lists_the_exit_codes(tmp_path: Path) -> None:
    for name in ("submit", "status"):
        code, out, _ = await command(name, "--help", cwd=tmp_path)
        assert code == 0
        assert "Exit status: 0" in " ".join(out.split())
    code, out, _ = await command("submit", "--help", cwd=tmp_path)
    assert "complete with failed images" in " ".join(out.split())
