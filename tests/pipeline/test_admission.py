"""admission: naming the bytes and refusing before decoding, case by case.

The cases a mutation run showed no test would notice going wrong: AVIF and HEIF told apart by
their `ftyp` box (and MP4 by it too), text told from binary at the 1% line, markup that is
neither SVG nor HTML, formats this libvips cannot read, the frame limit at its edge, and the
pixels an admitted image holds of the budget.
"""

from __future__ import annotations

import dataclasses

import pytest

from csvcompress.config import ImageSettings
from csvcompress.errors import ConfigError, ImageRejected
from csvcompress.pipeline import admission, imaging
from csvcompress.pipeline.admission import ADMISSION, Context, detect_format, pixels
from tests import images

DEFAULTS = ImageSettings()


def ftyp(major: bytes, *brands: bytes, box_size: int | None = None, tail: bytes = b"") -> bytes:
    """An ISO-BMFF file start: the `ftyp` box (size, type, major brand, minor version,
    compatible brands), then `tail`."""
    body = b"ftyp" + major + b"\0\0\0\0" + b"".join(brands)
    size = box_size if box_size is not None else 4 + len(body)
    box = size.to_bytes(4, "big") + body
    return box + b"\0" * max(0, size - len(box)) + tail


def admit(data: bytes, **changes: object) -> Context:
    ctx = Context(data=data, settings=dataclasses.replace(DEFAULTS, **changes))
    for step in ADMISSION:
        step(ctx)
    return ctx


def refusal(data: bytes, **changes: object) -> str:
    with pytest.raises(ImageRejected) as info:
        admit(data, **changes)
    return info.value.message


# --- AVIF, HEIF or neither ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (ftyp(b"avif", b"mif1", b"miaf"), "avif"),
        (ftyp(b"mif1", b"avif", b"miaf"), "avif"),  # the major brand is generic, a brand says AV1
        (ftyp(b"mif1", b"miaf", b"MA1B", b"avif"), "avif"),
        (ftyp(b"mif1", b"heic", b"miaf"), "heif"),  # an iPhone photo: HEVC, not AV1
        (ftyp(b"mif1", b"miaf"), "heif"),
        (ftyp(b"heic", b"miaf"), "heif"),  # a HEIF major brand alone says HEIF
        (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), None),  # an MP4 video
        (ftyp(b"msnv", b"msnv"), None),
    ],
)
def test_iso_bmff_files_are_named_by_their_ftyp_box(data: bytes, expected: str | None) -> None:
    assert admission._iso_bmff_format(data) == expected


def test_a_brand_is_four_aligned_bytes_of_the_ftyp_box() -> None:
    # "xavi" + "fmp4": the bytes "avif" appear, straddling two brands; no brand is AVIF, so
    # the generic image brand mif1 makes it HEIF.
    assert admission._iso_bmff_format(ftyp(b"mif1", b"xavi", b"fmp4")) == "heif"


def test_brands_are_read_only_inside_the_ftyp_box() -> None:
    # A 16-byte ftyp box has no compatible brands; "avif" in the next box is no brand.
    data = ftyp(b"mif1", box_size=16, tail=b"\0\0\0\x10mdatavifavif")
    assert admission._iso_bmff_format(data) == "heif"
    assert admission._iso_bmff_format(ftyp(b"mif1", b"avif", box_size=20)) == "avif"


def test_brands_are_read_from_the_first_256_bytes_only() -> None:
    # A huge ftyp box is not scanned to its end: the brand at 252 counts, the one at 256 not.
    filler = [b"fill"] * 59  # brands from offset 16 to 251
    assert admission._iso_bmff_format(ftyp(b"mif1", *filler, b"avif")) == "avif"
    assert admission._iso_bmff_format(ftyp(b"mif1", *filler, b"fill", b"avif")) == "heif"


# --- text, markup, or unknown -----------------------------------------------------------------


def test_one_stray_byte_in_a_hundred_is_still_text_and_two_are_not() -> None:
    # A text file may hold the odd broken character; more than 1% makes it binary.
    assert refusal(b"a" * 99 + b"\x01") == admission.REASON_TEXT
    assert refusal(b"a" * 98 + b"\x01\x02") == admission.REASON_UNKNOWN
    assert refusal(b"a" * 99 + b"\xff") == admission.REASON_TEXT
    assert refusal(b"a" * 98 + b"\xff\xfe") == admission.REASON_UNKNOWN


def test_bytes_that_are_not_utf8_are_not_text() -> None:
    assert refusal(b"\xff\xfe\xfa" * 100) == admission.REASON_UNKNOWN


def test_a_nul_byte_makes_it_binary_however_much_text_surrounds_it() -> None:
    assert refusal(b"a" * 400 + b"\0" + b"a" * 100) == admission.REASON_UNKNOWN


def test_markup_that_is_neither_svg_nor_html_is_text() -> None:
    feed = b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title></channel></rss>'
    assert refusal(feed) == admission.REASON_TEXT


def test_a_format_this_libvips_cannot_read_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # A libvips built without TIFF: the user reads which format, not "unknown".
    monkeypatch.setattr(admission, "_READABLE", admission._READABLE - {"tiff"})
    assert refusal(images.tiff(32, 24)) == "TIFF images are not supported"
    assert detect_format(images.tiff(32, 24)) is None


def test_a_format_is_readable_exactly_when_this_libvips_has_its_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert admission._can_load("jpeg") and admission._can_load("png")
    assert not admission._can_load("jxl")  # recognised, but no loader of ours reads it
    assert not admission._can_load("nonsense")
    assert "jpeg" in admission._READABLE and "jxl" not in admission._READABLE
    # BMP is read by ImageMagick's loader, which a libvips may be built without.
    monkeypatch.setitem(admission._LOADERS, "bmp", "nosuchformatload_buffer")
    assert not admission._can_load("bmp")


# --- limits and the budget --------------------------------------------------------------------


def test_an_animation_with_exactly_the_frame_limit_is_admitted() -> None:
    gif = images.animated_gif(120, 80, frames=3)
    assert admit(gif, max_frames=3).frames == 3
    assert refusal(gif, max_frames=2) == "too many frames: 3 exceeds the limit of 2"


def test_a_two_frame_animation_over_the_pixel_limit_says_it_counted_both_frames() -> None:
    gif = images.animated_gif(120, 80, frames=2)
    assert refusal(gif, max_pixels=120 * 80 * 2 - 1) == (
        f"image too large: 120x80 pixels x 2 frames exceeds the limit of {120 * 80 * 2 - 1}"
    )


def test_an_admitted_image_holds_the_pixels_of_every_frame_it_decodes() -> None:
    assert pixels(admit(images.animated_gif(120, 80, frames=3))) == 120 * 80 * 3
    assert pixels(admit(images.photo_jpeg(64, 48))) == 64 * 48
    # Forced to a still format, one frame is decoded, and held.
    assert pixels(admit(images.animated_gif(120, 80, frames=3), format="png")) == 120 * 80


def test_an_output_format_no_encoder_exists_for_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"^images\.format: cannot encode 'bmp'$"):
        admit(images.photo_jpeg(64, 48), format="bmp")


def test_imaging_runs_admission_first() -> None:
    assert imaging.PIPELINE[: len(ADMISSION)] == ADMISSION
