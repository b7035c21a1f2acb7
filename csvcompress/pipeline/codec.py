"""Which libvips this process runs, and which JPEG library it was built with.

The pyvips[binary] wheel (the default install) bundles libvips built on mozjpeg.
A system libvips (Debian's `libvips42`) is built on libjpeg-turbo, which encodes
the same baseline JPEG, byte for byte, with less CPU at our settings (see
bench/results.md and the README's Performance section). pyvips uses the wheel
whenever it is installed (its compiled `_libvips` module links the bundled
library); without the wheel it opens the system's `libvips.so.42`.

The JPEG library is told by what it does, not by its name: mozjpeg honours
`trellis_quant` (the output changes), libjpeg-turbo has no such thing.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import pyvips

log = logging.getLogger(__name__)

_PROBE_SIZE = 64
_MAPS = Path("/proc/self/maps")


@dataclass(frozen=True)
class Codec:
    libvips: str  # "8.18.7"
    source: str  # "pyvips-binary wheel", "system library /usr/lib/...", ...
    jpeg: str  # "mozjpeg" or "libjpeg-turbo (or another libjpeg)"

    def __str__(self) -> str:
        return f"libvips {self.libvips} ({self.source}), JPEG by {self.jpeg}"


@functools.cache
def detect() -> Codec:
    version = ".".join(str(pyvips.version(i)) for i in range(3))
    return Codec(libvips=version, source=_source(), jpeg=_jpeg_library())


def log_in_use() -> None:
    log.info("images: %s", detect())


def _source() -> str:
    path = _loaded_libvips()
    if path is None:
        return "library path unknown"
    if "pyvips_binary" in path:
        return "pyvips-binary wheel"
    return f"system library {path}"


def _loaded_libvips() -> str | None:
    try:
        lines = _MAPS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
        if "libvips" in Path(path).name and ".so" in path and "cpp" not in path:
            return path
    return None


def _jpeg_library() -> str:
    gradient = pyvips.Image.xyz(_PROBE_SIZE, _PROBE_SIZE).extract_band(0)
    image = (gradient * 3 + gradient.rot90() % 17).cast("uchar")
    strip = {"keep": "none"} if pyvips.at_least_libvips(8, 15) else {"strip": True}
    try:
        plain = image.jpegsave_buffer(Q=50, **strip)
        trellis = image.jpegsave_buffer(Q=50, trellis_quant=True, **strip)
    except pyvips.Error:
        return "unknown"
    return "mozjpeg" if plain != trellis else "libjpeg-turbo (or another libjpeg)"
