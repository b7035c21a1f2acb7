"""`python -m csvcompress.bench` (what `make bench` runs). See the package docstring."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp

from csvcompress.bench import corpus as corpora
from csvcompress.bench import report as rep
from csvcompress.bench import scenarios
from csvcompress.bench.report import Report
from csvcompress.bench.scenarios import Origin, Throughput
from csvcompress.config import ImageSettings, WorkerSettings

SECTIONS = ("throughput", "mixed", "far", "hostile", "codec", "memory", "upload", "latency")
MB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csvcompress.bench", description=__doc__)
    p.add_argument("--corpus", type=Path, help="a folder of real photos (default: generated)")
    p.add_argument("--images", type=int, default=500, help="distinct URLs per throughput run")
    p.add_argument("--repeat", type=int, default=5, help="service runs, each between raw runs")
    p.add_argument("--big-images", type=int, default=1000, help="images in the memory run")
    p.add_argument("--rows", type=int, default=100_000, help="rows in the big upload")
    p.add_argument("--urls-per-row", type=int, default=3)
    p.add_argument("--status-rate", type=float, default=200.0, help="GET /status per second")
    p.add_argument("--status-seconds", type=float, default=10.0)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"some of {','.join(SECTIONS)}")
    p.add_argument("--no-pillow", action="store_true", help="skip the Pillow reference runs")
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="for the service"
    )
    p.add_argument("--results", type=Path, default=Path("bench/results.md"))
    p.add_argument("--no-results", action="store_true", help="do not append to --results")
    p.add_argument("--cache", type=Path, default=Path("bench/.corpus"), help="generated images")
    p.add_argument("--mixed-images", type=int, default=240, help="URLs per mixed-corpus run")
    p.add_argument("--far-images", type=int, default=2000, help="URLs per far-origin run")
    p.add_argument("--far-delay", type=float, default=1.0, help="seconds the far origin waits")
    p.add_argument("--hostile", type=int, default=16, help="endless bodies (and gzip bombs)")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run, not a result")
    return p


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, report: Report) -> None:
        self.args = args
        self.workdir = workdir
        self.report = report
        self.env = dict(item.split("=", 1) for item in args.env)
        self.threads = WorkerSettings().thread_count
        self.startups: list[float] = []
        self._runs = 0

    def fresh_dir(self, name: str) -> Path:
        self._runs += 1
        return self.workdir / f"{self._runs:02d}-{name}"

    def show(self, result: Throughput) -> None:
        extra = ""
        if result.peak_rss_mb is not None:
            extra = f", peak RSS {result.peak_rss_mb:.0f} MB"
        if result.startup_seconds is not None:
            self.startups.append(result.startup_seconds)
        if result.origin_cpu_ms:
            extra += f", origin CPU {result.origin_cpu_ms:.1f} ms/img"
        self.report.line(
            f"{result.label + ':':44} {result.rate:6.1f} img/s  ({result.images} images in "
            f"{result.seconds:.1f} s, CPU {result.cpu_ms:.1f} ms/img, {result.failed} failed"
            f"{extra}; {result.bytes_in / MB:.1f} MB -> {result.bytes_out / MB:.1f} MB)"
        )
        if result.thread_cpu_ms:
            shares = ", ".join(
                f"{name} {ms:.1f}"
                for name, ms in sorted(result.thread_cpu_ms.items(), key=lambda kv: -kv[1])
            )
            self.report.line(f"   service CPU ms/img by thread: {shares}")

    def raw(
        self, photos: corpora.Corpus, settings: ImageSettings, threads: int | None = None
    ) -> Throughput:
        result = scenarios.raw(photos, self.args.images, settings, threads or self.threads)
        self.show(result)
        return result

    async def service(
        self, session: aiohttp.ClientSession, origin: Origin, photos: corpora.Corpus, engine: str
    ) -> Throughput:
        result = await scenarios.end_to_end(
            session,
            self.fresh_dir(f"e2e-{engine}"),
            origin,
            photos,
            self.args.images,
            {"engine": engine},
            self.env,
        )
        self.show(result)
        if result.failed:
            raise SystemExit(f"{result.failed} images failed end to end: see {self.workdir}")
        return result

    def bracketed(self, raw: str, before: Throughput, e2e: Throughput, after: Throughput) -> float:
        """One service run against the raw runs on either side of it: its rate ratio, with
        the CPU per image shown beside it."""
        raw_rate = (before.rate + after.rate) / 2
        raw_cpu = (before.cpu_ms + after.cpu_ms) / 2
        ratio = e2e.rate / raw_rate
        self.report.line(
            f"   service/{raw} = {e2e.rate:.1f} / {raw_rate:.1f} = {ratio:.3f}; "
            f"CPU per image {raw}/service = {raw_cpu:.1f} / {e2e.cpu_ms:.1f} = "
            f"{raw_cpu / e2e.cpu_ms:.3f}"
        )
        return ratio

    def check_median(self, target: str, ratios: list[float], floor: float) -> None:
        ratio = rep.median(ratios)
        shown = ", ".join(f"{x:.3f}" for x in ratios)
        self.report.check(target, f"{ratio:.3f} (runs: {shown})", ratio >= floor)

    async def throughput(
        self, session: aiohttp.ClientSession, origin: Origin, photos: corpora.Corpus
    ) -> None:
        r = self.report
        vips = ImageSettings()
        r.line(
            f"\n== throughput: {self.args.images} distinct URLs, JPEG q{vips.quality}, "
            f"optimize_coding={vips.optimize_coding}, {self.threads} threads"
        )
        # raw, service, raw, service, raw...: each service run against the raw runs
        # on either side of it, so load that comes and goes hits both alike.
        raws = [self.raw(photos, vips)]
        runs: list[Throughput] = []
        for _ in range(self.args.repeat):
            runs.append(await self.service(session, origin, photos, "vips"))
            raws.append(self.raw(photos, vips))
        ratios = [
            self.bracketed("raw", before, e2e, after)
            for before, e2e, after in zip(raws, runs, raws[1:], strict=False)
        ]
        self.check_median("end to end / raw libvips (median)", ratios, rep.MIN_SERVICE_RATIO)
        e2e = runs[-1]
        raw_rate = rep.median([raw.rate for raw in raws])
        r.line(
            f"bytes saved end to end: {e2e.saved / MB:.1f} MB of {e2e.bytes_in / MB:.1f} MB "
            f"({e2e.saved / e2e.bytes_in:.0%})"
        )
        self.raw(photos, ImageSettings(optimize_coding=not vips.optimize_coding))
        # For reference: two pipelines leave the cores idle part of the time (libvips
        # waits inside each one); one more thread than cores shows how much.
        self.raw(photos, vips, self.threads + 1)
        if not self.args.no_pillow:
            pillow_raw = self.raw(photos, ImageSettings(engine="pillow"))
            pillow = await self.service(session, origin, photos, "pillow")
            vips_e2e = rep.median([run.rate for run in runs])
            r.line(
                f"libvips/Pillow: raw {raw_rate / pillow_raw.rate:.2f}x, "
                f"end to end {vips_e2e / pillow.rate:.2f}x (libvips: medians of the runs above)"
            )
        peak = max(run.peak_rss_mb or 0 for run in runs)
        r.line(f"service peak RSS (libvips runs): {peak:.0f} MB")

    async def mixed(self, session: aiohttp.ClientSession, origin: Origin) -> None:
        """Issue 13, part 1: the mixed-profile corpus against the minimal libvips path."""
        r = self.report
        mixed = corpora.mixed(self.args.cache)
        vips = ImageSettings()
        count = self.args.mixed_images
        r.line(f"\n== mixed corpus: {mixed.description}")
        r.line(
            "CPU ms per image, one thread; minimal libvips path by step (decode = load + avg,"
            " colour = + icc_transform where the profile is not sRGB, encode = the rest),"
            " then the service's recompress, and without its sRGB shortcut:"
        )
        for step in scenarios.step_costs(mixed, vips, rounds=3):
            r.line(
                f"   {step.kind:34} decode {step.decode_ms:6.1f}  colour {step.colour_ms:5.1f}"
                f"  encode {step.encode_ms:6.1f}  | recompress {step.service_ms:6.1f}"
                f" (sRGB transform not skipped: {step.service_no_skip_ms:6.1f})"
            )
        raws = [self.minimal(mixed, vips, count)]
        ratios = []
        for _ in range(max(1, self.args.repeat - 2)):
            e2e = await scenarios.end_to_end(
                session, self.fresh_dir("e2e-mixed"), origin, mixed, count, {}, self.env
            )
            self.show(e2e)
            raws.append(self.minimal(mixed, vips, count))
            ratios.append(self.bracketed("minimal", raws[-2], e2e, raws[-1]))
        self.check_median(
            "mixed corpus: end to end / minimal libvips (median)", ratios, rep.MIN_MIXED_RATIO
        )

    def minimal(self, corpus: corpora.Corpus, settings: ImageSettings, count: int) -> Throughput:
        result = scenarios.minimal_raw(corpus, count, settings, self.threads)
        self.show(result)
        return result

    async def far(
        self, session: aiohttp.ClientSession, near: Origin, photos: corpora.Corpus, root: Path
    ) -> None:
        """Issue 13, part 2: the same photos from an origin `--far-delay` seconds away."""
        r = self.report
        a = self.args
        r.line(
            f"\n== far origin: {a.far_images} distinct URLs, every image answered "
            f"{a.far_delay:g} s after it is asked for, against the same origin without the delay"
        )
        async with origin_process(root, a.far_delay) as far:

            async def run(origin: Origin, name: str) -> Throughput:
                result = await scenarios.end_to_end(
                    session, self.fresh_dir(name), origin, photos, a.far_images, {}, self.env
                )
                self.show(result)
                return result

            before = await run(near, "e2e-near")
            away = await run(far, "e2e-far")
            after = await run(near, "e2e-near")
        near_rate = (before.rate + after.rate) / 2
        ratio = away.rate / near_rate
        r.check(
            f"origin {a.far_delay:g} s away / near (bracketed)",
            f"{away.rate:.1f} / {near_rate:.1f} img/s = {ratio:.3f}",
            ratio >= rep.MIN_FAR_RATIO,
        )

    async def hostile(self, session: aiohttp.ClientSession, origin: Origin) -> None:
        """Issue 13, part 3: endless bodies and gzip bombs, default settings."""
        n = self.args.hostile
        rounds = 3
        self.report.line(
            f"\n== hostile downloads: {n} endless bodies and {n} gzip bombs (1 MiB inflating to"
            f" 1 GiB) in one request, {rounds} requests in a row, default settings"
        )
        result = await scenarios.hostile(
            session, self.fresh_dir("hostile"), origin, n, rounds, self.env
        )
        self.startups.append(result.startup_seconds)
        reasons = "; ".join(f"{count} x {why!r}" for why, count in result.reasons.items())
        self.report.line(
            f"{result.failed} of {result.images * rounds} failed in {result.seconds:.1f} s "
            f"({reasons}); RSS {result.rss_before_mb:.0f} MB before, peak "
            f"{result.peak_rss_mb:.0f} MB, {result.rss_after_mb:.0f} MB after; slowest GET "
            f"/status {result.status_max_ms:.0f} ms"
        )
        all_failed = result.failed == result.images * rounds and "(none)" not in result.reasons
        self.report.check(
            "hostile downloads: peak RSS, every image failed with its reason, /status < 1 s",
            f"{result.peak_rss_mb:.0f} MB, {result.failed} failed, {result.status_max_ms:.0f} ms",
            all_failed
            and result.peak_rss_mb < rep.MAX_HOSTILE_RSS_MB
            and result.status_max_ms < rep.MAX_HOSTILE_STATUS_MS,
        )

    async def codec(self, photos: corpora.Corpus, root: Path) -> None:
        """Issue 13, part 4: the wheel's libvips (mozjpeg) against the system's, same job."""
        self.report.line(
            "\n== JPEG codec: the photos through imaging.recompress, CPU ms per image on one "
            "thread (3 rounds) and img/s on one thread per core"
        )
        folder = root / "corpus" / photos.name
        results = {}
        for which in ("wheel", "system"):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "csvcompress.bench.codec", which, str(folder),
                stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            found = json.loads(out.decode().strip().splitlines()[-1])
            results[which] = found
            if "error" in found:
                self.report.line(f"{which}: {found['error']}")
                continue
            cpu = ", ".join(f"{ms:.1f}" for ms in found["cpu_ms"])
            self.report.line(
                f"{which}: {found['codec']}: CPU {cpu} ms/img; {found['rate']:.1f} img/s on "
                f"{found['threads']} threads; output digest {found['digest']}"
            )
        wheel, system = results["wheel"], results["system"]
        if "error" not in wheel and "error" not in system:
            same = "the same bytes" if wheel["digest"] == system["digest"] else "DIFFERENT bytes"
            self.report.line(
                f"system/wheel: CPU per image {min(system['cpu_ms']) / min(wheel['cpu_ms']):.2f}"
                f", rate {system['rate'] / wheel['rate']:.2f}x; {same}"
            )

    async def memory(self, session: aiohttp.ClientSession, origin: Origin) -> None:
        big = corpora.big(self.args.cache)
        self.report.line(f"\n== memory: {self.args.big_images} images, {big.description}")
        result = await scenarios.big_images(
            session, self.fresh_dir("big"), origin, big, self.args.big_images, self.env
        )
        self.startups.append(result.startup_seconds)
        self.report.line(
            f"{result.images} images in {result.seconds:.1f} s "
            f"({result.images / result.seconds:.1f} img/s, {result.failed} failed); "
            f"peak RSS after a quarter {result.peak_at_quarter_mb:.0f} MB, "
            f"at the end {result.peak_rss_mb:.0f} MB"
        )
        self.report.check(
            "peak RSS, images up to 24 MP",
            f"{result.peak_rss_mb:.0f} MB (a quarter in: {result.peak_at_quarter_mb:.0f} MB)",
            result.peak_rss_mb < rep.MAX_PEAK_RSS_MB,
        )

    async def upload(self, session: aiohttp.ClientSession) -> None:
        rows = self.args.rows
        per_row = self.args.urls_per_row
        self.report.line(f"\n== upload: {rows:,} rows x {per_row} URLs, and a tenth of that")
        results = []
        for n in (max(1, rows // 10), rows):
            result = await scenarios.big_upload(
                session, self.fresh_dir(f"upload-{n}"), n, per_row, self.env
            )
            self.startups.append(result.startup_seconds)
            results.append(result)
            self.report.line(
                f"{result.rows:>7,} rows, {result.urls:,} URLs, {result.size_bytes / MB:.1f} MB: "
                f"202 in {result.seconds:.2f} s; RSS {result.rss_before_mb:.0f} MB before, "
                f"peak {result.peak_during_mb:.0f} MB during (+{result.growth_mb:.0f} MB)"
            )
        small, large = results
        self.report.check(
            f"{large.rows:,}-row upload answered 202",
            f"{large.seconds:.2f} s",
            large.seconds < rep.MAX_UPLOAD_SECONDS,
        )
        self.report.check(
            "upload memory, 10x the rows",
            f"+{small.growth_mb:.0f} MB -> +{large.growth_mb:.0f} MB",
            large.growth_mb <= small.growth_mb + 10,
        )

    async def latency(
        self, session: aiohttp.ClientSession, origin: Origin, photos: corpora.Corpus
    ) -> None:
        a = self.args
        self.report.line(f"\n== GET /status at {a.status_rate:.0f}/s for {a.status_seconds:.0f} s")
        result = await scenarios.status_latency(
            session,
            self.fresh_dir("latency"),
            origin,
            photos,
            a.status_rate,
            a.status_seconds,
            self.env,
        )
        self.startups.append(result.startup_seconds)
        self.report.line(
            f"{result.sent} sent, {result.answered} answered, {result.errors} errors, "
            f"{result.skipped} skipped (over {scenarios.MAX_OUTSTANDING} outstanding); "
            f"p50 {result.p50_ms:.1f} ms, p90 {result.p90_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
            f"max {result.max_ms:.1f} ms; job still running after: {result.job_running_after}"
        )
        ok = result.p99_ms < rep.MAX_STATUS_P99_MS and not result.errors and not result.skipped
        self.report.check("GET /status p99 while a job runs", f"{result.p99_ms:.1f} ms", ok)

    def startup(self) -> None:
        if not self.startups:
            return
        shown = ", ".join(f"{s:.2f}" for s in self.startups)
        worst = max(self.startups)
        self.report.line(f"\n== start-up to the first request served: {shown} s")
        self.report.check(
            "start-up, worst of all runs", f"{worst:.2f} s", worst < rep.MAX_STARTUP_SECONDS
        )


@contextlib.asynccontextmanager
async def origin_process(root: Path, delay: float = 0.0) -> AsyncIterator[Origin]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "csvcompress.bench.origin", str(root), str(delay),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode().split()
        if len(line) != 2 or line[0] != "PORT":
            raise SystemExit("the origin did not start")
        yield Origin(f"http://127.0.0.1:{line[1]}", proc.pid)
    finally:
        proc.terminate()
        await proc.wait()


async def run(args: argparse.Namespace, sections: Sequence[str], report: Report) -> None:
    report.line(f"machine: {rep.machine()}")
    report.line(f"load average at start: {rep.load_average()}")
    photos = corpora.photos(args.corpus, args.cache)
    report.line(f"corpus: {photos.description}")
    with tempfile.TemporaryDirectory(prefix="csvcompress-bench-") as tmp:
        root = Path(tmp)
        photos.write(root / "corpus")
        if "memory" in sections:
            corpora.big(args.cache).write(root / "corpus")
        if "mixed" in sections:
            corpora.mixed(args.cache).write(root / "corpus")
        bench = Bench(args, root, report)
        async with origin_process(root / "corpus") as origin, aiohttp.ClientSession() as session:
            if "throughput" in sections:
                await bench.throughput(session, origin, photos)
            if "mixed" in sections:
                await bench.mixed(session, origin)
            if "far" in sections:
                await bench.far(session, origin, photos, root / "corpus")
            if "hostile" in sections:
                await bench.hostile(session, origin)
            if "codec" in sections:
                await bench.codec(photos, root)
            if "memory" in sections:
                await bench.memory(session, origin)
            if "upload" in sections:
                await bench.upload(session)
            if "latency" in sections:
                await bench.latency(session, origin, photos)
        bench.startup()
    report.line(f"\nload average at the end: {rep.load_average()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    if args.quick:
        args.images, args.big_images, args.rows, args.repeat = 100, 100, 10_000, 1
        args.mixed_images, args.far_images, args.hostile = 48, 200, 4
        args.status_seconds = min(args.status_seconds, 3.0)
    title = f"{rep.now()}: {rep.cpu_model()}, {WorkerSettings().thread_count} cores"
    if args.quick:
        title += " (--quick: a smoke run)"
    report = Report(title)
    asyncio.run(run(args, sections, report))
    failed = [what for what, _, ok in report.checks if not ok]
    if not args.no_results and not args.quick:
        report.append_to(args.results)
        print(f"\nappended to {args.results}")
    print(f"\n{len(report.checks) - len(failed)} of {len(report.checks)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
