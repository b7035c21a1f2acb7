"""The images the benchmark recompresses, and the CSVs that list them.

A corpus is a handful of files served under many distinct URLs, so the service
fetches and compresses every URL (nothing is de-duplicated away) while the
origin keeps only a few images in memory.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyvips

from csvcompress import samples
from csvcompress.bench import profiles

log = logging.getLogger(__name__)

# Photo-like product shots, like the issue's: about 2000 x 1500 at JPEG q90.
PHOTO_SIZE = (2000, 1500)
PHOTO_COUNT = 8
# "Up to 24 megapixels": a cycle of 24, 12, 6 and 3 MP photos.
BIG_SIZES = ((6000, 4000), (4000, 3000), (3000, 2000), (2000, 1500))
SOURCE_QUALITY = 90
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".avif", ".gif", ".tif", ".tiff"})
HEADER = ("S. No.", "Product Name", "Input Image Urls")


@dataclass(frozen=True)
class Corpus:
    name: str  # the first segment of its URLs on the origin
    files: dict[str, bytes]
    description: str

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError(f"corpus {self.name!r} has no images")

    @property
    def names(self) -> list[str]:
        return sorted(self.files)

    @property
    def average_bytes(self) -> int:
        return sum(map(len, self.files.values())) // len(self.files)

    def urls(self, origin: str, count: int) -> list[str]:
        """`count` distinct URLs, cycling through the files."""
        names = self.names
        return [f"{origin}/{self.name}/{k}/{names[k % len(names)]}" for k in range(count)]

    def payloads(self, count: int) -> list[bytes]:
        """The bytes behind `urls(origin, count)`, in the same order."""
        names = self.names
        return [self.files[names[k % len(names)]] for k in range(count)]

    def write(self, root: Path) -> None:
        """Save the files under root/name/ for the origin process to serve."""
        folder = root / self.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (folder / name).write_bytes(data)


def generated(name: str, sizes: Sequence[tuple[int, int]], cache: Path | None) -> Corpus:
    """Photo-like JPEGs of the given sizes (seeded, so the same every run), cached on disk."""
    files: dict[str, bytes] = {}
    for seed, (width, height) in enumerate(sizes, start=1):
        file_name = f"photo-{width}x{height}-{seed}.jpg"
        cached = cache / name / file_name if cache is not None else None
        if cached is not None and cached.is_file():
            files[file_name] = cached.read_bytes()
            continue
        data = samples.photo_jpeg(width, height, seed=seed, quality=SOURCE_QUALITY)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(data)
        files[file_name] = data
    shapes = sorted({f"{w}x{h}" for w, h in sizes}, key=lambda s: -int(s.split("x")[0]))
    description = (
        f"generated: {len(files)} photo-like JPEGs (q{SOURCE_QUALITY}, {', '.join(shapes)}), "
        f"{_kb(files)} KB on average"
    )
    return Corpus(name, files, description)


def from_dir(name: str, folder: Path) -> Corpus:
    """Every image file directly in `folder` (by extension)."""
    files = {
        path.name: path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    }
    if not files:
        raise SystemExit(f"--corpus {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Corpus(name, files, f"{folder}: {len(files)} files, {_kb(files)} KB on average")


def photos(corpus_dir: Path | None, cache: Path | None) -> Corpus:
    if corpus_dir is not None:
        return from_dir("photos", corpus_dir)
    return generated("photos", [PHOTO_SIZE] * PHOTO_COUNT, cache)


# The mix of issue 13, as product photos come: half the JPEGs carry a profile, most
# of those sRGB; some cut-outs with alpha (PNG) and some WebP. Name -> how it is made.
MIXED_PHOTO = (2000, 1500)
MIXED_CUTOUT = (1000, 750)
MIXED = (
    "jpeg-untagged-1",
    "jpeg-untagged-2",
    "jpeg-untagged-3",
    "jpeg-srgb-iec61966-1",
    "jpeg-srgb-iec61966-2",
    "jpeg-srgb-vendor",
    "jpeg-display-p3",
    "jpeg-adobe-rgb",
    "png-alpha-1",
    "png-alpha-2",
    "webp-1",
    "webp-2",
)
WEBP_SOURCE_QUALITY = 85


def mixed(cache: Path | None) -> Corpus:
    """The mixed-profile corpus (seeded, cached on disk like the others)."""
    files: dict[str, bytes] = {}
    for seed, stem in enumerate(MIXED, start=11):
        kind = stem.split("-")[0]
        file_name = f"{stem}.{'jpg' if kind == 'jpeg' else kind}"
        cached = cache / "mixed" / file_name if cache is not None else None
        if cached is not None and cached.is_file():
            files[file_name] = cached.read_bytes()
            continue
        data = _mixed_file(stem, seed)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(data)
        files[file_name] = data
    description = (
        f"mixed: {len(files)} files, {_kb(files)} KB on average: JPEG {MIXED_PHOTO[0]}x"
        f"{MIXED_PHOTO[1]} q{SOURCE_QUALITY} (3 untagged, 2 tagged sRGB IEC61966-2.1, 1 a "
        f"vendor's sRGB copy, 1 Display P3, 1 Adobe RGB), 2 PNG cut-outs with alpha "
        f"{MIXED_CUTOUT[0]}x{MIXED_CUTOUT[1]}, 2 WebP {MIXED_PHOTO[0]}x{MIXED_PHOTO[1]}"
    )
    return Corpus("mixed", files, description)


def _mixed_file(stem: str, seed: int) -> bytes:
    kind = stem.split("-")[0]
    if kind == "png":
        width, height = MIXED_CUTOUT
        image = samples.photo(width, height, seed)
        # An opaque product on a transparent background, soft-edged.
        xy = pyvips.Image.xyz(width, height)
        distance = ((xy[0] - width / 2) ** 2 / (width * 0.4) ** 2) + (
            (xy[1] - height / 2) ** 2 / (height * 0.4) ** 2
        )
        alpha = ((1.2 - distance) * 5 * 255).cast("uchar")  # clipped to 0..255
        data: bytes = image.bandjoin(alpha).pngsave_buffer(keep="none")
        return data
    image = samples.photo(*MIXED_PHOTO, seed)
    if kind == "webp":
        data = image.webpsave_buffer(Q=WEBP_SOURCE_QUALITY, keep="none")
        return data
    profile = {
        "jpeg-srgb-iec61966-1": profiles.srgb_iec61966,
        "jpeg-srgb-iec61966-2": profiles.srgb_iec61966,
        "jpeg-srgb-vendor": profiles.vendor_srgb,
        "jpeg-adobe-rgb": profiles.adobe_rgb,
    }.get(stem)
    if stem == "jpeg-display-p3":
        image = image.icc_transform("p3")  # the same colours, as P3 numbers and profile
    elif profile is not None:
        image = image.copy()
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile())
    else:
        image = image.copy()
        image.remove("icc-profile-data")
    keep = "icc" if image.get_typeof("icc-profile-data") else "none"
    data = image.jpegsave_buffer(Q=SOURCE_QUALITY, keep=keep)
    return data


def big(cache: Path | None) -> Corpus:
    return generated("big", BIG_SIZES, cache)


def csv_bytes(urls: Sequence[str], per_row: int) -> bytes:
    """A CSV in the issue's format with `per_row` URLs per row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for number, chunk in enumerate(_chunks(urls, per_row), start=1):
        writer.writerow((number, f"Product {number}", ", ".join(chunk)))
    return out.getvalue().encode()


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _kb(files: dict[str, bytes]) -> int:
    return sum(map(len, files.values())) // len(files) // 1024
