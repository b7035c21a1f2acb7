"""The JPEG codec's share: the same job on the wheel's libvips and on the system's.

`python -m csvcompress.bench.codec wheel|system DIR` recompresses the JPEGs in DIR
with `imaging.recompress` (the service's settings), one thread and then one per
core, and prints one JSON line: which libvips and JPEG library ran, CPU per image,
the rate, and a digest of the output bytes (the same digest on both means the same
files). "system" hides the wheel's compiled module from pyvips before importing it,
so pyvips opens the system's libvips.so.42, as it does when pyvips-binary is not
installed; it fails, saying so, when there is no system libvips.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

ROUNDS = 3


def main() -> int:
    which, folder = sys.argv[1], Path(sys.argv[2])
    if which == "system":
        sys.modules["_libvips"] = None  # type: ignore[assignment]
    try:
        import pyvips
    except OSError as exc:
        print(json.dumps({"error": f"no system libvips: {exc}"}))
        return 0
    from csvcompress.config import ImageSettings, WorkerSettings
    from csvcompress.pipeline import codec, cpupool, imaging

    settings = ImageSettings()
    files = [p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".jpg"]
    imaging.configure(concurrency=1, pixel_budget=WorkerSettings().pixel_budget)
    pyvips.concurrency_set(1)
    digest = hashlib.sha256(b"".join(imaging.recompress(d, settings).data for d in files))
    one = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for data in files:
            imaging.recompress(data, settings)
        one.append((time.process_time() - started) * 1000 / len(files))
    threads = WorkerSettings().thread_count
    batch = files * 8
    with cpupool.create(WorkerSettings(threads=threads)) as pool:
        started = time.perf_counter()
        list(pool.map(lambda d: imaging.recompress(d, settings), batch))
        rate = len(batch) / (time.perf_counter() - started)
    print(
        json.dumps(
            {
                "codec": str(codec.detect()),
                "cpu_ms": sorted(one),
                "rate": rate,
                "threads": threads,
                "digest": digest.hexdigest()[:16],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
