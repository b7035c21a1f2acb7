"""imaging.recompress: what a user would check by opening the output file."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from csvcompress.config import ImageSettings
from csvcompress.errors import ImageRejected
from csvcompress.pipeline import imaging
from tests import images

DEFAULTS = ImageSettings()
LOADERS = {
    "jpeg": "jpegload_buffer",
    "png": "pngload_buffer",
    "webp": "webpload_buffer",
    "avif": "heifload_buffer",
    "gif": "gifload_buffer",
}
# sRGB red through a print (CMYK) profile: solid magenta + yellow ink.
PRESS_RED = (232, 31, 42)
MIB = 1024 * 1024


def run(data: bytes, **changes: Any) -> imaging.Compressed:
    return imaging.recompress(data, dataclasses.replace(DEFAULTS, **changes))


def rejected(data: bytes, **changes: Any) -> str:
    with pytest.raises(ImageRejected) as info:
        run(data, **changes)
    assert info.value.status == 422
    assert info.value.code == "image_rejected"
    return info.value.message


def decode(result: imaging.Compressed) -> Any:
    """Open the output as any client would, checking it is what it claims to be."""
    options = {"n": -1} if result.format in ("gif", "webp") else {}
    image = pyvips.Image.new_from_buffer(result.data, "", **options)
    assert image.get("vips-loader") == LOADERS[result.format]
    assert (result.content_type, result.extension) == imaging.MEDIA[result.format]
    frame_height = image.get("page-height") if result.frames > 1 else image.height
    assert (image.width, frame_height) == (result.width, result.height)
    assert image.height == result.height * result.frames
    image.avg()  # every pixel decodes
    return image


def close(actual: tuple[float, ...], expected: tuple[float, ...], tolerance: float) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- format detection ---------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (images.photo_jpeg, "jpeg"),
        (images.png, "png"),
        (images.webp, "webp"),
        (images.animated_gif, "gif"),
        (images.avif, "avif"),
        (images.heic_header, "heif"),
        (images.tiff, "tiff"),
        (images.svg, None),
        (images.html, None),
        (lambda: b"", None),
        (lambda: b"GIF8", None),
        (lambda: b"\0\0\0\x18ftypisom\0\0\0\0isommp42", None),  # an MP4 video
    ],
)
def test_detect_format_reads_magic_bytes(make: Callable[[], bytes], expected: str | None) -> None:
    assert imaging.detect_format(make()) == expected


def test_detect_format_ignores_what_follows_the_magic() -> None:
    # The decision is the bytes', not a name's: a PNG signature is a PNG.
    assert imaging.detect_format(b"\x89PNG\r\n\x1a\n" + b"<html>") == "png"


# --- output format and size ---------------------------------------------------


def test_photo_jpeg_at_quality_50_is_smaller_and_the_same_size() -> None:
    source = images.photo_jpeg()  # 2000x1500 at q90
    result = run(source, quality=50)
    assert (result.format, result.input_format) == ("jpeg", "jpeg")
    assert (result.width, result.height, result.frames) == (2000, 1500, 1)
    decode(result)
    assert len(result.data) < len(source) * 0.5


def test_lower_quality_gives_smaller_files() -> None:
    source = images.photo_jpeg(640, 480)
    sizes = [len(run(source, quality=q).data) for q in (90, 70, 50, 30)]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(
    ("make", "input_format", "output_format"),
    [
        (images.photo_jpeg, "jpeg", "jpeg"),
        (images.png, "png", "png"),
        (images.webp, "webp", "webp"),
        (images.avif, "avif", "avif"),
        (images.animated_gif, "gif", "gif"),
        (images.tiff, "tiff", "jpeg"),
    ],
)
def test_keep_keeps_the_format_where_it_can(
    make: Callable[[], bytes], input_format: str, output_format: str
) -> None:
    source = make()
    result = run(source)
    assert (result.input_format, result.format) == (input_format, output_format)
    original = pyvips.Image.new_from_buffer(source, "")
    assert (result.width, result.height) == (original.width, original.height)
    decode(result)


def test_avif_output_is_av1() -> None:
    image = decode(run(images.photo_jpeg(320, 240), format="avif"))
    assert image.get("heif-compression") == "av1"


def test_png_output_is_a_palette_png() -> None:
    result = run(images.png())
    assert Image.open(io.BytesIO(result.data)).mode == "P"


@pytest.mark.parametrize("target", ["jpeg", "webp", "avif", "png"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: images.photo_jpeg(320, 240),
        images.png_rgba,
        images.png_16bit,
        images.grey_jpeg,
        images.cmyk_jpeg,
        images.tiff,
        images.webp,
    ],
)
def test_forced_format_applies_to_every_input(make: Callable[[], bytes], target: str) -> None:
    result = run(make(), format=target)
    assert result.format == target
    assert (result.width, result.height, result.frames) == (320, 240, 1)
    image = decode(result)
    assert image.format == "uchar"


@pytest.mark.parametrize(
    ("scale", "size", "expected"),
    [
        (0.5, (640, 480), (320, 240)),
        (0.25, (640, 480), (160, 120)),  # JPEG shrink-on-load by 2, then resize
        (0.1, (333, 250), (33, 25)),  # shrink-on-load by 4; rounded, not truncated
        (0.001, (640, 480), (1, 1)),  # never below one pixel
    ],
)
def test_scale_resizes(scale: float, size: tuple[int, int], expected: tuple[int, int]) -> None:
    result = run(images.photo_jpeg(*size), scale=scale)
    assert (result.width, result.height) == expected
    decode(result)


def test_scale_keeps_colours() -> None:
    image = decode(run(images.solid_jpeg(images.RED, 640, 480), scale=0.125))
    assert close(images.average(image), images.RED, 6)


def test_scale_with_alpha_keeps_transparency() -> None:
    result = run(images.png_rgba(320, 240), scale=0.5)
    image = decode(result)
    assert (image.width, image.height) == (160, 120)
    assert image.hasalpha()
    assert image.extract_band(3).getpoint(0, 0) == [0]


# --- orientation --------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    result = run(images.exif_rotated_jpeg(300, 200, orientation))
    turned = orientation >= 5
    assert (result.width, result.height) == ((200, 300) if turned else (300, 200))
    image = decode(result)
    assert image.get_typeof("orientation") == 0 or image.get("orientation") == 1


@pytest.mark.parametrize(
    ("orientation", "red_at", "blue_at"),
    [
        (6, (100, 10), (100, 290)),  # turned clockwise: the left half is now on top
        (8, (100, 290), (100, 10)),  # turned anticlockwise: the left half is now below
        (3, (290, 100), (10, 100)),  # upside down: the left half is now on the right
    ],
)
def test_exif_orientation_turns_the_right_way(
    orientation: int, red_at: tuple[int, int], blue_at: tuple[int, int]
) -> None:
    image = decode(run(images.exif_rotated_jpeg(300, 200, orientation), quality=90))
    assert close(tuple(image.getpoint(*red_at)), images.RED, 40)
    assert close(tuple(image.getpoint(*blue_at)), images.BLUE, 40)


def test_large_rotated_image_is_read_out_of_order_correctly() -> None:
    # Streaming (sequential) reads cannot rotate a large image; it must still work.
    result = run(images.exif_rotated_jpeg(2400, 1600, 6))
    assert (result.width, result.height) == (1600, 2400)
    decode(result)


def test_orientation_and_scale_together() -> None:
    result = run(images.exif_rotated_jpeg(300, 200, 6), scale=0.5)
    assert (result.width, result.height) == (100, 150)


# --- colour -------------------------------------------------------------------


@pytest.mark.parametrize("icc", [False, True])
def test_cmyk_jpeg_comes_out_as_srgb_red(icc: bool) -> None:
    result = run(images.solid_cmyk_jpeg(images.RED, icc=icc))
    image = decode(result)
    assert (image.bands, image.interpretation) == (3, "srgb")
    colour = images.average(image)
    # Red, through a print profile: not cyan (inverted Adobe CMYK) nor black.
    assert close(colour, PRESS_RED, 12), colour
    assert close(colour, images.RED, 45), colour


def test_cmyk_photo_becomes_three_band_srgb() -> None:
    image = decode(run(images.cmyk_jpeg(), format="webp"))
    assert image.bands == 3
    original = Image.open(io.BytesIO(images.cmyk_jpeg())).convert("RGB")
    pillow = pyvips.Image.new_from_memory(original.tobytes(), *original.size, 3, "uchar")
    # Pillow converts naively, libvips through a profile: same picture, close colours.
    assert close(images.average(image), images.average(pillow), 25)


def test_embedded_icc_profile_is_applied_before_it_is_stripped() -> None:
    result = run(images.solid_p3_jpeg(images.RED))
    image = decode(result)
    assert image.get_typeof("icc-profile-data") == 0
    # Read as if the P3 numbers were sRGB it would be (234, 51, 35).
    assert close(images.average(image), images.RED, 8)


@pytest.mark.parametrize(
    ("profile", "mode"),
    [
        (b"\0" * 200, "RGB"),  # not a profile at all
        (images.icc_profile("cmyk"), "RGB"),  # a CMYK profile on RGB pixels
        (images.icc_profile("p3"), "CMYK"),  # an RGB profile on CMYK pixels
    ],
    ids=["garbage", "cmyk-on-rgb", "rgb-on-cmyk"],
)
def test_broken_or_mismatched_icc_profile_falls_back(profile: bytes, mode: str) -> None:
    source = images.jpeg_with_icc_profile(profile, images.RED, mode)
    assert pyvips.Image.new_from_buffer(source, "").get_typeof("icc-profile-data") != 0
    image = decode(run(source))
    assert (image.bands, image.interpretation) == (3, "srgb")
    expected = PRESS_RED if mode == "CMYK" else images.RED
    assert close(images.average(image), expected, 8)


@pytest.mark.parametrize("alpha", [False, True])
def test_16_bit_png_becomes_8_bit(alpha: bool) -> None:
    result = run(images.png_16bit(alpha=alpha))
    image = decode(result)
    assert image.format == "uchar"
    assert image.hasalpha() == alpha
    assert Image.open(io.BytesIO(result.data)).mode == "P"
    # Same picture: compare the opaque middle with the 8-bit photo it was made from.
    middle = (100, 80, 120, 80)
    photo = images.photo(320, 240).crop(*middle)
    assert close(images.average(image.crop(*middle))[:3], images.average(photo), 4)


def test_16_bit_png_to_jpeg_keeps_brightness() -> None:
    image = decode(run(images.png_16bit(), format="jpeg"))
    assert (image.format, image.bands) == ("uchar", 3)
    assert close(images.average(image), images.average(images.photo(320, 240)), 3)


def test_greyscale_stays_grey() -> None:
    image = decode(run(images.grey_jpeg()))
    assert image.bands == 1
    webp = decode(run(images.grey_jpeg(), format="webp"))
    red, green, blue = images.average(webp)[:3]
    assert abs(red - green) < 1.5 and abs(green - blue) < 1.5


def test_transparency_is_flattened_onto_white_for_jpeg() -> None:
    image = decode(run(images.png_rgba(), format="jpeg"))
    assert image.bands == 3
    assert close(tuple(image.getpoint(0, 0)), (255, 255, 255), 3)  # transparent corner


@pytest.mark.parametrize("target", sorted(imaging.MEDIA))
def test_every_output_format_admission_may_choose_has_an_encoder(target: str) -> None:
    result = run(images.png_rgba(), format=target)
    assert result.format == target
    decode(result)


@pytest.mark.parametrize("target", ["png", "webp", "avif"])
def test_transparency_is_kept_where_the_format_has_it(target: str) -> None:
    image = decode(run(images.png_rgba(), format=target))
    assert image.hasalpha()
    assert image.extract_band(image.bands - 1).getpoint(0, 0) == [0]


# --- metadata -----------------------------------------------------------------


@pytest.mark.parametrize("target", ["keep", "webp", "avif", "png"])
def test_exif_and_gps_are_removed(target: str) -> None:
    source = images.jpeg_with_gps()
    assert b"TestCam" in source
    assert "exif-ifd3-GPSLatitude" in pyvips.Image.new_from_buffer(source, "").get_fields()
    result = run(source, format=target)
    fields = decode(result).get_fields()
    leaked = [f for f in fields if f.startswith(("exif", "xmp", "iptc", "icc"))]
    assert leaked == []
    assert b"TestCam" not in result.data
    assert b"Exif" not in result.data


# --- animation ----------------------------------------------------------------


def _frame_colours(image: Any, frames: int) -> list[tuple[float, ...]]:
    height = image.height // frames
    return [
        images.average(image.crop(0, i * height + height // 2, image.width, height // 2)[0:3])
        for i in range(frames)
    ]


def test_gif_keeps_every_frame_delay_and_loop() -> None:
    result = run(images.animated_gif(120, 80, frames=3))
    assert (result.format, result.frames, result.width, result.height) == ("gif", 3, 120, 80)
    image = decode(result)
    assert image.get("n-pages") == 3
    assert image.get("page-height") == 80
    assert image.get("delay") == [100, 200, 300]
    assert image.get("loop") == 0
    expected = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
    for colour, want in zip(_frame_colours(image, 3), expected, strict=True):
        assert close(colour, want, 12)


def test_scaled_gif_scales_each_frame_on_its_own() -> None:
    result = run(images.animated_gif(120, 80, frames=3), scale=0.5)
    assert (result.frames, result.width, result.height) == (3, 60, 40)
    image = decode(result)
    expected = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
    for i, want in enumerate(expected):
        # Resizing the strip of frames as one image would blend each frame's
        # first and last rows with its neighbours' (by 10-15 levels).
        top = image.crop(35, i * 40, 25, 1)
        bottom = image.crop(0, i * 40 + 39, 60, 1)
        assert close(images.average(top)[:3], want, 4)
        assert close(images.average(bottom)[:3], want, 4)


@pytest.mark.parametrize("make", [images.animated_gif, images.animated_webp])
def test_animation_forced_to_webp_stays_animated(make: Callable[[], bytes]) -> None:
    result = run(make(), format="webp")
    assert (result.format, result.frames, result.height) == ("webp", 3, 80)
    image = decode(result)
    assert image.get("n-pages") == 3
    assert image.get("delay") == [100, 200, 300]


@pytest.mark.parametrize("target", ["jpeg", "png", "avif"])
def test_animation_forced_to_a_still_format_keeps_the_first_frame(target: str) -> None:
    result = run(images.animated_gif(120, 80, frames=3), format=target)
    assert (result.frames, result.width, result.height) == (1, 120, 80)
    image = decode(result)
    assert close(images.average(image.crop(0, 40, 120, 40))[:3], (255, 0, 0), 25)


# --- refusals -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty body"),
        (images.html(), "not an image (looks like HTML)"),
        (b"\xef\xbb\xbf  <HTML><BODY>Forbidden</BODY></HTML>", "not an image (looks like HTML)"),
        (images.svg(), "SVG images are not accepted"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG images are not accepted"),
        (b'{"error": "access denied"}\n', "not an image (looks like text)"),
        (bytes(range(256)) * 4, "not a recognised image format"),
        (b"\0\0\0\x18ftypisom\0\0\0\0isommp42" + b"\0" * 64, "not a recognised image format"),
        (b"\xff\x0a" + b"\0" * 64, "JPEG XL images are not supported"),
        (images.truncated_jpeg(), "corrupt or truncated image: premature end of JPEG image"),
    ],
)
def test_refusals_give_the_exact_reason(data: bytes, reason: str) -> None:
    assert rejected(data) == reason


def test_bmp_is_converted_or_refused_by_what_libvips_can_read() -> None:
    if imaging.detect_format(images.bmp()) is None:
        assert rejected(images.bmp()) == "BMP images are not supported"
    else:  # pragma: no cover - only with a libvips that carries a BMP loader
        assert run(images.bmp()).format == "jpeg"


@pytest.mark.parametrize(
    "data",
    [
        images.png()[:5000],
        images.tiff()[:5000],
        images.webp()[:3000],
        images.avif()[:3000],
        images.heic_header(),
        b"\xff\xd8\xff" + bytes(range(256)),
        images.animated_gif()[:200],
    ],
    ids=["png", "tiff", "webp", "avif", "heic", "jpeg-garbage", "gif"],
)
def test_corrupt_files_are_refused_in_one_short_line(data: bytes) -> None:
    reason = rejected(data)
    assert reason.startswith("corrupt or truncated image: ")
    assert len(reason) > len("corrupt or truncated image: ")
    assert "\n" not in reason
    assert len(reason) <= 240
    assert "source: bad seek" not in reason


# Run in a fresh interpreter, and meter each phase from its own start. Not ru_maxrss: Linux
# carries the parent's peak across exec into it, so late in a long pytest run the child
# starts at pytest's own peak and every growth below that is hidden. VmHWM belongs to the
# new address space, and writing 5 to clear_refs resets it to the RSS of the moment.
_BOMB_PEAKS = """
import json, sys
import pyvips
from csvcompress.config import ImageSettings
from csvcompress.errors import ImageRejected
from csvcompress.pipeline import imaging

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))

def growth(work):
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    start = status("VmRSS")
    work()
    return status("VmHWM") - start  # KiB

def bomb_phase():
    global reason
    try:
        imaging.recompress(bomb, ImageSettings())
    except ImageRejected as exc:
        reason = exc.message

# The control: 512 MiB of pixels really written must show in the same meter (an all-zero
# image would not: its untouched pages are never resident).
def control_phase():
    (pyvips.Image.black(16384, 32768) + 7).cast("uchar").copy_memory()

bomb = sys.stdin.buffer.read()  # made by the test: making it here would raise the peak
reason = None
bomb_kib = growth(bomb_phase)
json.dump([reason, bomb_kib, growth(control_phase)], sys.stdout)
"""


def test_pixel_bomb_is_refused_from_the_header_without_decoding() -> None:
    bomb = images.png_bomb(40000, 40000)
    assert len(bomb) < 400_000
    assert rejected(bomb) == "image too large: 40000x40000 pixels exceeds the limit of 100000000"
    done = subprocess.run(
        [sys.executable, "-c", _BOMB_PEAKS],
        cwd=Path(__file__).resolve().parents[2],
        input=bomb,
        capture_output=True,
        check=True,
    )
    reason, bomb_kib, control_kib = json.loads(done.stdout)
    assert reason == "image too large: 40000x40000 pixels exceeds the limit of 100000000"
    assert control_kib > 448 * 1024  # the meter sees 512 MiB of pixels written...
    assert bomb_kib < 64 * 1024  # ...and the bomb's 1.6 GB for one greyscale band is not one


def test_pixel_limit_counts_every_frame_we_would_decode() -> None:
    gif = images.animated_gif(120, 80, frames=3)
    limit = 120 * 80 * 3 - 1
    assert rejected(gif, max_pixels=limit) == (
        "image too large: 120x80 pixels x 3 frames exceeds the limit of 28799"
    )
    # Forced to a still format only the first frame is decoded, so it fits.
    assert run(gif, max_pixels=limit, format="jpeg").frames == 1


def test_frame_limit() -> None:
    gif = images.animated_gif(120, 80, frames=3)
    assert rejected(gif, max_frames=2) == "too many frames: 3 exceeds the limit of 2"
    assert run(gif, max_frames=2, format="png").frames == 1


def test_pixel_limit_is_inclusive() -> None:
    source = images.photo_jpeg(64, 48)
    assert run(source, max_pixels=64 * 48).width == 64
    assert rejected(source, max_pixels=64 * 48 - 1) == (
        "image too large: 64x48 pixels exceeds the limit of 3071"
    )


# --- robustness ---------------------------------------------------------------

MAGIC_PREFIXES = [
    b"",
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\0\0\0\0WEBP",
    b"II*\0",
    b"\0\0\0\x1cftypavif",
    b"<svg",
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(prefix=st.sampled_from(MAGIC_PREFIXES), body=st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_cleanly(prefix: bytes, body: bytes) -> None:
    data = prefix + body
    try:
        result = run(data)
    except ImageRejected as exc:
        assert exc.message
        assert "\n" not in exc.message
    else:  # a few bytes can be a valid tiny image; then it must really be one
        decode(result)


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.75, 0.95])
@pytest.mark.parametrize(
    "make", [images.photo_jpeg, images.png, images.webp, images.avif, images.tiff]
)
def test_cut_off_downloads_are_refused_not_rehosted(make: Callable[..., bytes], cut: float) -> None:
    # Half an image re-hosted as if whole would be worse than a refusal: every format says so.
    data = make(320, 240)
    reason = rejected(data[: int(len(data) * cut)])
    assert reason.startswith("corrupt or truncated image: ")
    assert "\n" not in reason


def test_runs_in_parallel_threads() -> None:
    sources = [images.photo_jpeg(320, 240, seed=n) for n in range(4)] + [
        images.png_rgba(),
        images.animated_gif(),
        images.webp(),
        images.avif(),
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, sources * 2))
    for result in results:
        decode(result)


def test_configure_turns_the_operation_cache_off() -> None:
    imaging.configure()
    assert pyvips.cache_get_max() == 0
    assert pyvips.cache_get_max_mem() == 0
