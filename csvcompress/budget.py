"""A cap on the pixels being decoded and encoded at once, across the CPU threads.

An image's working memory grows with its pixels, and more than one might think:
JPEG output with optimised Huffman tables (`images.optimize_coding`) makes
libjpeg keep the whole image's DCT coefficients before writing, measured at
about 6.5 bytes per pixel with the libvips wheel's mozjpeg (160 MB for one
24-megapixel photo). Two such photos at once on two threads is 320 MB, so the
pool threads share a budget: a thread whose image would take the total over it
waits until enough pixels are released. An image larger than the whole budget
runs alone. Product photos of ordinary size never wait.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class PixelBudget:
    def __init__(self, limit: int = 0) -> None:
        self._limit = limit  # 0: no limit
        self._used = 0
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    def set_limit(self, limit: int) -> None:
        with self._changed:
            self._limit = limit
            self._changed.notify_all()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Block until `pixels` fit in the budget, and keep them for the `with` block."""
        with self._changed:
            self._changed.wait_for(lambda: self._fits(pixels))
            self._used += pixels
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()

    def _fits(self, pixels: int) -> bool:
        return not self._limit or not self._used or self._used + pixels <= self._limit
