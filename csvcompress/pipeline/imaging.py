"""Recompress one image with libvips: a synchronous pipeline of small steps.

`recompress(data, settings)` runs in a worker thread (never on the event loop).
It identifies the bytes by their magic numbers, reads only the header, refuses
anything over the pixel/frame limits *before* decoding a single pixel, then
decodes, rotates upright, scales, converts to 8-bit sRGB, flattens alpha where
the output cannot carry it, and encodes with every piece of metadata stripped.

Each step takes the `Context` and returns early when it has nothing to do; the
pipeline is the plain list `PIPELINE`. Every refusal is an `ImageRejected`
whose message a user can read; the exact texts are the `REASON_*` constants
and the f-strings in `_vips_reason`, `_unsupported` and `check_limits`.

Format decisions:
- "keep" keeps JPEG, PNG, WebP, GIF and AVIF; anything we can read but not
  write (TIFF, HEIC/HEIF, BMP where loadable) becomes JPEG.
- An animated GIF or WebP stays animated when the output is GIF or WebP (WebP
  can animate, so forcing webp keeps every frame); forced to JPEG, PNG or AVIF
  only the first frame is kept, and only that frame counts against the limits.
- Multi-page TIFF and HEIF: the first (HEIF: primary) image only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyvips

from csvcompress.config import ImageSettings
from csvcompress.errors import ConfigError, ImageRejected
from csvcompress.pipeline import memory
from csvcompress.pipeline.budget import PixelBudget

__all__ = ["Compressed", "configure", "detect_format", "recompress"]

# --- reasons a user may see (exact texts) -------------------------------------

REASON_EMPTY = "empty body"
REASON_HTML = "not an image (looks like HTML)"
REASON_TEXT = "not an image (looks like text)"
REASON_SVG = "SVG images are not accepted"
REASON_UNKNOWN = "not a recognised image format"
REASON_CORRUPT = "corrupt or truncated image"

# --- libvips set-up -----------------------------------------------------------


# Pixels being decoded and encoded at once in this process (see budget.py).
PIXELS = PixelBudget()


def configure(concurrency: int | None = None, pixel_budget: int | None = None) -> None:
    """Set process-wide libvips options; safe to call more than once.

    The operation cache is turned off: it exists to reuse results when the same
    operation runs again on the same input (image editors, thumbnail servers
    seeing one URL many times). We decode every image once and throw it away,
    so a cache would only hold on to decoded buffers and file handles — memory
    that grows with traffic for no hit.

    `concurrency` is the number of threads libvips uses inside one pipeline
    (default: one per core). When a thread pool already runs one image per
    core, 1 avoids oversubscription: on 2 cores with 2 pool threads it measured
    at least as fast as the default (clearly faster for random-access loads).

    `pixel_budget` caps the pixels decoded at once across all threads (0: no cap),
    and big freed buffers go back to the system at once (see memory.py).
    """
    memory.return_big_buffers()
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    if concurrency is not None:
        pyvips.concurrency_set(concurrency)
    if pixel_budget is not None:
        PIXELS.set_limit(pixel_budget)


configure()

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

# EXIF orientations that swap width and height, and those libvips can apply
# while streaming (1: none, 2: mirror left-right); the others read the image
# out of order and need random access.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_STREAMABLE_ORIENTATIONS = frozenset({1, 2})

# Encoder choices, measured on a 2000x1500 photo-like image, one core:
# - JPEG is baseline, not progressive: progressive doubled the encode time
#   (about 48 ms against 26 ms) and came out 3% larger at this size.
# - WebP effort 2 (libwebp "method"): ~110 ms and under 10% larger than the
#   default effort 4, which took 250-380 ms.
# - AVIF effort 1: ~0.25 s. The default effort 4 took 3-4 s per image for
#   about 25% fewer bytes, too slow for a batch service; effort 2 came out
#   larger than effort 1 with this libaom, effort 0 larger still on smooth
#   images.
# - PNG keeps libvips' default quantisation effort (7): on a 1 MP cut-out it
#   cost ~230 ms against ~170 ms at effort 4, for files 30% smaller.
WEBP_EFFORT = 2
AVIF_EFFORT = 1
# libvips JPEG shrink-on-load factors; we leave at least this much of the
# shrink to the resize kernel, because DCT scaling alone aliases.
_JPEG_SHRINKS = (8, 4, 2)
_RESIZE_HEADROOM = 2
_WHITE = 255
_MAX_REASON_CHARS = 200

if pyvips.at_least_libvips(8, 15):
    _STRIP: dict[str, Any] = {"keep": "none"}
else:  # pragma: no cover - pyvips-binary ships 8.15+
    _STRIP = {"strip": True}


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


# --- the pipeline -------------------------------------------------------------


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
    header = _open(ctx, access="sequential")
    ctx.width = header.width
    ctx.height = header.height
    ctx.pages = max(1, _get_int(header, "n-pages", 1))
    orientation = _get_int(header, "orientation", 1)
    ctx.orientation = orientation if 1 <= orientation <= 8 else 1


def choose_format(ctx: Context) -> None:
    """Pick the output format, and so how many frames we will decode."""
    target = ctx.settings.format
    if target == "keep":
        target = _KEEP_FORMAT.get(ctx.input_format, _FALLBACK_FORMAT)
    if target not in _ENCODERS:
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


def load(ctx: Context) -> None:
    """Open for decoding: all frames if animated, JPEG shrink-on-load if scaling.

    Sequential access streams the image top to bottom through the whole
    pipeline, the fastest path; rotations and frame splitting read out of
    order, so those images are opened for random access.
    """
    streamable = ctx.frames == 1 and ctx.orientation in _STREAMABLE_ORIENTATIONS
    options: dict[str, Any] = {"access": "sequential" if streamable else "random"}
    if ctx.frames > 1:
        options["n"] = ctx.frames
    shrink = _jpeg_shrink(ctx.settings.scale) if ctx.input_format == "jpeg" else 1
    if shrink > 1:
        options["shrink"] = shrink
    ctx.image = _open(ctx, **options)


def autorotate(ctx: Context) -> None:
    """Apply the EXIF orientation so the pixels are upright; drops the tag."""
    if ctx.orientation == 1:
        return
    ctx.image = _each_frame(ctx.image, lambda frame: frame.autorot())


def scale(ctx: Context) -> None:
    """Resize to `scale` x the original size (after any shrink-on-load)."""
    if ctx.settings.scale >= 1:
        return
    width, height = _scaled(ctx.width, ctx.height, ctx.settings.scale)
    if ctx.orientation in _QUARTER_TURNS:
        width, height = height, width
    image = ctx.image
    frame_width, frame_height = image.width, _frame_height(image)
    if (frame_width, frame_height) == (width, height):
        return
    hscale, vscale = width / frame_width, height / frame_height
    ctx.image = _each_frame(image, lambda frame: _resize(frame, hscale, vscale))


def to_srgb(ctx: Context) -> None:
    """8-bit sRGB (or 8-bit grey): apply an embedded ICC profile, else convert
    by interpretation (CMYK uses libvips' built-in CMYK profile)."""
    image = ctx.image
    if image.get_typeof("icc-profile-data") != 0:
        image = image.icc_transform("srgb", embedded=True, depth=8)
    space = "b-w" if image.interpretation in ("b-w", "grey16") else "srgb"
    if image.interpretation != space or image.format != "uchar":
        image = image.colourspace(space)
    if image.format != "uchar":
        image = image.cast("uchar")
    ctx.image = image


def flatten(ctx: Context) -> None:
    """JPEG has no alpha: composite transparent pixels onto white."""
    image = ctx.image
    if ctx.target_format != "jpeg" or not image.hasalpha():
        return
    ctx.image = image.flatten(background=[_WHITE] * (image.bands - 1))


def encode(ctx: Context) -> None:
    """Write the output; this is where libvips actually decodes the pixels."""
    image = ctx.image
    fmt = ctx.target_format
    data = _ENCODERS[fmt](image, ctx.settings)
    content_type, extension = MEDIA[fmt]
    ctx.result = Compressed(
        data=data,
        format=fmt,
        content_type=content_type,
        extension=extension,
        width=image.width,
        height=_frame_height(image),
        frames=ctx.frames,
        input_format=ctx.input_format,
    )


PIPELINE: tuple[Step, ...] = (
    sniff,
    read_header,
    choose_format,
    check_limits,
    load,
    autorotate,
    scale,
    to_srgb,
    flatten,
    encode,
)


def recompress(data: bytes, settings: ImageSettings) -> Compressed:
    """Recompress one image. Synchronous and CPU-bound: call it from a thread pool.

    Raises ImageRejected with a short, user-facing reason.
    """
    if settings.engine == "pillow":
        from csvcompress.pipeline import pillow_engine  # Pillow is a benchmark-only dependency

        return pillow_engine.recompress(data, settings)
    ctx = Context(data=data, settings=settings)
    _run(ctx, PIPELINE[:_DECODING])
    try:
        with PIXELS.hold(pixels(ctx)):
            memory.trim_around(pixels(ctx))
            _run(ctx, PIPELINE[_DECODING:])
    finally:
        memory.trim_around(pixels(ctx))
    assert ctx.result is not None
    return ctx.result


# The steps before `load` read the header only; from there on pixels take memory.
_DECODING = PIPELINE.index(load)


def pixels(ctx: Context) -> int:
    """The pixels an admitted image will decode: what it holds of the pixel budget."""
    return ctx.width * ctx.height * ctx.frames


def _run(ctx: Context, steps: tuple[Step, ...]) -> None:
    for step in steps:
        try:
            step(ctx)
        except pyvips.Error as exc:
            raise ImageRejected(_vips_reason(ctx, step, exc)) from exc


# --- encoders -----------------------------------------------------------------


def _save_jpeg(image: Any, settings: ImageSettings) -> bytes:
    return _save(
        image.jpegsave_buffer,
        Q=settings.quality,
        optimize_coding=settings.optimize_coding,
        interlace=False,
    )


def _save_png(image: Any, settings: ImageSettings) -> bytes:
    return _save(image.pngsave_buffer, palette=True, Q=settings.quality)


def _save_webp(image: Any, settings: ImageSettings) -> bytes:
    return _save(image.webpsave_buffer, Q=settings.quality, effort=WEBP_EFFORT)


def _save_avif(image: Any, settings: ImageSettings) -> bytes:
    return _save(
        image.heifsave_buffer,
        compression="av1",
        Q=settings.quality,
        effort=AVIF_EFFORT,
        bitdepth=8,
    )


def _save_gif(image: Any, settings: ImageSettings) -> bytes:
    # Frames, page-height, delays and loop count travel with the image.
    return _save(image.gifsave_buffer)


def _save(saver: Callable[..., Any], **options: Any) -> bytes:
    """Call a libvips saver with all metadata (EXIF, GPS, XMP, ICC, ...) stripped."""
    data: bytes = saver(**options, **_STRIP)
    return data


_ENCODERS: dict[str, Callable[[Any, ImageSettings], bytes]] = {
    "jpeg": _save_jpeg,
    "png": _save_png,
    "webp": _save_webp,
    "avif": _save_avif,
    "gif": _save_gif,
}

# --- helpers ------------------------------------------------------------------


def _open(ctx: Context, **options: Any) -> Any:
    loader = getattr(pyvips.Image, _LOADERS[ctx.input_format])
    # "truncated": a cut-off file is an error rather than a grey bottom half;
    # the stricter "error" would also refuse the many real-world JPEGs with
    # harmless warnings such as extraneous bytes before a marker.
    return loader(ctx.data, fail_on="truncated", **options)


def _get_int(image: Any, name: str, default: int) -> int:
    return int(image.get(name)) if image.get_typeof(name) != 0 else default


def _frame_height(image: Any) -> int:
    page_height = _get_int(image, "page-height", image.height)
    return page_height if 0 < page_height <= image.height else int(image.height)


def _each_frame(image: Any, operation: Callable[[Any], Any]) -> Any:
    """Apply `operation` to every frame of a (possibly animated) image.

    Animated images are one tall strip of frames; rotating or resizing the strip
    as a whole would mix neighbouring frames, so each frame is done on its own.
    """
    frame_height = _frame_height(image)
    count = image.height // frame_height
    if count <= 1:
        return operation(image)
    frames = [
        operation(image.crop(0, i * frame_height, image.width, frame_height)) for i in range(count)
    ]
    joined = pyvips.Image.arrayjoin(frames, across=1).copy()
    joined.set_type(pyvips.GValue.gint_type, "page-height", frames[0].height)
    return joined


def _jpeg_shrink(scale: float) -> int:
    for shrink in _JPEG_SHRINKS:
        if shrink * _RESIZE_HEADROOM <= 1 / scale:
            return shrink
    return 1


def _scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: Any, hscale: float, vscale: float) -> Any:
    if not image.hasalpha():
        return image.resize(hscale, vscale=vscale)
    # Resize with premultiplied alpha, or transparent pixels bleed dark fringes.
    band_format = image.format
    resized = image.premultiply().resize(hscale, vscale=vscale)
    return resized.unpremultiply().cast(band_format)


# Lines libvips adds around the real cause of a failure.
_NOISE = ("source: bad seek", ": load error", "unable to open source")
_DOMAIN = re.compile(r"^[\w.]+: ")
_ERROR_CODE = re.compile(r"\s*\(\d+(\.\d+)*\)$")  # libheif's "(2.100)"


def _vips_reason(ctx: Context, step: Step, exc: pyvips.Error) -> str:
    """One short line for a user from a libvips error (never the full dump)."""
    detail = str(getattr(exc, "detail", "") or "")
    message = str(getattr(exc, "message", "") or exc).strip()
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    useful = [line for line in lines if not any(noise in line for noise in _NOISE)]
    cause = _DOMAIN.sub("", (useful or lines or [message])[0])
    cause = _ERROR_CODE.sub("", cause)[:_MAX_REASON_CHARS]
    # Pixels are decoded lazily, while the encoder pulls them, so most errors
    # raised by `encode` are still the input's fault; only a saver naming
    # itself ("heifsave: ...") is an encoding failure.
    if step is encode and any("save" in line for line in lines):
        return f"could not encode image as {ctx.target_format}: {cause}"
    return f"{REASON_CORRUPT}: {cause}"
