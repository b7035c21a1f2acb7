"""Admitting one image: what every engine does before it decodes a pixel.

`ADMISSION` is the list of steps both engines (libvips in `imaging`, Pillow in
`pillow_engine`) run first: `sniff` names the format from the magic bytes and
refuses anything else, `read_header` reads the size from the header alone,
`choose_format` picks the output format (and so the frames to decode),
`check_limits` refuses what is over the pixel and frame limits. The `Context`
they fill, the `Compressed` result every engine returns, the output media types,
the user-facing refusal texts and the process-wide pixel budget live here too,
so that neither engine imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyvips

from csvcompress.config import ImageSettings
from csvcompress.errors import ConfigError, ImageRejected
from csvcompress.pipeline.budget import PixelBudget

# --- reasons a user may see (exact texts) -------------------------------------

REASON_EMPTY = "empty body"
REASON_HTML = "not an image (looks like HTML)"
REASON_TEXT = "not an image (looks like text)"
REASON_SVG = "SVG images are not accepted"
REASON_UNKNOWN = "not a recognised image format"
REASON_CORRUPT = "corrupt or truncated image"

# --- formats ------------------------------------------------------------------

# Output format -> (content type, file extension).
MEDIA: dict[str, tuple[str, str]] = {
    "jpeg": ("image/jpeg", ".jpg"),
    "png": ("image/png", ".png"),
    "webp": ("image/webp", ".webp"),
    "avif": ("image/avif", ".avif"),
    "gif": ("image/gif", ".gif"),
}

# Input format -> the one libvips loader we let read it. Loading through a named
# loader (never `new_from_buffer`, which sniffs) means bytes we identified as
# PNG can only ever reach the PNG decoder, and formats such as SVG, CSV, Matlab
# or the vips native format can never be reached at all.
# BMP has no native libvips loader; it is read only if this libvips build
# carries ImageMagick (the pyvips-binary wheel does not).
_LOADERS: dict[str, str] = {
    "jpeg": "jpegload_buffer",
    "png": "pngload_buffer",
    "webp": "webpload_buffer",
    "gif": "gifload_buffer",
    "avif": "heifload_buffer",
    "heif": "heifload_buffer",
    "tiff": "tiffload_buffer",
    "bmp": "magickload_buffer",
}

# Names used in "... images are not supported" for formats we recognise but
# cannot (or choose not to) read.
_FORMAT_NAMES: dict[str, str] = {
    "bmp": "BMP",
    "jxl": "JPEG XL",
    "jp2": "JPEG 2000",
    "psd": "Photoshop (PSD)",
}

# What "keep" turns each input format into; anything else becomes JPEG.
_KEEP_FORMAT: dict[str, str] = {f: f for f in ("jpeg", "png", "webp", "gif", "avif")}
_FALLBACK_FORMAT = "jpeg"
# Formats that carry animation, in and out.
_ANIMATED_FORMATS = frozenset({"gif", "webp"})

# EXIF orientations that swap width and height.
QUARTER_TURNS = frozenset({5, 6, 7, 8})
# libwebp's "method" (effort), the same for both engines so the benchmark compares
# like with like; why 2, see the encoder notes in imaging.
WEBP_EFFORT = 2


@dataclass(frozen=True)
class Compressed:
    data: bytes
    format: str  # output format: "jpeg" | "png" | "webp" | "avif" | "gif"
    content_type: str  # "image/jpeg", ...
    extension: str  # ".jpg", ".png", ".webp", ".avif", ".gif"
    width: int
    height: int  # height of ONE frame
    frames: int
    input_format: str  # "jpeg", "png", "webp", "gif", "avif", "heif", "tiff", "bmp"


# --- identifying bytes --------------------------------------------------------

_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

_MAGIC: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("jpeg", lambda d: d.startswith(b"\xff\xd8\xff")),
    ("png", lambda d: d.startswith(b"\x89PNG\r\n\x1a\n")),
    ("gif", lambda d: d[:6] in (b"GIF87a", b"GIF89a")),
    ("webp", lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"),
    ("tiff", lambda d: d[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")),
    ("bmp", lambda d: d[:2] == b"BM" and int.from_bytes(d[14:18], "little") in _BMP_HEADER_SIZES),
    ("jxl", lambda d: d.startswith((b"\xff\x0a", b"\0\0\0\x0cJXL \r\n\x87\n"))),
    ("jp2", lambda d: d.startswith(b"\0\0\0\x0cjP  \r\n\x87\n")),
    ("psd", lambda d: d.startswith(b"8BPS")),
)


def _iso_bmff_format(data: bytes) -> str | None:
    """AVIF or HEIF from the `ftyp` box; None for other ISO-BMFF files (MP4, ...)."""
    if data[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(data[:4], "big")
    major = data[8:12]
    brands = {data[i : i + 4] for i in range(16, min(box_size, len(data), 256), 4)}
    if major in _AVIF_BRANDS or (major == b"mif1" and brands & _AVIF_BRANDS):
        return "avif"
    if major in _HEIF_BRANDS or brands & _HEIF_BRANDS:
        return "heif"
    return None


def _sniff(data: bytes) -> str | None:
    """Any format we recognise by its magic bytes, readable here or not."""
    for name, matches in _MAGIC:
        if matches(data):
            return name
    return _iso_bmff_format(data)


def _can_load(fmt: str) -> bool:
    loader = _LOADERS.get(fmt)
    return loader is not None and pyvips.type_find("VipsOperation", loader) != 0


_READABLE = frozenset(fmt for fmt in _LOADERS if _can_load(fmt))


def detect_format(data: bytes) -> str | None:
    """The input format of `data` from its magic bytes, if it is one we accept.

    Returns "jpeg", "png", "webp", "gif", "avif", "heif", "tiff" (and "bmp"
    when this libvips can read it), or None. URL and Content-Type are never
    consulted: servers lie, and the bytes decide which decoder runs.
    """
    fmt = _sniff(data)
    return fmt if fmt in _READABLE else None


_TEXT_SAMPLE = 512
_MARKUP_SAMPLE = 4096
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _looks_like_text(data: bytes) -> bool:
    sample = data[:_TEXT_SAMPLE]
    if b"\0" in sample:
        return False
    text = sample.decode("utf-8", errors="replace")
    bad = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in "\t\n\r\f"))
    return bad * 100 <= len(text)


def _not_an_image_reason(data: bytes) -> str:
    """Why bytes with no image magic are refused: SVG, HTML, other text, or unknown."""
    head = data[:_MARKUP_SAMPLE]
    for bom in _BOMS:
        head = head.removeprefix(bom)
    head = head.lstrip().lower()
    if head.startswith(b"<"):
        is_html = any(marker in head for marker in _HTML_MARKERS)
        if b"<svg" in head and not is_html:
            return REASON_SVG
        if is_html:
            return REASON_HTML
    return REASON_TEXT if _looks_like_text(data) else REASON_UNKNOWN


def _unsupported(fmt: str) -> str:
    return f"{_FORMAT_NAMES.get(fmt, fmt.upper())} images are not supported"


# --- admission ----------------------------------------------------------------


@dataclass
class Context:
    """What the steps share. Sizes are those of one frame, as stored (before
    rotation) unless named otherwise."""

    data: bytes
    settings: ImageSettings
    input_format: str = ""
    target_format: str = ""
    width: int = 0
    height: int = 0
    pages: int = 1  # pages/frames in the file
    frames: int = 1  # frames we decode and write
    orientation: int = 1
    image: Any = None  # pyvips.Image being processed
    result: Compressed | None = None


Step = Callable[[Context], None]


def sniff(ctx: Context) -> None:
    """Refuse empty bodies, markup, text and unknown bytes; name the format."""
    if not ctx.data:
        raise ImageRejected(REASON_EMPTY)
    fmt = _sniff(ctx.data)
    if fmt is None:
        raise ImageRejected(_not_an_image_reason(ctx.data))
    if fmt not in _READABLE:
        raise ImageRejected(_unsupported(fmt))
    ctx.input_format = fmt


def read_header(ctx: Context) -> None:
    """Open the image lazily: libvips parses the header only, no pixel is decoded."""
    header = open_image(ctx, access="sequential")
    ctx.width = header.width
    ctx.height = header.height
    ctx.pages = max(1, get_int(header, "n-pages", 1))
    orientation = get_int(header, "orientation", 1)
    ctx.orientation = orientation if 1 <= orientation <= 8 else 1


def choose_format(ctx: Context) -> None:
    """Pick the output format, and so how many frames we will decode."""
    target = ctx.settings.format
    if target == "keep":
        target = _KEEP_FORMAT.get(ctx.input_format, _FALLBACK_FORMAT)
    if target not in MEDIA:
        raise ConfigError(f"images.format: cannot encode {target!r}")
    ctx.target_format = target
    animated = ctx.input_format in _ANIMATED_FORMATS and target in _ANIMATED_FORMATS
    ctx.frames = ctx.pages if animated else 1


def check_limits(ctx: Context) -> None:
    """Refuse before decoding: too many frames, or too many pixels in all of them."""
    limits = ctx.settings
    if ctx.frames > limits.max_frames:
        raise ImageRejected(
            f"too many frames: {ctx.frames} exceeds the limit of {limits.max_frames}"
        )
    if ctx.width * ctx.height * ctx.frames > limits.max_pixels:
        frames = f" x {ctx.frames} frames" if ctx.frames > 1 else ""
        raise ImageRejected(
            f"image too large: {ctx.width}x{ctx.height} pixels{frames}"
            f" exceeds the limit of {limits.max_pixels}"
        )


ADMISSION: tuple[Step, ...] = (sniff, read_header, choose_format, check_limits)


# --- the pixel budget ---------------------------------------------------------

# Pixels being decoded and encoded at once in this process, by either engine (see
# budget.py); `imaging.configure` sets its limit.
PIXELS = PixelBudget()


def pixels(ctx: Context) -> int:
    """The pixels an admitted image will decode: what it holds of the pixel budget."""
    return ctx.width * ctx.height * ctx.frames


# --- helpers ------------------------------------------------------------------


def open_image(ctx: Context, **options: Any) -> Any:
    """Open with the one loader for the format `sniff` named (never a sniffing one)."""
    loader = getattr(pyvips.Image, _LOADERS[ctx.input_format])
    # "truncated": a cut-off file is an error rather than a grey bottom half;
    # the stricter "error" would also refuse the many real-world JPEGs with
    # harmless warnings such as extraneous bytes before a marker.
    return loader(ctx.data, fail_on="truncated", **options)


def get_int(image: Any, name: str, default: int) -> int:
    """An integer field of a libvips image, or `default` when it has none."""
    return int(image.get(name)) if image.get_typeof(name) != 0 else default
