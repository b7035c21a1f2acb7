"""Embedded colour profiles: sRGB is recognised and left alone, the rest converted right.

Every profile here is written by csvcompress.bench.profiles or built into libvips;
the expected colours of wide-gamut patches are worked out by the profiles' own
arithmetic (profiles.to_srgb), not by lcms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pyvips

from csvcompress.bench import profiles
from csvcompress.config import ImageSettings
from csvcompress.pipeline import colour, imaging
from tests import images

PATCH = (200, 100, 50)
# JPEG q50 of a flat patch moves each channel by a few levels at most.
JPEG_TOLERANCE = 4


def tagged(profile: bytes, rgb: tuple[int, int, int] = PATCH, fmt: str = "jpeg") -> bytes:
    """A flat patch whose numbers are `rgb` in the space `profile` describes."""
    image = images.solid(rgb)
    if fmt == "png":
        image = image.bandjoin(255)
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    data: bytes = image.jpegsave_buffer(Q=95) if fmt == "jpeg" else image.pngsave_buffer()
    assert pyvips.Image.new_from_buffer(data, "").get("icc-profile-data") == profile
    return data


def patch_colour(data: bytes, **changes: Any) -> tuple[float, ...]:
    result = imaging.recompress(data, dataclasses.replace(ImageSettings(), **changes))
    image = pyvips.Image.new_from_buffer(result.data, "")
    assert image.get_typeof("icc-profile-data") == 0  # stripped, as every output
    return images.average(image.extract_band(0, n=3))


def close(actual: tuple[float, ...], expected: tuple[int, ...], tolerance: float) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@pytest.fixture
def transforms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the ICC transforms run on images as big as the test patches."""
    calls: list[int] = []
    original: Callable[..., Any] = pyvips.Image.icc_transform

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.width == images.solid(PATCH).width:  # not colour's own test pattern
            calls.append(self.width)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyvips.Image, "icc_transform", counting)
    yield calls


def builtin(name: str) -> bytes:
    return images.icc_profile(name)


SRGB_PROFILES = {
    "iec61966-header": profiles.srgb_iec61966,
    "vendor-copy": profiles.vendor_srgb,
    "libvips-v4-compact": lambda: builtin("srgb"),
}
OTHER_PROFILES = {
    "adobe-rgb": profiles.adobe_rgb,
    "prophoto": profiles.prophoto_rgb,
    "display-p3": lambda: builtin("p3"),
    "cmyk": lambda: builtin("cmyk"),
    "garbage": lambda: b"\0" * 200,
}


@pytest.mark.parametrize("make", SRGB_PROFILES.values(), ids=SRGB_PROFILES.keys())
def test_srgb_profiles_are_recognised(make: Callable[[], bytes]) -> None:
    assert colour.is_srgb(make())


@pytest.mark.parametrize("make", OTHER_PROFILES.values(), ids=OTHER_PROFILES.keys())
def test_other_profiles_are_not_taken_for_srgb(make: Callable[[], bytes]) -> None:
    assert not colour.is_srgb(make())


def test_only_the_standard_header_passes_the_header_check() -> None:
    assert colour.is_iec_srgb_header(profiles.srgb_iec61966())
    assert not colour.is_iec_srgb_header(profiles.vendor_srgb())


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
@pytest.mark.parametrize("make", SRGB_PROFILES.values(), ids=SRGB_PROFILES.keys())
def test_srgb_tagged_image_is_not_transformed_and_keeps_its_colour(
    make: Callable[[], bytes], fmt: str, transforms: list[int]
) -> None:
    colour_out = patch_colour(tagged(make(), fmt=fmt))
    assert transforms == []
    assert close(colour_out, PATCH, JPEG_TOLERANCE if fmt == "jpeg" else 1), colour_out


@pytest.mark.parametrize(
    ("profile", "space"),
    [(profiles.adobe_rgb, profiles.ADOBE_RGB), (profiles.prophoto_rgb, profiles.PROPHOTO_RGB)],
    ids=["adobe-rgb", "prophoto"],
)
@pytest.mark.parametrize("rgb", [PATCH, (30, 200, 90), (60, 170, 190)])
def test_wide_gamut_patch_is_converted_to_its_srgb_colour(
    profile: Callable[[], bytes],
    space: profiles.Space,
    rgb: tuple[int, int, int],
    transforms: list[int],
) -> None:
    expected = profiles.to_srgb(rgb, space)
    assert not close(expected, rgb, 10)  # dropping the profile would be visibly wrong
    colour_out = patch_colour(tagged(profile(), rgb))
    assert transforms, "the profile was not applied"
    assert close(colour_out, expected, JPEG_TOLERANCE), (colour_out, expected)


def test_display_p3_patch_is_converted() -> None:
    # sRGB red stored as P3 numbers comes back as sRGB red.
    assert close(patch_colour(images.solid_p3_jpeg(images.RED)), images.RED, 8)


def test_cmyk_with_profile_is_still_converted() -> None:
    colour_out = patch_colour(images.solid_cmyk_jpeg(images.RED, icc=True))
    assert close(colour_out, (232, 31, 42), 12), colour_out
