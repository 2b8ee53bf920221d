"""Image preparation: bytes in, (media type, base64) out, within the Messages API's vision limits.

Owns: the decompression-bomb guard, the decision to send an image untouched, and the conversion
path (EXIF orientation, mode normalisation, downscaling, one encode, then lower quality and smaller
sizes until the base64 fits). What the bytes are is :mod:`pipeline.payloads.sniff`'s to say. Pure
and CPU-bound, so callers run it in a thread. Knows nothing about rows, files or HTTP.

The API takes JPEG, PNG, GIF and WebP only, checks the declared media type against the magic bytes
(a mismatch fails the whole request), caps base64 at 5 MB and sides at 8000 px (2000 px when a request
holds more than 20 images). Everything else is converted: PNG when the image really has
transparency, JPEG otherwise.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, replace
from typing import Final

from PIL import Image, ImageFile

from pipeline.errors import ImageError
from pipeline.payloads.sniff import API_TYPES, DECODE_ERRORS, OPENERS, kind_of, preview, sniff_media_type
from pipeline.wire import MediaType

MAX_SIDE: Final = 8000
MANY_IMAGES_MAX_SIDE: Final = 2000
# JPEG qualities are stepped down to this before the image is made smaller instead
_MIN_JPEG_QUALITY: Final = 40
_QUALITY_STEP: Final = 15
_MAX_SHRINK_STEPS: Final = 8
_ORIENTATION: Final = 0x0112

_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    """Limits an image must meet before it is sent.

    :param max_edge: long edge in pixels after resizing (never above the API's 8000).
    :param max_base64_bytes: cap on the base64 text; the API rejects more than 5 MB.
    :param max_source_pixels: decompression-bomb guard, checked on the header before any decode.
    :param jpeg_quality: quality of the first JPEG encode; lowered only when the result is too big.
    :param max_pixels: when set, an image with more pixels is shrunk (aspect kept) to at most this many;
        image tokens grow with pixels, so this trades detail for cost.
    """

    max_edge: int = 1568
    max_base64_bytes: int = 5_242_880
    max_source_pixels: int = 178_956_970
    jpeg_quality: int = 85
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, not {self.max_pixels}")
        if self.max_edge < 1:
            raise ValueError(f"max_edge must be at least 1, not {self.max_edge}")
        if self.max_base64_bytes < 4:
            raise ValueError(f"max_base64_bytes must be at least 4, not {self.max_base64_bytes}")
        if self.max_source_pixels < 1:
            raise ValueError(f"max_source_pixels must be at least 1, not {self.max_source_pixels}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, not {self.jpeg_quality}")

    def for_many_images(self) -> ImagePolicy:
        """This policy for a request with more than 20 images, where every side must be ≤ 2000 px."""
        return replace(self, max_edge=min(self.max_edge, MANY_IMAGES_MAX_SIDE))


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An image ready for an ``image`` block; ``width``/``height`` are the size as sent.

    :param source: set when the image travels by reference instead of inline: a Files API id
        (``data_b64`` is then empty), or a URL the API fetches (the image was never downloaded, so
        its size is unknown: ``width`` and ``height`` are 0).
    """

    media_type: MediaType
    data_b64: str
    width: int
    height: int
    source_bytes: int
    passed_through: bool
    source: dict[str, str] | None = None

    @property
    def size_known(self) -> bool:
        """Whether the pixels are known (False for a URL sent without downloading it)."""
        return self.width > 0 and self.height > 0


def url_image(url: str) -> PreparedImage:
    """An image the API fetches from ``url`` itself (never downloaded here: size and type unknown)."""
    return PreparedImage("image/jpeg", "", 0, 0, 0, passed_through=True, source={"type": "url", "url": url})


def estimate_image_tokens(width: int, height: int) -> int:
    """Input tokens an image of this size costs: ``ceil(width*height/750)``, the docs' formula, min 1."""
    return max(1, -(-width * height // 750))


def base64_size(n: int) -> int:
    """Length of the base64 text for ``n`` bytes (padded): ``4*ceil(n/3)``."""
    return 4 * ((n + 2) // 3)


def prepare_image(data: bytes, policy: ImagePolicy, *, label: str) -> PreparedImage:
    """Make ``data`` acceptable to the API: send it untouched when it already is, else convert it.

    :param label: names the image in error messages (``"photo pics/a.png"``).
    :raises ImageError: ``"{label}: <reason>"`` for an empty, non-image, unsupported, corrupt or
        oversized image, or one that cannot be made to fit the base64 cap.
    """
    if not data:
        raise ImageError(f"{label}: empty file")
    sniffed = sniff_media_type(data)
    if sniffed is None:
        raise ImageError(f"{label}: not an image (starts with {preview(data)})")
    kind = kind_of(sniffed)
    opener = OPENERS.get(sniffed)
    if opener is None:
        raise ImageError(f"{label}: {kind} images are not supported here; convert it to JPEG or PNG first")
    try:
        # The plugin class parses the header only; pixels are decoded on load(), if ever.
        with opener(io.BytesIO(data)) as img:
            _check_pixels(img.size, policy, label)
            media_type = API_TYPES.get(sniffed)
            if media_type is not None and _can_pass_through(img, media_type, data, policy):
                return PreparedImage(
                    media_type=media_type,
                    data_b64=base64.b64encode(data).decode("ascii"),
                    width=img.width,
                    height=img.height,
                    source_bytes=len(data),
                    passed_through=True,
                )
            return _convert(img, sniffed, len(data), policy, label)
    except Image.DecompressionBombError as exc:
        # only reachable through a GIF frame larger than its canvas, or a TIFF tile; still a bomb
        raise ImageError(f"{label}: image has too many pixels ({exc})") from None
    except DECODE_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"{label}: cannot read {kind}, truncated or corrupt ({reason})") from None


def _pixel_limit(policy: ImagePolicy) -> int:
    # Pillow checks its own MAX_IMAGE_PIXELS in a few plugins (TIFF tiles, GIF frames) and would
    # warn past it; never allow more than that, so its warning cannot fire from our threads.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return policy.max_source_pixels if pillow_limit is None else min(policy.max_source_pixels, pillow_limit)


def _check_pixels(size: tuple[int, int], policy: ImagePolicy, label: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{label}: image is {width}×{height}, it has no pixels")
    limit = _pixel_limit(policy)
    if width * height > limit:
        raise ImageError(
            f"{label}: image is {width}×{height} = {width * height:,} pixels, over the limit of {limit:,}"
        )


def _max_edge(policy: ImagePolicy) -> int:
    return min(policy.max_edge, MAX_SIDE)


def _can_pass_through(
    img: ImageFile.ImageFile, media_type: MediaType, data: bytes, policy: ImagePolicy
) -> bool:
    """True when the original bytes are already what the API takes and the caller asked for."""
    if base64_size(len(data)) > policy.max_base64_bytes:
        return False
    if fit_size(img.size, policy) != img.size:
        return False
    if _header_orientation(img) != 1:
        return False
    return _mode_is_plain(img, media_type, data) and _looks_complete(data, media_type)


def _header_orientation(img: ImageFile.ImageFile) -> int:
    """EXIF orientation from the header alone; 0 when the EXIF block is unreadable (so: convert).

    ``img.getexif()`` is avoided on purpose: for PNG it decodes the pixels to look for a late eXIf.
    """
    raw = img.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = exif.get(_ORIENTATION, 1)
    except DECODE_ERRORS:
        return 0
    return value if isinstance(value, int) else 0


def _mode_is_plain(img: ImageFile.ImageFile, media_type: MediaType, data: bytes) -> bool:
    """Whether the pixel layout is one every decoder takes as is; when unsure, say no (convert)."""
    if media_type == "image/jpeg":
        # CMYK (print) JPEGs decode with wrong colours or not at all in many decoders
        return img.mode in {"L", "RGB"}
    if media_type == "image/png":
        if "transparency" in img.info or getattr(img, "n_frames", 1) != 1:
            return False  # palette/colour-key transparency, or an animated PNG
        if data[12:16] != b"IHDR":
            return False  # IHDR must come first; a decoder may refuse a file where it does not
        bit_depth, colour_type = data[24], data[25]
        if colour_type == 3:
            return bit_depth <= 8 and img.mode == "P"
        # 8-bit grey, RGB and RGBA only: 16-bit, 1/2/4-bit grey and grey+alpha are converted
        return bit_depth == 8 and colour_type in {0, 2, 6} and img.mode in {"L", "RGB", "RGBA"}
    if media_type == "image/gif":
        return img.mode in {"P", "L"}  # the API uses the first frame
    return img.mode in {"RGB", "RGBA"} and getattr(img, "n_frames", 1) == 1


def _looks_complete(data: bytes, media_type: MediaType) -> bool:
    """A cheap check that the file was not cut short: a truncated image would fail the whole request.

    Only the end markers are checked; a file that fails this is decoded, which finds the real damage.
    """
    tail = data[-64:].rstrip(b"\x00")
    if media_type == "image/jpeg":
        return tail.endswith(b"\xff\xd9")
    if media_type == "image/png":
        return tail.endswith(b"IEND\xaeB`\x82")
    if media_type == "image/gif":
        return tail.endswith(b";")
    return int.from_bytes(data[4:8], "little") + 8 <= len(data)


def fit_size(size: tuple[int, int], policy: ImagePolicy) -> tuple[int, int]:
    """The size an image of ``size`` is sent at under ``policy``: long edge, then pixel count."""
    width, height = _fit(size, _max_edge(policy))
    limit = policy.max_pixels
    if limit is not None and width * height > limit:
        scale = math.sqrt(limit / (width * height))
        width, height = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    return (width, height)


def _fit(size: tuple[int, int], edge: int) -> tuple[int, int]:
    width, height = size
    if max(width, height) <= edge:
        return size
    scale = edge / max(width, height)
    return (max(1, min(edge, round(width * scale))), max(1, min(edge, round(height * scale))))


def _convert(
    img: ImageFile.ImageFile, sniffed: str, source_bytes: int, policy: ImagePolicy, label: str
) -> PreparedImage:
    """Decode (frame 0 only), orient, normalise, shrink and encode ``img`` to fit ``policy``."""
    target = fit_size(img.size, policy)
    if sniffed == "image/jpeg" and target != img.size:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below target: a 12 MP photo costs a 3 MP decode
        img.draft("RGB", target)
    img.load()
    orientation = _loaded_orientation(img)
    icc = img.info.get("icc_profile")
    work = _normalise_mode(img)
    if work.size != target:
        # reducing_gap: a fast integer box reduce first, then BICUBIC over the last factor of 3.
        # BICUBIC, as Pillow's own thumbnail(): after a draft decode at 1/2 it is as close to a
        # full-resolution LANCZOS reference (35.2 dB PSNR on 12 MP photos) as the plain
        # decode-everything path, and 10 ms (of ~60) cheaper than LANCZOS (see bench_images).
        work = work.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)
    if orientation in _TRANSPOSE:
        # after the resize, so fewer pixels move; the long edge is the same either way
        work = work.transpose(_TRANSPOSE[orientation])
    if work.mode == "RGBA" and _alpha_is_opaque(work):
        work = work.convert("RGB")
    media_type, encoded, (width, height) = _encode_to_fit(work, policy, label, _matching_icc(icc, work.mode))
    return PreparedImage(
        media_type=media_type,
        data_b64=encoded,
        width=width,
        height=height,
        source_bytes=source_bytes,
        passed_through=False,
    )


def _loaded_orientation(img: Image.Image) -> int:
    # after load(): finds a PNG eXIf written after the pixels, and TIFF's own orientation tag
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except DECODE_ERRORS:
        return 1  # a broken EXIF block is no reason to lose the image
    return value if isinstance(value, int) else 1


def _alpha_is_opaque(img: Image.Image) -> bool:
    extrema = img.getchannel("A").getextrema()
    assert isinstance(extrema[0], int)
    return extrema[0] == 255


def _matching_icc(icc: object, mode: str) -> bytes | None:
    """The source's ICC profile when it describes the output's colour space (RGB or grey), else None."""
    if not isinstance(icc, bytes) or len(icc) < 20:
        return None
    space = icc[16:20]
    if (space == b"RGB " and mode in {"RGB", "RGBA"}) or (space == b"GRAY" and mode == "L"):
        return icc
    return None


def _normalise_mode(img: Image.Image) -> Image.Image:
    """``img`` as L, RGB or RGBA: the modes JPEG and PNG encoders take and every decoder reads."""
    mode = img.mode
    keyed = "transparency" in img.info
    if mode in {"L", "RGB"} and not keyed:
        return img
    if mode == "RGBA":
        return img
    if mode in {"LA", "La", "PA", "RGBa"} or (keyed and mode in {"P", "L", "RGB", "1"}):
        return img.convert("RGBA")
    if mode == "P":
        return img.convert("RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16"):
        # 16-bit samples: keep the top 8 bits, as a viewer shows them (convert("L") would clip)
        return img.convert("I").point(lambda v: v / 257).convert("L")
    if mode in {"I", "F"}:
        return _stretch_to_l(img)
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _stretch_to_l(img: Image.Image) -> Image.Image:
    """32-bit integer or float grey to 8-bit: keep values already in range, else scale the range."""
    low, high = img.getextrema()
    assert isinstance(low, (int, float))
    assert isinstance(high, (int, float))
    if img.mode == "F" and low >= 0 and high <= 1:
        scale, offset = 255.0, 0.0
    elif low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    elif low >= 0 and high <= 65535:
        scale, offset = 1 / 257, 0.0
    else:
        scale = 255 / (high - low) if high > low else 1.0
        offset = -low * scale
    source = img if img.mode == "F" else img.convert("F")
    return source.point(lambda v: v * scale + offset).convert("L")


def _encode_to_fit(
    img: Image.Image, policy: ImagePolicy, label: str, icc: bytes | None
) -> tuple[MediaType, str, tuple[int, int]]:
    """Encode once; if the base64 is over the cap, lower the JPEG quality, then the size (bounded)."""
    cap = policy.max_base64_bytes
    if img.mode == "RGBA":
        media_type: MediaType = "image/png"
        qualities = [0]  # unused for PNG
    else:
        media_type = "image/jpeg"
        qualities = [policy.jpeg_quality]
        while qualities[-1] > _MIN_JPEG_QUALITY:
            qualities.append(max(_MIN_JPEG_QUALITY, qualities[-1] - _QUALITY_STEP))
    for quality in qualities:
        encoded = _encode(img, media_type, quality, icc)
        if base64_size(len(encoded)) <= cap:
            return media_type, base64.b64encode(encoded).decode("ascii"), img.size
    for _ in range(_MAX_SHRINK_STEPS):
        # encoded size is roughly proportional to the pixel count, so scale by the square root
        ratio = min(0.9, max(0.3, math.sqrt(cap / base64_size(len(encoded))) * 0.95))
        size = (max(1, int(img.width * ratio)), max(1, int(img.height * ratio)))
        if size == img.size:
            break
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        encoded = _encode(img, media_type, qualities[-1], icc)
        if base64_size(len(encoded)) <= cap:
            return media_type, base64.b64encode(encoded).decode("ascii"), img.size
    raise ImageError(
        f"{label}: cannot get the image under {cap:,} bytes of base64 (still {base64_size(len(encoded)):,} "
        f"bytes at {img.width}×{img.height})"
    )


def _encode(img: Image.Image, media_type: MediaType, quality: int, icc: bytes | None) -> bytes:
    buffer = io.BytesIO()
    extra = {"icc_profile": icc} if icc else {}
    if media_type == "image/png":
        img.save(buffer, "PNG", compress_level=6, **extra)
    else:
        # optimize=False: the extra Huffman pass costs time and saves only a few percent
        img.save(buffer, "JPEG", quality=quality, optimize=False, **extra)
    return buffer.getvalue()
