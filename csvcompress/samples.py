"""Photo-like sample images made on the spot, for the demo and the benchmark.

Smooth gradients, waves, soft texture and fine grain: they compress the way
product photos do, unlike flat colour (too easy) or white noise (too hard).
"""

from __future__ import annotations

import pyvips


def photo(width: int, height: int, seed: int = 0) -> pyvips.Image:
    xy = pyvips.Image.xyz(width, height)
    x, y = xy[0], xy[1]
    xs, ys = x / width, y / height
    waves = (x * (0.9 + seed % 5 * 0.2) + seed * 37).sin() * (y * 0.7 + seed * 11).cos() * 22
    texture = pyvips.Image.gaussnoise(width, height, sigma=40, mean=0, seed=seed).gaussblur(3)
    grain = pyvips.Image.gaussnoise(width, height, sigma=6, mean=0, seed=seed + 1)
    shade = waves + texture + grain
    red = xs * 150 + 50 + shade
    green = ys * 140 + 40 + shade
    blue = (1 - xs) * 90 + ys * 60 + 50 + shade
    return red.bandjoin([green, blue]).cast("uchar").copy(interpretation="srgb")


def photo_jpeg(width: int = 2000, height: int = 1500, seed: int = 0, quality: int = 90) -> bytes:
    data: bytes = photo(width, height, seed).jpegsave_buffer(Q=quality)
    return data
