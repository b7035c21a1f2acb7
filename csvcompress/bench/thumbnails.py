"""What the page's thumbnails cost: made while processing, or lazily on first view.

    .venv/bin/python -m csvcompress.bench.thumbnails [--images 60] [--size 2000x1500]

For each generated photo, one at a time, the process's CPU time (libvips threads included) of:
- the job's own work: `imaging.recompress` with the default settings;
- "eager": both thumbnails made while the image is in memory (the "before" from the
  downloaded bytes, the "after" from the output), as the processor does;
- "lazy", on the first view of the page: the output read back from disk and the
  original fetched again from its origin (a loopback HTTP server here; a real origin is
  farther, and may be gone), then the same two thumbnails.
Prints the figures as a Markdown table for bench/results.md.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from csvcompress import samples
from csvcompress.config import ImageSettings
from csvcompress.pipeline import imaging, thumbnails

LIMIT = ImageSettings().max_pixels


def _cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of the process, libvips' own threads included; wall seconds) of fn."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _origin(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", default="2000x1500")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    settings = ImageSettings()
    rows: dict[str, list[float]] = {"job": [], "eager": [], "lazy": [], "lazy_wall": []}
    sizes: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, origin = _origin(folder)
        try:
            for n in range(args.images):
                data = samples.photo_jpeg(width, height, seed=n)
                (folder / f"{n}.jpg").write_bytes(data)
                result: list[imaging.Compressed] = []

                def job(data: bytes = data, result: list[imaging.Compressed] = result) -> None:
                    result.append(imaging.recompress(data, settings))

                rows["job"].append(_cpu(job)[0])
                output = result[0].data
                (folder / f"{n}.out").write_bytes(output)

                def eager(before: bytes = data, after: bytes = output) -> None:
                    made = [thumbnails.make(before, LIMIT), thumbnails.make(after, LIMIT)]
                    sizes.extend(len(t) for t in made)

                rows["eager"].append(_cpu(eager)[0])

                def lazy(n: int = n) -> None:
                    with urllib.request.urlopen(f"{origin}/{n}.jpg") as resp:
                        before = resp.read()
                    thumbnails.make(before, LIMIT)
                    thumbnails.make((folder / f"{n}.out").read_bytes(), LIMIT)

                cpu, wall = _cpu(lazy)
                rows["lazy"].append(cpu)
                rows["lazy_wall"].append(wall)
        finally:
            server.shutdown()
    job_cpu = statistics.median(rows["job"])
    eager_ms = statistics.median(rows["eager"])
    lazy_ms = statistics.median(rows["lazy"])
    print(
        f"{args.images} photos of {width}x{height}, one at a time, medians per image"
        " (CPU of the whole process, libvips threads included):\n"
    )
    print("| | CPU ms per image | share of the job's CPU |")
    print("| --- | --- | --- |")
    print(f"| the job: recompress | {job_cpu * 1000:.1f} | 100% |")
    print(
        f"| eager: both thumbnails while in memory | {eager_ms * 1000:.2f}"
        f" | {eager_ms / job_cpu:.1%} |"
    )
    print(
        f"| lazy, first view: refetch the original + read the output + both thumbnails"
        f" | {lazy_ms * 1000:.2f} (wall {statistics.median(rows['lazy_wall']) * 1000:.1f}) |"
        " 0% of the job; paid on the first view |"
    )
    print(
        f"\nthumbnails: median {statistics.median(sizes)} bytes, largest {max(sizes)} bytes;"
        f" a 100-image page's 200 thumbnails ~{statistics.median(sizes) * 200 / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
