"""Image preparation: sniffing, pass-through, conversion of every odd format, limits and the bomb guard."""

from __future__ import annotations

import base64
import io
import random
import struct
import time
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import (
    AvifImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from pipeline.errors import ImageError
from pipeline.payloads.images import (
    ImagePolicy,
    PreparedImage,
    base64_size,
    estimate_image_tokens,
    prepare_image,
)
from pipeline.payloads.sniff import sniff_media_type

POLICY = ImagePolicy()
RED = (220, 20, 20)
BLUE = (20, 20, 220)


def encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    """The bytes of ``img`` saved as ``fmt``."""
    buffer = io.BytesIO()
    img.save(buffer, fmt, **save)
    return buffer.getvalue()


def solid(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB", **save: Any) -> bytes:
    """A one-colour image of the given format and mode, made in memory."""
    colour: Any = {"RGB": RED, "RGBA": (*RED, 255), "CMYK": (0, 200, 200, 0), "LA": (120, 255)}.get(mode, 120)
    return encode(Image.new(mode, size, colour), fmt, **save)


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """An image of random pixels: the worst case for every encoder."""
    length = len(Image.new(mode, size).tobytes())
    return Image.frombytes(mode, size, random.Random(seed).randbytes(length))


def decode(prepared: PreparedImage) -> Image.Image:
    """The image as the API would decode it, fully loaded."""
    img = Image.open(io.BytesIO(base64.b64decode(prepared.data_b64)))
    img.load()
    return img


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose pixel data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def no_pixel_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decode fail the test."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    # the WebP and GIF plugins decode in their own load(), so patch theirs too
    for cls in (ImageFile.ImageFile, JpegImagePlugin.JpegImageFile, PngImagePlugin.PngImageFile,
                GifImagePlugin.GifImageFile, WebPImagePlugin.WebPImageFile):  # fmt: skip
        monkeypatch.setattr(cls, "load", refuse)


@pytest.mark.parametrize(
    ("fmt", "mode", "media_type"),
    [
        ("JPEG", "RGB", "image/jpeg"),
        ("JPEG", "L", "image/jpeg"),
        ("PNG", "RGB", "image/png"),
        ("PNG", "RGBA", "image/png"),
        ("PNG", "P", "image/png"),
        ("WEBP", "RGB", "image/webp"),
        ("GIF", "P", "image/gif"),
    ],
)
@pytest.mark.usefixtures("no_pixel_decode")
def test_small_api_images_pass_through_untouched(fmt: str, mode: str, media_type: str) -> None:
    """A small JPEG/PNG/WebP/GIF is sent byte for byte, without decoding its pixels."""
    data = solid(fmt, mode=mode)
    prepared = prepare_image(data, POLICY, label="x")
    assert prepared.passed_through
    assert base64.b64decode(prepared.data_b64) == data
    assert (prepared.media_type, prepared.width, prepared.height) == (media_type, 64, 48)
    assert prepared.source_bytes == len(data)


def test_png_named_jpg_is_sniffed_as_png() -> None:
    """The media type comes from the bytes, never from the name."""
    prepared = prepare_image(solid("PNG"), POLICY, label="photo.jpg")
    assert prepared.media_type == "image/png"
    assert prepared.passed_through


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (solid("JPEG"), "image/jpeg"),
        (solid("PNG"), "image/png"),
        (solid("GIF"), "image/gif"),
        (solid("WEBP"), "image/webp"),
        (solid("TIFF"), "image/tiff"),
        (solid("BMP"), "image/bmp"),
        (solid("ICO"), "image/vnd.microsoft.icon"),
        (solid("PPM"), "image/x-portable-anymap"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
        (b"BM and then some text", None),
        (b"<html><body>hi</body></html>", None),
        (b"", None),
    ],
)
def test_sniff_reads_magic_bytes(data: bytes, expected: str | None) -> None:
    """Each format is told by its magic bytes; text and unknown bytes give None."""
    assert sniff_media_type(data) == expected


def test_exif_orientation_6_is_applied() -> None:
    """A JPEG stored sideways with orientation 6 is turned upright: sides swap and the left edge goes up."""
    img = Image.new("RGB", (80, 40), BLUE)
    img.paste(RED, (0, 0, 40, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    prepared = prepare_image(encode(img, "JPEG", exif=exif.tobytes()), POLICY, label="x")
    assert not prepared.passed_through
    assert (prepared.width, prepared.height) == (40, 80)
    upright = decode(prepared).convert("RGB")
    assert upright.size == (40, 80)
    top, bottom = upright.getpixel((20, 10)), upright.getpixel((20, 70))
    assert isinstance(top, tuple)
    assert isinstance(bottom, tuple)
    assert top[0] > 150 > top[2]  # red on top
    assert bottom[2] > 150 > bottom[0]  # blue below


@pytest.mark.usefixtures("no_pixel_decode")
def test_exif_orientation_1_still_passes_through() -> None:
    """Orientation 1 needs no turning, so the JPEG is sent untouched."""
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode(Image.new("RGB", (30, 20), RED), "JPEG", exif=exif.tobytes())
    assert prepare_image(data, POLICY, label="x").passed_through


CONVERTED_CASES = [
    ("TIFF", "RGB"),
    ("TIFF", "CMYK"),
    ("TIFF", "I"),
    ("TIFF", "F"),
    ("BMP", "RGB"),
    ("BMP", "P"),
    ("ICO", "RGBA"),
    ("PPM", "RGB"),
    ("QOI", "RGB"),
    ("JPEG2000", "RGB"),
    ("PNG", "1"),
    ("PNG", "I;16"),
    ("JPEG", "CMYK"),
]
if AvifImagePlugin.SUPPORTED:
    CONVERTED_CASES.append(("AVIF", "RGB"))


@pytest.mark.parametrize(("fmt", "mode"), CONVERTED_CASES)
def test_formats_the_api_rejects_are_converted(fmt: str, mode: str) -> None:
    """TIFF, BMP, ICO, PPM, QOI, JPEG 2000, 1-bit and 16-bit PNG and CMYK JPEG become JPEG or PNG."""
    prepared = prepare_image(solid(fmt, mode=mode), POLICY, label="x")
    assert not prepared.passed_through
    out = decode(prepared)
    assert prepared.media_type == f"image/{out.format.lower()}"  # type: ignore[union-attr]
    assert out.mode in {"L", "RGB", "RGBA"}
    assert out.size == (prepared.width, prepared.height)


def test_cmyk_jpeg_becomes_rgb_jpeg() -> None:
    """A print (CMYK) JPEG is sent as an RGB JPEG with roughly the same colour."""
    prepared = prepare_image(solid("JPEG", mode="CMYK"), POLICY, label="x")
    out = decode(prepared)
    assert (prepared.media_type, out.mode) == ("image/jpeg", "RGB")
    pixel = out.getpixel((5, 5))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 200 > 80 > pixel[1]  # cyan 0, magenta and yellow 200: red


def test_16_bit_png_is_scaled_to_8_bit() -> None:
    """A 16-bit greyscale PNG keeps its top 8 bits instead of being clipped to white."""
    data = encode(Image.new("I;16", (20, 10), 40000), "PNG")
    prepared = prepare_image(data, POLICY, label="x")
    out = decode(prepared)
    assert (prepared.media_type, out.mode) == ("image/jpeg", "L")
    assert abs(out.getpixel((3, 3)) - 40000 / 257) <= 2  # type: ignore[operator]


def test_multi_frame_tiff_uses_the_first_frame() -> None:
    """Only the first page of a multi-page TIFF is sent."""
    first, second = Image.new("RGB", (30, 30), RED), Image.new("RGB", (30, 30), BLUE)
    data = encode(first, "TIFF", save_all=True, append_images=[second])
    pixel = decode(prepare_image(data, POLICY, label="x")).getpixel((15, 15))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 150 > pixel[2]


def test_palette_png_with_transparency_keeps_its_alpha() -> None:
    """A palette PNG with a transparent index becomes an RGBA PNG with the same holes."""
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, *RED] + [0] * 762)
    img.paste(0, (0, 0, 20, 40))  # left half: the transparent index
    prepared = prepare_image(encode(img, "PNG", transparency=0), POLICY, label="x")
    out = decode(prepared)
    assert (prepared.media_type, out.mode, prepared.passed_through) == ("image/png", "RGBA", False)
    assert out.getpixel((5, 5))[3] == 0  # type: ignore[index]
    assert out.getpixel((35, 5)) == (*RED, 255)


def test_grey_alpha_png_becomes_rgba_png() -> None:
    """An LA PNG with real transparency is sent as an RGBA PNG."""
    img = Image.new("LA", (30, 30), (90, 255))
    img.paste((90, 0), (0, 0, 10, 30))
    prepared = prepare_image(encode(img, "PNG"), POLICY, label="x")
    out = decode(prepared)
    assert (prepared.media_type, out.mode) == ("image/png", "RGBA")
    assert out.getpixel((2, 2))[3] == 0  # type: ignore[index]


def test_opaque_alpha_is_dropped_for_jpeg() -> None:
    """An RGBA image that must be shrunk but is fully opaque is sent as a JPEG."""
    data = encode(Image.new("RGBA", (2000, 100), (*RED, 255)), "PNG")
    prepared = prepare_image(data, POLICY, label="x")
    assert (prepared.media_type, prepared.width) == ("image/jpeg", 1568)


def test_large_photo_shrinks_to_the_long_edge_keeping_aspect() -> None:
    """A 4000x3000 JPEG is sent at 1568x1176."""
    prepared = prepare_image(solid("JPEG", size=(4000, 3000)), POLICY, label="x")
    assert (prepared.width, prepared.height) == (1568, 1176)
    assert decode(prepared).size == (1568, 1176)
    assert prepared.media_type == "image/jpeg"


def test_tall_image_shrinks_by_its_height() -> None:
    """The long edge is whichever side is longer."""
    prepared = prepare_image(solid("PNG", size=(300, 2400)), ImagePolicy(max_edge=1200), label="x")
    assert (prepared.width, prepared.height) == (150, 1200)


def test_many_images_policy_caps_the_edge_at_2000() -> None:
    """With more than 20 images a 2100 px PNG is sent at 2000 px even if the job allows 2400."""
    policy = ImagePolicy(max_edge=2400).for_many_images()
    assert policy.max_edge == 2000
    assert ImagePolicy(max_edge=1000).for_many_images().max_edge == 1000
    prepared = prepare_image(solid("PNG", size=(2100, 50)), policy, label="x")
    assert (prepared.width, prepared.height) == (2000, 48)
    full = prepare_image(solid("PNG", size=(2100, 50)), ImagePolicy(max_edge=2400), label="x")
    assert full.passed_through


def test_noisy_image_is_squeezed_under_the_base64_cap() -> None:
    """An image whose first encode is over the cap fits after lower quality and then a smaller size."""
    data = encode(noise((600, 600)), "PNG")
    policy = ImagePolicy(max_base64_bytes=60_000)
    first = base64_size(len(encode(noise((600, 600)), "JPEG", quality=85)))
    assert first > 60_000
    prepared = prepare_image(data, policy, label="x")
    assert len(prepared.data_b64) <= 60_000
    assert decode(prepared).size == (prepared.width, prepared.height)
    assert prepared.width < 600  # quality alone was not enough for pure noise at this cap


def test_noisy_transparent_image_is_squeezed_as_png() -> None:
    """A PNG with real transparency stays PNG and shrinks until it fits."""
    img = noise((400, 400), "RGBA", seed=1)
    prepared = prepare_image(encode(img, "PNG"), ImagePolicy(max_base64_bytes=100_000), label="x")
    assert prepared.media_type == "image/png"
    assert len(prepared.data_b64) <= 100_000


def test_pass_through_needs_to_fit_the_cap() -> None:
    """An API-type image that is small in pixels but over the cap is re-encoded."""
    data = encode(noise((200, 200)), "PNG")
    prepared = prepare_image(data, ImagePolicy(max_base64_bytes=len(data)), label="x")
    assert not prepared.passed_through
    assert len(prepared.data_b64) <= len(data)


def test_impossible_cap_is_an_error() -> None:
    """When nothing fits, the error says so rather than looping."""
    with pytest.raises(ImageError, match=r"x: cannot get the image under 100 bytes"):
        prepare_image(encode(noise((100, 100)), "PNG"), ImagePolicy(max_base64_bytes=100), label="x")


@pytest.mark.usefixtures("no_pixel_decode")
def test_decompression_bomb_is_refused_from_the_header() -> None:
    """A PNG claiming 50000x50000 is refused by its header, fast, with no pixel decode."""
    data = png_header_only(50_000, 50_000)
    assert len(data) < 100
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"bomb\.png: image is 50000×50000 = 2,500,000,000 pixels"):
        prepare_image(data, POLICY, label="bomb.png")
    assert time.perf_counter() - started < 0.5


@pytest.mark.usefixtures("no_pixel_decode")
def test_pixel_limit_comes_from_the_policy() -> None:
    """A lowered max_source_pixels refuses an ordinary image before decoding it."""
    with pytest.raises(
        ImageError, match=r"image is 4000×3000 = 12,000,000 pixels, over the limit of 1,000,000"
    ):
        prepare_image(solid("JPEG", size=(4000, 3000)), ImagePolicy(max_source_pixels=1_000_000), label="x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"^x: empty file$"),
        (b"just some text, not an image", r"^x: not an image \(starts with 'just some text, '\)$"),
        (b"\x00\x01\x02\x03\x04binary", r"^x: not an image \(starts with 00 01 02 03"),
        (solid("JPEG")[:60], r"^x: cannot read JPEG, truncated or corrupt"),
        (solid("JPEG", size=(300, 300))[:-300], r"^x: cannot read JPEG, truncated or corrupt"),
        (solid("PNG", size=(300, 300))[:-40], r"^x: cannot read PNG, truncated or corrupt"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", r"^x: HEIC images are not supported"),
    ],
)
def test_bad_bytes_are_clear_errors(data: bytes, message: str) -> None:
    """Empty, non-image, truncated and unsupported bytes raise ImageError naming the label and reason."""
    with pytest.raises(ImageError, match=message) as caught:
        prepare_image(data, POLICY, label="x")
    assert caught.value.error_type == "image_error"


def _two_frame_gif(size: tuple[int, int]) -> bytes:
    frames = [Image.new("RGB", size, RED), Image.new("RGB", size, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_animated_gif_passes_through_when_it_fits() -> None:
    """An animated GIF that fits is sent as is; the API reads its first frame."""
    data = _two_frame_gif((40, 40))
    prepared = prepare_image(data, POLICY, label="x")
    assert (prepared.passed_through, prepared.media_type) == (True, "image/gif")


def test_animated_gif_is_converted_from_its_first_frame() -> None:
    """An animated GIF that must shrink becomes a JPEG of the first frame."""
    prepared = prepare_image(_two_frame_gif((64, 64)), ImagePolicy(max_edge=32), label="x")
    assert (prepared.media_type, prepared.width) == ("image/jpeg", 32)
    pixel = decode(prepared).getpixel((16, 16))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 150 > pixel[2]


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((1092, 1092), 1590), ((1568, 1176), 2459), ((750, 1), 1), ((751, 1), 2), ((1, 1), 1)],
)
def test_estimate_image_tokens(size: tuple[int, int], tokens: int) -> None:
    """Tokens are ceil(width*height/750), at least 1."""
    assert estimate_image_tokens(*size) == tokens


def test_policy_rejects_nonsense() -> None:
    """A policy with a zero edge or an out-of-range quality is a programming error."""
    with pytest.raises(ValueError, match="max_edge"):
        ImagePolicy(max_edge=0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ImagePolicy(jpeg_quality=101)


FORMAT_MODES = [
    ("PNG", "RGB"),
    ("PNG", "RGBA"),
    ("PNG", "L"),
    ("PNG", "LA"),
    ("PNG", "P"),
    ("PNG", "1"),
    ("PNG", "I;16"),
    ("JPEG", "RGB"),
    ("JPEG", "L"),
    ("JPEG", "CMYK"),
    ("GIF", "P"),
    ("GIF", "L"),
    ("WEBP", "RGB"),
    ("WEBP", "RGBA"),
    ("TIFF", "RGB"),
    ("TIFF", "CMYK"),
    ("TIFF", "I;16"),
    ("BMP", "RGB"),
    ("BMP", "P"),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    format_mode=st.sampled_from(FORMAT_MODES),
    size=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    noisy=st.booleans(),
    max_edge=st.integers(8, 400),
    cap=st.sampled_from([20_000, 5_242_880]),
)
def test_output_always_decodes_within_limits(
    format_mode: tuple[str, str], size: tuple[int, int], noisy: bool, max_edge: int, cap: int
) -> None:
    """Whatever goes in, what comes out decodes, sniffs as its declared type and respects edge and cap."""
    fmt, mode = format_mode
    img = noise(size, mode) if noisy else Image.new(mode, size)
    data = encode(img, fmt)
    prepared = prepare_image(data, ImagePolicy(max_edge=max_edge, max_base64_bytes=cap), label="x")
    raw = base64.b64decode(prepared.data_b64)
    assert sniff_media_type(raw) == prepared.media_type
    assert len(prepared.data_b64) <= cap
    assert max(prepared.width, prepared.height) <= max_edge
    out = decode(prepared)
    assert out.size == (prepared.width, prepared.height)
    if prepared.passed_through:
        assert raw == data
