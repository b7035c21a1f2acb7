"""A Pillow recompressor: the reference point `make bench` compares libvips with.

Selected by `[images] engine = "pillow"`, which exists for benchmarking only:
most services of this kind decode and encode with Pillow, and the benchmark
measures what libvips buys over that, in the same service. Pillow is then
needed at run time; it comes with the `bench` (and `dev`) extra and is
imported only when this engine is chosen.

It runs the same first steps as the libvips engine (admission.ADMISSION: sniff
the bytes, read the header, choose the output format, check the limits), so it
refuses the same inputs before decoding a pixel. Then Pillow decodes (JPEG shrink-on-load when
scaling), turns the image upright, converts to 8-bit RGB (RGBA where the
output keeps alpha), resizes, and encodes with no metadata, at the same
quality and Huffman-table setting. What it does not do, as a reference and
not a second product: ICC colour conversion, animation (the first frame
only), and AVIF or GIF output (those become JPEG).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import pyvips
from PIL import Image, ImageOps

from csvcompress.config import ImageSettings
from csvcompress.errors import ImageRejected
from csvcompress.pipeline import admission

_PILLOW_OUTPUTS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_FALLBACK = "jpeg"
_WHITE = (255, 255, 255)


def recompress(data: bytes, settings: ImageSettings) -> admission.Compressed:
    """Recompress one image with Pillow. Synchronous: call it from a thread pool."""
    ctx = admission.Context(data=data, settings=settings)
    # The checks shared with the libvips engine: nothing is decoded before they pass.
    for step in admission.ADMISSION:
        try:
            step(ctx)
        except pyvips.Error as exc:
            raise ImageRejected(f"{admission.REASON_CORRUPT}: {exc}") from exc
    fmt = ctx.target_format if ctx.target_format in _PILLOW_OUTPUTS else _FALLBACK
    try:
        with admission.PIXELS.hold(admission.pixels(ctx)):
            image = _decode(ctx)
            encoded = _encode(image, fmt, settings)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"{admission.REASON_CORRUPT}: {exc}") from exc
    content_type, extension = admission.MEDIA[fmt]
    return admission.Compressed(
        data=encoded,
        format=fmt,
        content_type=content_type,
        extension=extension,
        width=image.width,
        height=image.height,
        frames=1,
        input_format=ctx.input_format,
    )


def _decode(ctx: admission.Context) -> Image.Image:
    scale = ctx.settings.scale
    # The size wanted as stored (the header's, before rotation), then upright.
    stored = (max(1, round(ctx.width * scale)), max(1, round(ctx.height * scale)))
    upright = (stored[1], stored[0]) if ctx.orientation in admission.QUARTER_TURNS else stored
    with warnings.catch_warnings():
        # The pixel limit was checked from the header already, with our own limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(io.BytesIO(ctx.data))
        if scale < 1 and opened.format == "JPEG":
            opened.draft("RGB", stored)  # DCT shrink-on-load, like libvips' `shrink`
        opened.load()
    image: Image.Image = ImageOps.exif_transpose(opened) or opened
    if scale < 1 and image.size != upright:
        image = image.resize(upright, Image.Resampling.LANCZOS)
    return image


def _encode(image: Image.Image, fmt: str, settings: ImageSettings) -> bytes:
    options: dict[str, Any] = {"quality": settings.quality}
    if fmt == "jpeg":
        image = _flattened(image)
        options["optimize"] = settings.optimize_coding
    elif fmt == "png":
        image = image.convert("RGBA" if image.has_transparency_data else "RGB").quantize(256)
        options = {"optimize": True}
    else:
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        options["method"] = admission.WEBP_EFFORT
    buffer = io.BytesIO()
    image.save(buffer, _PILLOW_OUTPUTS[fmt], **options)
    return buffer.getvalue()


def _flattened(image: Image.Image) -> Image.Image:
    if not image.has_transparency_data:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
