"""Real test images, generated on the fly (nothing downloaded, nothing checked in).

Every function returns encoded bytes. Photos come from `csvcompress.samples`
(shared with the demo and the benchmark): gradients, shaded shapes, a fine
weave and sensor-like grain, so they compress like product photos (about 1.5
bits per pixel at JPEG q90), not like white noise. Results are cached: the
factories are pure, and several tests ask for the same image.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache
from typing import Any

import pyvips
from PIL import ExifTags, Image

from csvcompress.samples import photo  # also used by tests as images.photo

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
BLUE: RGB = (0, 0, 255)

ORIENTATION_TAG = 0x0112


# --- building blocks ----------------------------------------------------------


def solid(color: RGB, width: int = 64, height: int = 64) -> Any:
    """A pyvips.Image of one sRGB colour."""
    return (
        (pyvips.Image.black(width, height) + list(color)).cast("uchar").copy(interpretation="srgb")
    )


def average(image: Any) -> tuple[float, ...]:
    """Mean of each band of a pyvips.Image (handy for colour checks)."""
    return tuple(image.extract_band(i).avg() for i in range(image.bands))


def _pillow_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(photo_jpeg(width, height, quality=95, seed=seed))).convert("RGB")


def _pillow_save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# --- JPEG ---------------------------------------------------------------------


@lru_cache(maxsize=64)
def photo_jpeg(width: int = 2000, height: int = 1500, quality: int = 90, seed: int = 0) -> bytes:
    """A photo-like baseline JPEG, no metadata."""
    data: bytes = photo(width, height, seed).jpegsave_buffer(Q=quality, keep="none")
    return data


@lru_cache(maxsize=16)
def solid_jpeg(color: RGB = RED, width: int = 64, height: int = 64) -> bytes:
    data: bytes = solid(color, width, height).jpegsave_buffer(Q=95, keep="none")
    return data


@lru_cache(maxsize=8)
def grey_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A one-band (greyscale) JPEG."""
    data: bytes = photo(width, height).colourspace("b-w").jpegsave_buffer(Q=90, keep="none")
    return data


@lru_cache(maxsize=8)
def cmyk_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A 4-band CMYK JPEG without an ICC profile (Adobe-inverted, as Photoshop writes it)."""
    return _pillow_save(_pillow_photo(width, height).convert("CMYK"), "JPEG", quality=90)


@lru_cache(maxsize=8)
def solid_cmyk_jpeg(
    color: RGB = RED, width: int = 64, height: int = 64, icc: bool = False
) -> bytes:
    """A CMYK JPEG of one colour.

    Without `icc` the CMYK values are Pillow's naive conversion (red is
    C=0 M=255 Y=255 K=0) and no profile is embedded. With `icc` the colour goes
    through libvips' built-in CMYK profile, which is embedded in the file.
    Either way a print-press "red" shows as about (232, 31, 42) in sRGB, not
    (255, 0, 0): solid magenta + yellow ink is not as saturated as screen red.
    """
    if icc:
        data: bytes = solid(color, width, height).icc_transform("cmyk").jpegsave_buffer(Q=95)
        return data
    cmyk = Image.new("RGB", (width, height), color).convert("CMYK")
    return _pillow_save(cmyk, "JPEG", quality=95)


@lru_cache(maxsize=8)
def solid_p3_jpeg(color: RGB = RED, width: int = 64, height: int = 64) -> bytes:
    """`color` (given in sRGB) stored as Display P3 pixels with the P3 profile embedded.

    SRGB red is (234, 51, 35) in P3 numbers: software that ignores the profile
    shows a dull orange-red; software that applies it shows red.
    """
    data: bytes = solid(color, width, height).icc_transform("p3").jpegsave_buffer(Q=95)
    return data


@lru_cache(maxsize=8)
def jpeg_with_icc_profile(profile: bytes, color: RGB = RED, mode: str = "RGB") -> bytes:
    """A solid JPEG carrying `profile` as-is, even a broken or mismatched one
    (libvips drops those when it writes, Pillow does not)."""
    pixel = Image.new("RGB", (1, 1), color).convert(mode).getpixel((0, 0))
    image = Image.new(mode, (64, 64), pixel)
    return _pillow_save(image, "JPEG", quality=95, icc_profile=profile)


def icc_profile(name: str) -> bytes:
    """One of libvips' built-in ICC profiles: "srgb", "p3", "cmyk"."""
    profile: bytes = solid(RED, 8, 8).icc_transform(name).get("icc-profile-data")
    return profile


@lru_cache(maxsize=8)
def exif_rotated_jpeg(width: int = 300, height: int = 200, orientation: int = 6) -> bytes:
    """A JPEG stored `width` x `height` whose EXIF orientation says how to turn it.

    The stored pixels are red in the left half and blue in the right half, so a
    test can tell which way it was turned: orientation 6 (turn 90 degrees
    clockwise to view) shows red on top and blue below, in portrait.
    """
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return _pillow_save(image, "JPEG", quality=95, exif=exif)


@lru_cache(maxsize=8)
def jpeg_with_gps(width: int = 320, height: int = 240) -> bytes:
    """A JPEG with EXIF camera data and a GPS position (52.37 N, 4.89 E)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Model] = "Leaky 1"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (52.0, 22.0, 12.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (4.0, 53.0, 24.0),
    }
    return _pillow_save(_pillow_photo(width, height), "JPEG", quality=90, exif=exif)


@lru_cache(maxsize=4)
def truncated_jpeg(width: int = 400, height: int = 300) -> bytes:
    """The first half of a valid JPEG, as a dropped connection leaves it."""
    data = photo_jpeg(width, height)
    return data[: len(data) // 2]


# --- other formats ------------------------------------------------------------


@lru_cache(maxsize=8)
def png(width: int = 320, height: int = 240) -> bytes:
    """An 8-bit RGB PNG."""
    data: bytes = photo(width, height).pngsave_buffer(keep="none")
    return data


def _cutout_alpha(width: int, height: int) -> Any:
    """Alpha of a product cut out of its background: an opaque ellipse with a soft
    edge, fully transparent corners."""
    xyz = pyvips.Image.xyz(width, height)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    inside = ((xyz[0] - cx) ** 2 * (1 / (0.45 * width) ** 2)) + (
        (xyz[1] - cy) ** 2 * (1 / (0.45 * height) ** 2)
    ) < 1
    return inside.gaussblur(0.7).cast("uchar")


@lru_cache(maxsize=8)
def png_rgba(width: int = 320, height: int = 240) -> bytes:
    """An RGBA PNG: a photo cut out to an ellipse, corners fully transparent."""
    image = photo(width, height).bandjoin(_cutout_alpha(width, height))
    data: bytes = image.pngsave_buffer(keep="none")
    return data


@lru_cache(maxsize=8)
def png_16bit(width: int = 320, height: int = 240, alpha: bool = False) -> bytes:
    """A 16-bit-per-sample RGB (or RGBA) PNG."""
    image = photo(width, height)
    if alpha:
        image = image.bandjoin(_cutout_alpha(width, height))
    wide = (image.cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16")
    data: bytes = wide.pngsave_buffer(keep="none", bitdepth=16)
    return data


@lru_cache(maxsize=4)
def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A black 1-bit PNG of `width` x `height` pixels that is tiny on the wire.

    40000 x 40000 is 1.6 gigapixels (4.8 GB as 8-bit RGB) in about 195 KB.
    Written with zlib directly: a second, where libvips' own PNG writer needs
    about four.
    """
    row = b"\0" * (1 + -(-width // 8))  # filter byte, then 1 bit per pixel
    rows_per_chunk = max(1, (1 << 20) // len(row))
    compressor = zlib.compressobj(9)
    idat = bytearray()
    for start in range(0, height, rows_per_chunk):
        idat += compressor.compress(row * min(rows_per_chunk, height - start))
    idat += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", bytes(idat))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@lru_cache(maxsize=8)
def webp(width: int = 320, height: int = 240) -> bytes:
    data: bytes = photo(width, height).webpsave_buffer(Q=90, keep="none")
    return data


@lru_cache(maxsize=8)
def avif(width: int = 320, height: int = 240) -> bytes:
    data: bytes = photo(width, height).heifsave_buffer(
        compression="av1", Q=80, effort=0, keep="none"
    )
    return data


@lru_cache(maxsize=8)
def tiff(width: int = 320, height: int = 240) -> bytes:
    data: bytes = photo(width, height).tiffsave_buffer(compression="deflate", keep="none")
    return data


@lru_cache(maxsize=8)
def bmp(width: int = 320, height: int = 240) -> bytes:
    return _pillow_save(_pillow_photo(width, height), "BMP")


_FRAME_COLOURS: tuple[RGB, ...] = ((255, 0, 0), (0, 160, 0), (0, 0, 255), (240, 200, 0))


def _animation_frames(width: int, height: int, frames: int) -> list[Image.Image]:
    """Solid frames of distinct colours, each with a moving white square."""
    images = []
    side = max(1, min(width, height) // 4)
    for i in range(frames):
        frame = Image.new("RGB", (width, height), _FRAME_COLOURS[i % len(_FRAME_COLOURS)])
        left = (i * side) % max(1, width - side)
        frame.paste((255, 255, 255), (left, 0, left + side, side))
        images.append(frame)
    return images


@lru_cache(maxsize=8)
def animated_gif(width: int = 120, height: int = 80, frames: int = 3) -> bytes:
    """An endlessly looping GIF; frame i shows for (i + 1) x 100 ms."""
    first, *rest = _animation_frames(width, height, frames)
    delays = [(i + 1) * 100 for i in range(frames)]
    return _pillow_save(first, "GIF", save_all=True, append_images=rest, duration=delays, loop=0)


@lru_cache(maxsize=8)
def animated_webp(width: int = 120, height: int = 80, frames: int = 3) -> bytes:
    first, *rest = _animation_frames(width, height, frames)
    delays = [(i + 1) * 100 for i in range(frames)]
    return _pillow_save(
        first, "WEBP", save_all=True, append_images=rest, duration=delays, loop=0, quality=90
    )


# --- things that are not images we accept -------------------------------------


def svg() -> bytes:
    """An SVG that references an outside URL (why SVG is refused)."""
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" '
        b'xmlns:xlink="http://www.w3.org/1999/xlink" width="100" height="100">\n'
        b'  <image xlink:href="http://169.254.169.254/latest/meta-data"'
        b' width="100" height="100"/>\n'
        b"</svg>\n"
    )


def html() -> bytes:
    """What many servers send instead of an image: an error or login page."""
    return (
        b"\n<!DOCTYPE html>\n<html lang='en'><head><title>404 Not Found</title></head>\n"
        b"<body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
    )


def heic_header() -> bytes:
    """The first bytes of a HEIC file (this libvips cannot write HEIC to make a real one)."""
    return b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64
