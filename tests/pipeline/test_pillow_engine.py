"""The Pillow engine (`images.engine = "pillow"`), the benchmark's reference point.

It must do the same work as the libvips engine on the benchmark's photos, or
the comparison would flatter one side: same size, same quality, upright, no
metadata, and the same refusals before decoding.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest
import pyvips

from csvcompress.config import ImageSettings
from csvcompress.errors import ImageRejected
from csvcompress.pipeline import imaging
from tests import images

PILLOW = ImageSettings(engine="pillow")


def run(data: bytes, **changes: Any) -> imaging.Compressed:
    return imaging.recompress(data, dataclasses.replace(PILLOW, **changes))


def test_a_photo_is_recompressed_like_the_libvips_engine_does() -> None:
    source = images.photo_jpeg(800, 600, seed=3)
    pillow = run(source)
    vips = imaging.recompress(source, ImageSettings())

    image = pyvips.Image.new_from_buffer(pillow.data, "")
    assert image.get("vips-loader") == "jpegload_buffer"
    assert (pillow.format, pillow.content_type, pillow.extension) == (
        "jpeg",
        "image/jpeg",
        ".jpg",
    )
    assert (image.width, image.height) == (pillow.width, pillow.height) == (800, 600)
    # Same quality, same subsampling and Huffman optimisation: sizes within 15%.
    assert abs(len(pillow.data) - len(vips.data)) < 0.15 * len(vips.data)
    assert len(pillow.data) < len(source) / 2


def test_exif_orientation_is_applied_and_metadata_removed() -> None:
    result = run(images.exif_rotated_jpeg(300, 200, 6), quality=90)
    image = pyvips.Image.new_from_buffer(result.data, "")
    assert (image.width, image.height) == (200, 300)
    # Turned clockwise: the red left half is now on top.
    assert all(abs(a - e) <= 40 for a, e in zip(image.getpoint(100, 10), images.RED, strict=True))
    gps = run(images.jpeg_with_gps())
    assert b"Exif" not in gps.data and b"TestCam" not in gps.data


def test_scale_shrinks_upright_dimensions() -> None:
    result = run(images.exif_rotated_jpeg(300, 200, 6), scale=0.5)
    assert (result.width, result.height) == (100, 150)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (images.html(), imaging.REASON_HTML),
        (images.truncated_jpeg()[:40], imaging.REASON_CORRUPT),
    ],
)
def test_refusals_are_the_same_as_the_libvips_engine(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as info:
        run(data)
    assert info.value.message.startswith(reason)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="image too large: 800x600 pixels"):
        run(images.photo_jpeg(800, 600), max_pixels=1000)


@pytest.mark.parametrize(
    ("imported", "absent"),
    [
        # Both engines build on admission; the Pillow engine does not import the libvips one.
        ("csvcompress.pipeline.pillow_engine", "csvcompress.pipeline.imaging"),
        # Pillow is a benchmark-only dependency, imported when the engine is chosen.
        ("csvcompress.app", "PIL"),
    ],
)
def test_what_an_import_does_not_bring_in(imported: str, absent: str) -> None:
    probe = f"import sys, {imported}; assert {absent!r} not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=30)
