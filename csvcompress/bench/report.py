"""The machine, the figures against the targets, and bench/results.md."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from csvcompress.config import WorkerSettings
from csvcompress.pipeline import codec

# The targets.
MIN_SERVICE_RATIO = 0.90
MAX_PEAK_RSS_MB = 300.0
MAX_UPLOAD_SECONDS = 3.0
MAX_STATUS_P99_MS = 20.0
MAX_STARTUP_SECONDS = 1.0
# Issue 13.
MIN_MIXED_RATIO = 0.90
MIN_FAR_RATIO = 0.90
MAX_HOSTILE_RSS_MB = 400.0
MAX_HOSTILE_STATUS_MS = 1000.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    try:
        from PIL import __version__ as pillow
    except ImportError:  # pragma: no cover - Pillow comes with the bench extra
        pillow = "absent"
    cores = WorkerSettings().thread_count
    python = platform.python_version()
    return f"{cpu_model()}, {cores} cores; Python {python}, {codec.detect()}, Pillow {pillow}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


@dataclass
class Report:
    """Lines printed as they come, kept for the results file."""

    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, bool]] = field(default_factory=list)

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def check(self, what: str, figure: str, ok: bool) -> None:
        self.checks.append((what, figure, ok))
        self.line(f"  -> {what}: {figure}  {verdict(ok)}")

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "```", *self.lines, "```", ""]
        if self.checks:
            out += ["| target | measured | |", "| --- | --- | --- |"]
            out += [f"| {what} | {figure} | {verdict(ok)} |" for what, figure, ok in self.checks]
            out.append("")
        return "\n".join(out) + "\n"

    def append_to(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("# Benchmark results\n\nAppended by `make bench`, newest last.\n\n")
        with path.open("a") as f:
            f.write(self.markdown())


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
