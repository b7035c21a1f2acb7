"""Whether an embedded ICC profile is sRGB, so converting to sRGB would change nothing.

Most product photos that carry a profile carry sRGB (cameras, Photoshop's Save for
Web, e-shop exports). Transforming sRGB to sRGB through lcms leaves every pixel as
it was and cost about 13 ms of CPU per 3-megapixel photo (47 -> 34.5 ms per image,
see bench/results.md), so `imaging.to_srgb` skips it for the profiles named here.

Two ways to tell, the second decided once per distinct profile:
- The header of the standard HP/Microsoft "sRGB IEC61966-2.1" profile (colour space
  `RGB `, manufacturer `IEC `, model `sRGB`, creator `HP  `, version 2.1), the one
  imgproxy recognises. Read from 128 bytes, nothing else.
- Any other profile (compact v4 sRGB, vendor copies, libvips' own): a test pattern
  of 729 colours spanning the RGB cube, black to white through every saturated
  corner, is transformed from the profile to sRGB exactly as `to_srgb` would; if no
  channel of any colour moves, the profile is sRGB for our purpose. 1.5-6 ms, once;
  remembered by the profile's bytes (at most REMEMBERED profiles).

A profile that does not parse, or is not an RGB display profile, is never called
sRGB: the image goes through the transform (and libvips' own fallbacks) as before.
"""

from __future__ import annotations

import functools
import logging

import pyvips

log = logging.getLogger(__name__)

ICC_HEADER_BYTES = 128
# Fields of the standard sRGB IEC61966-2.1 profile's header: offset -> bytes.
_IEC_SRGB_HEADER = {
    8: b"\x02\x10",  # version 2.1
    16: b"RGB ",  # data colour space
    48: b"IEC ",  # device manufacturer
    52: b"sRGB",  # device model
    80: b"HP  ",  # profile creator
}
_COLOUR_SPACE = slice(16, 20)
_RGB = b"RGB "
# 9 levels per channel: 729 colours, every corner and edge of the cube included.
_LEVELS = (0, 32, 64, 96, 128, 160, 192, 224, 255)
REMEMBERED = 256


def is_iec_srgb_header(profile: bytes) -> bool:
    """The profile's header is the standard sRGB IEC61966-2.1 one."""
    if len(profile) < ICC_HEADER_BYTES:
        return False
    return all(profile[at : at + len(want)] == want for at, want in _IEC_SRGB_HEADER.items())


def is_srgb(profile: bytes) -> bool:
    """Converting from `profile` to sRGB would leave every 8-bit colour as it is."""
    if len(profile) < ICC_HEADER_BYTES or profile[_COLOUR_SPACE] != _RGB:
        return False
    return is_iec_srgb_header(profile) or _converts_to_itself(profile)


@functools.lru_cache(maxsize=REMEMBERED)
def _converts_to_itself(profile: bytes) -> bool:
    pattern = _pattern()
    tagged = pattern.copy()
    tagged.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    try:
        converted = tagged.icc_transform("srgb", embedded=True, depth=8)
        same_shape = converted.bands == pattern.bands
        unchanged = bool(same_shape and (converted - pattern).abs().max() == 0)
    except pyvips.Error:
        unchanged = False
    log.debug("ICC profile of %d bytes: %s", len(profile), "sRGB" if unchanged else "converted")
    return unchanged


@functools.cache
def _pattern() -> pyvips.Image:
    values = bytes(v for r in _LEVELS for g in _LEVELS for b in _LEVELS for v in (r, g, b))
    count = len(_LEVELS) ** 3
    image = pyvips.Image.new_from_memory(values, count, 1, 3, "uchar")
    return image.copy(interpretation="srgb")
