"""Keep glibc from hoarding the big buffers libvips frees.

Measured on the bench's big-image mix (24, 12, 6 and 3 MP photos; 2 pool
threads, the pixel budget on): peak RSS 448 MB with glibc's defaults,
257-266 MB with everything below. glibc gives each thread that allocates
under contention an arena of its own (up to 8 per core), and memory freed in
one arena is not reused by threads on another, so the process kept the sum.

- Buffers of 16 MiB and more (a 12-megapixel image's JPEG coefficients and
  up) are mapped and unmapped, so they go back to the system when freed.
  glibc does this by default only until the first such free, after which its
  threshold rises to 32 MiB. A lower threshold (128 KiB to 8 MiB) cost 15-40%
  more CPU per 3-megapixel image, whose buffers would then be mapped and
  zeroed anew every time; 16 MiB cost nothing measurable.
- Fixing that threshold also fixes the one for trimming the top of a heap at
  its default, 128 KiB, which glibc otherwise raises along with it: each
  3-megapixel image then gave its buffers back and faulted them in again,
  ~2,000 page faults and 5-7 ms of system time per image. It is set to
  16 MiB: ~25 faults and 1.5-2 ms per image (32 MiB measured the same).
- At most two arenas: free memory is shared by all threads instead of
  stranded in one of a dozen. Peak 280-300 MB -> 257-266 MB on the mix; no
  measurable CPU cost (libvips allocates few, large buffers per image).
- Before and after an image of TRIM_AFTER_PIXELS or more, the free memory
  left inside the arenas is handed back (malloc_trim): the big image's own
  buffers are mapped afresh, so whatever other threads freed would otherwise
  stay resident on top of them. About 5% more CPU on those images, none on
  ordinary ones.

Elsewhere than glibc (musl, macOS) all of this is skipped.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024
TRIM_THRESHOLD_BYTES = MMAP_THRESHOLD_BYTES
ARENA_MAX = 2
TRIM_AFTER_PIXELS = 8_000_000


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    return function


_MALLOPT = _libc_function("mallopt")
_MALLOC_TRIM = _libc_function("malloc_trim")


def return_big_buffers() -> bool:
    """Apply the settings above; False where there is no mallopt (not glibc).

    Call it early, before threads start: arenas are made as threads first allocate.
    """
    if _MALLOPT is None:
        return False
    results = (
        _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        _MALLOPT(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        _MALLOPT(M_ARENA_MAX, ARENA_MAX),
    )
    return all(results)


def trim_around(pixels: int) -> None:
    """Hand the arenas' free memory back to the system before and after a big image."""
    if pixels >= TRIM_AFTER_PIXELS and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def trim() -> None:
    """Hand the arenas' free memory back to the system now (after a burst of downloads)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
