"""Recompress one image with libvips: a synchronous pipeline of small steps.

`recompress(data, settings)` runs in a worker thread (never on the event loop).
It identifies the bytes by their magic numbers, reads only the header, refuses
anything over the pixel/frame limits *before* decoding a single pixel, then
decodes, rotates upright, scales, converts to 8-bit sRGB, flattens alpha where
the output cannot carry it, and encodes with every piece of metadata stripped.

Each step takes the `Context` and returns early when it has nothing to do; the
pipeline is the plain list `PIPELINE`: admission's steps (identify, header,
format, limits; see admission.py), then decoding to encoding here. Every refusal
is an `ImageRejected` whose message a user can read; the exact texts are the
`REASON_*` constants and the f-strings in `_vips_reason` and admission's
`_unsupported` and `check_limits`.

`images.engine = "pillow"` hands the image to `pillow_engine` instead, imported
only then (Pillow is a benchmark-only dependency). Both engines build on
`admission`, and the Pillow engine does not import this module: no cycle.

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
from typing import Any

import pyvips

from csvcompress.config import ImageSettings
from csvcompress.errors import ImageRejected
from csvcompress.pipeline import colour, memory
from csvcompress.pipeline.admission import (
    ADMISSION,
    MEDIA,
    PIXELS,
    QUARTER_TURNS,
    REASON_CORRUPT,
    REASON_EMPTY,
    REASON_HTML,
    REASON_SVG,
    REASON_TEXT,
    REASON_UNKNOWN,
    WEBP_EFFORT,
    Compressed,
    Context,
    Step,
    detect_format,
    get_int,
    open_image,
    pixels,
)

# What callers use of one image's recompression, wherever it is defined.
__all__ = [
    "MEDIA",
    "PIXELS",
    "REASON_CORRUPT",
    "REASON_EMPTY",
    "REASON_HTML",
    "REASON_SVG",
    "REASON_TEXT",
    "REASON_UNKNOWN",
    "Compressed",
    "configure",
    "detect_format",
    "recompress",
]

# --- libvips set-up -----------------------------------------------------------


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

# EXIF orientations libvips can apply while streaming (1: none, 2: mirror
# left-right); the others read the image out of order and need random access.
_STREAMABLE_ORIENTATIONS = frozenset({1, 2})

# Encoder choices, measured on a 2000x1500 photo-like image, one core:
# - JPEG is baseline, not progressive: progressive doubled the encode time
#   (about 48 ms against 26 ms) and came out 3% larger at this size.
# - WebP effort 2 (libwebp "method", WEBP_EFFORT in admission, shared with the
#   Pillow engine): ~110 ms and under 10% larger than the default effort 4,
#   which took 250-380 ms.
# - AVIF effort 1: ~0.25 s. The default effort 4 took 3-4 s per image for
#   about 25% fewer bytes, too slow for a batch service; effort 2 came out
#   larger than effort 1 with this libaom, effort 0 larger still on smooth
#   images.
# - PNG keeps libvips' default quantisation effort (7): on a 1 MP cut-out it
#   cost ~230 ms against ~170 ms at effort 4, for files 30% smaller.
AVIF_EFFORT = 1
# libvips JPEG shrink-on-load factors; we leave at least this much of the
# shrink to the resize kernel, because DCT scaling alone aliases.
_JPEG_SHRINKS = (8, 4, 2)
_RESIZE_HEADROOM = 2
_WHITE = 255
# What the sRGB-profile shortcut applies to: 8-bit RGB, with or without alpha.
_RGB_BANDS = (3, 4)
_RGB_INTERPRETATIONS = frozenset({"srgb", "rgb"})
_MAX_REASON_CHARS = 200

if pyvips.at_least_libvips(8, 15):
    _STRIP: dict[str, Any] = {"keep": "none"}
else:  # pragma: no cover - pyvips-binary ships 8.15+
    _STRIP = {"strip": True}


# --- the pipeline -------------------------------------------------------------
# The first steps, up to the limits, are admission's (shared with the Pillow engine).


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
    ctx.image = open_image(ctx, **options)


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
    if ctx.orientation in QUARTER_TURNS:
        width, height = height, width
    image = ctx.image
    frame_width, frame_height = image.width, _frame_height(image)
    if (frame_width, frame_height) == (width, height):
        return
    hscale, vscale = width / frame_width, height / frame_height
    ctx.image = _each_frame(image, lambda frame: _resize(frame, hscale, vscale))


def to_srgb(ctx: Context) -> None:
    """8-bit sRGB (or 8-bit grey): apply an embedded ICC profile, else convert
    by interpretation (CMYK uses libvips' built-in CMYK profile).

    An embedded profile that is sRGB already is not applied: the transform would
    leave every pixel as it is (see colour.py). The encoder strips it either way.
    """
    image = ctx.image
    if image.get_typeof("icc-profile-data") != 0 and not _tagged_srgb(image):
        image = image.icc_transform("srgb", embedded=True, depth=8)
    space = "b-w" if image.interpretation in ("b-w", "grey16") else "srgb"
    if image.interpretation != space or image.format != "uchar":
        image = image.colourspace(space)
    if image.format != "uchar":
        image = image.cast("uchar")
    ctx.image = image


def _tagged_srgb(image: Any) -> bool:
    """8-bit RGB(A) pixels whose embedded profile is sRGB."""
    if image.format != "uchar" or image.bands not in _RGB_BANDS:
        return False
    if image.interpretation not in _RGB_INTERPRETATIONS:
        return False
    return colour.is_srgb(image.get("icc-profile-data"))


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
    *ADMISSION,  # sniff, read_header, choose_format, check_limits
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


def _frame_height(image: Any) -> int:
    page_height = get_int(image, "page-height", image.height)
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
