"""ICC profiles written here, byte by byte, for the bench corpus and the tests.

Nothing is downloaded: a matrix/TRC RGB profile (ICC v2) is a 128-byte header, a
tag table, the white point, three primaries and three tone curves. That is enough
for the profiles product photos carry most:

- `srgb_iec61966()`: sRGB with the header of the HP/Microsoft "sRGB IEC61966-2.1"
  profile (manufacturer `IEC `, model `sRGB`, creator `HP  `, version 2.1) that
  cameras and Photoshop's Save for Web embed, and its 1024-entry tone curve.
- `vendor_srgb()`: the same colours under another vendor's header, as the many
  re-issued sRGB copies carry: only a look at what the profile does tells it is sRGB.
- `adobe_rgb()`, `prophoto_rgb()`: the wide-gamut spaces of camera and studio
  exports (gamma 2.2 and 1.8).

Display P3 and CMYK come from libvips' built-in profiles (`icc_transform("p3")`).
`to_srgb(rgb, space)` converts a colour by the profile's own arithmetic, so a test
can check a converted patch against numbers worked out independently of lcms.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

Matrix = tuple[tuple[float, float, float], ...]
RGB = tuple[int, int, int]

D50 = (0.9642, 1.0, 0.8249)
_CURVE_ENTRIES = 1024
_TAG_ALIGN = 4


@dataclass(frozen=True)
class Space:
    """An RGB space as an ICC matrix/TRC profile sees it: D50-adapted primaries
    (columns: the XYZ of full red, green, blue) and one tone curve for all three."""

    name: str
    primaries: Matrix  # rows: red, green, blue; each its XYZ
    gamma: float  # 0: the sRGB curve


SRGB = Space(
    "sRGB",
    ((0.4360747, 0.2225045, 0.0139322), (0.3850649, 0.7168786, 0.0971045),
     (0.1430804, 0.0606169, 0.7141733)),
    0.0,
)  # fmt: skip
ADOBE_RGB = Space(
    "Adobe RGB (1998)",
    ((0.6097559, 0.3111242, 0.0194811), (0.2052401, 0.6256560, 0.0608902),
     (0.1492240, 0.0632197, 0.7448387)),
    563 / 256,
)  # fmt: skip
PROPHOTO_RGB = Space(
    "ProPhoto RGB",
    ((0.7976749, 0.2880402, 0.0), (0.1351917, 0.7118741, 0.0), (0.0313534, 0.0000857, 0.8251)),
    461 / 256,
)


def srgb_iec61966() -> bytes:
    """sRGB under the header of the standard "sRGB IEC61966-2.1" profile."""
    return _profile(
        SRGB,
        "sRGB IEC61966-2.1",
        cmm=b"Lino",
        manufacturer=b"IEC ",
        model=b"sRGB",
        creator=b"HP  ",
        date=(1998, 2, 9, 6, 49, 0),
    )


def vendor_srgb() -> bytes:
    """sRGB with a vendor's own header: recognisable only by what it does."""
    return _profile(SRGB, "Vendor sRGB copy", manufacturer=b"ACME", model=b"srgb")


def adobe_rgb() -> bytes:
    return _profile(ADOBE_RGB, "Adobe RGB (1998)", manufacturer=b"ADBE", model=b"    ")


def prophoto_rgb() -> bytes:
    return _profile(PROPHOTO_RGB, "ProPhoto RGB", manufacturer=b"KODA", model=b"ROMM")


def to_srgb(rgb: RGB, space: Space) -> RGB:
    """`rgb` in `space` as sRGB numbers (relative colorimetric, clipped), by arithmetic."""
    linear = [_decode(v / 255, space.gamma) for v in rgb]
    xyz = [sum(space.primaries[c][i] * linear[c] for c in range(3)) for i in range(3)]
    srgb_linear = _solve(SRGB.primaries, xyz)
    return tuple(round(255 * _encode(min(1.0, max(0.0, v)))) for v in srgb_linear)  # type: ignore[return-value]


# --- the bytes -----------------------------------------------------------------


def _profile(
    space: Space,
    description: str,
    *,
    cmm: bytes = b"none",
    manufacturer: bytes,
    model: bytes,
    creator: bytes = b"csvc",
    date: tuple[int, int, int, int, int, int] = (2026, 1, 1, 0, 0, 0),
) -> bytes:
    curve = _curve(space.gamma)
    tags = [
        (b"desc", _desc(description)),
        (b"cprt", _text("No copyright, use freely")),
        (b"wtpt", _xyz(D50)),
        (b"rXYZ", _xyz(space.primaries[0])),
        (b"gXYZ", _xyz(space.primaries[1])),
        (b"bXYZ", _xyz(space.primaries[2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table = struct.pack(">I", len(tags))
    body = b""
    shared: dict[bytes, int] = {}
    for signature, data in tags:
        if data not in shared:  # the three curves are one block, as in the HP profile
            shared[data] = offset + len(body)
            body += data + b"\0" * (-len(data) % _TAG_ALIGN)
        table += struct.pack(">4sII", signature, shared[data], len(data))
    size = 128 + len(table) + len(body)
    header = struct.pack(
        ">I4sI4s4s4s6H4s4sI4s4s8sI12s4s16s28s",
        size,
        cmm,
        0x02100000,  # version 2.1
        b"mntr",
        b"RGB ",
        b"XYZ ",
        *date,
        b"acsp",
        b"MSFT",
        0,
        manufacturer,
        model,
        b"\0" * 8,
        0,  # perceptual
        b"".join(_s15(v) for v in D50),
        creator,
        b"\0" * 16,
        b"\0" * 28,
    )
    assert len(header) == 128
    return header + table + body


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values: Sequence[float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in values)


def _text(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def _desc(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)  # no Unicode description
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67  # no ScriptCode description
    )


def _curve(gamma: float) -> bytes:
    if gamma:  # one u8Fixed8 exponent
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    entries = [round(65535 * _decode(i / (_CURVE_ENTRIES - 1), 0.0)) for i in range(_CURVE_ENTRIES)]
    return b"curv\0\0\0\0" + struct.pack(f">I{_CURVE_ENTRIES}H", _CURVE_ENTRIES, *entries)


# --- colour arithmetic -------------------------------------------------------------


def _decode(v: float, gamma: float) -> float:
    if gamma:
        return float(v**gamma)
    return v / 12.92 if v <= 0.04045 else float(((v + 0.055) / 1.055) ** 2.4)


def _encode(v: float) -> float:
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def _solve(primaries: Matrix, xyz: Sequence[float]) -> list[float]:
    """The linear RGB whose mix of `primaries` gives `xyz` (Cramer's rule)."""
    m = [[primaries[c][i] for c in range(3)] for i in range(3)]  # rows X, Y, Z

    def det(a: list[list[float]]) -> float:
        return (
            a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
        )

    whole = det(m)
    out = []
    for c in range(3):
        replaced = [[xyz[i] if j == c else m[i][j] for j in range(3)] for i in range(3)]
        out.append(det(replaced) / whole)
    return out
