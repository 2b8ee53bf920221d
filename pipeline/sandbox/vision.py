"""Image checks as the hosted API makes them: media type, base64 size, magic bytes and pixel sides.

Only headers are read (Pillow's format plugins parse the header and stop), so a request full of
images costs a base64 decode and a few header reads, never a pixel decode.
"""

from __future__ import annotations

import binascii
import io
from base64 import b64decode
from typing import Any

from PIL import GifImagePlugin, Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from pipeline.sandbox.apierrors import RequestError

MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_BASE64_BYTES = 5_242_880
MAX_SIDE = 8000
MANY_IMAGES = 20  # more images than this in one request and every side must fit MANY_IMAGES_MAX_SIDE
MANY_IMAGES_MAX_SIDE = 2000
MAX_IMAGES = 100

_MEDIA_TYPE_MESSAGE = "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"

# Opening through the format's own class skips Pillow's probing of every plugin and its
# decompression-bomb warning (a global warnings filter is not ours to touch in a server thread).
_OPENERS: dict[str, type[ImageFile.ImageFile]] = {
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/png": PngImagePlugin.PngImageFile,
    "image/gif": GifImagePlugin.GifImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
}


def sniff_media_type(raw: bytes) -> str | None:
    """The media type the magic bytes say, or ``None`` for anything the API does not take."""
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw.startswith(b"\x89PNG"):
        return "image/png"
    if raw.startswith(b"GIF8"):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return None


def read_size(raw: bytes, media_type: str) -> tuple[int, int] | None:
    """Width and height from the image header, or ``None`` when the header cannot be parsed."""
    try:
        with _OPENERS[media_type](io.BytesIO(raw)) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        # only GIF frames larger than the canvas get here; they are far past 8000 px anyway
        return (MAX_SIDE + 1, MAX_SIDE + 1)
    except (OSError, SyntaxError, ValueError, IndexError, KeyError, EOFError):
        # Pillow reports a malformed header with any of these, depending on the plugin
        return None
    return (width, height)


def check_base64_image(source: dict[str, Any], path: str) -> tuple[int, int]:
    """Validate a ``{"type":"base64",...}`` image source and return its (width, height).

    :param path: JSON path of the image block, e.g. ``messages.0.content.1``.
    :raises RequestError: with the hosted API's message for the first problem found.
    """
    where = f"{path}.image.source.base64"
    extra = set(source) - {"type", "media_type", "data"}
    if extra:
        raise RequestError(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
    media_type = source.get("media_type")
    if media_type not in MEDIA_TYPES:
        raise RequestError(f"{where}.media_type: {_MEDIA_TYPE_MESSAGE}")
    data = source.get("data")
    if not isinstance(data, str):
        raise RequestError(f"{where}.data: Input should be a valid string")
    if len(data) > MAX_BASE64_BYTES:
        # checked before decoding, as the API does, so an oversized image costs nothing
        raise RequestError(
            f"{where}.data: image exceeds 5 MB maximum: {len(data)} bytes > {MAX_BASE64_BYTES} bytes"
        )
    try:
        raw = b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}.data: Invalid base64 data") from None
    if not raw:
        raise RequestError(f"{where}.data: Image data is empty")
    actual = sniff_media_type(raw)
    if actual is None:
        raise RequestError(f"{where}.data: Could not process image")
    if actual != media_type:
        raise RequestError(
            f"{where}.data: The image was specified using the {media_type} media type, "
            f"but the image appears to be a {actual} image"
        )
    size = read_size(raw, actual)
    if size is None:
        raise RequestError(f"{where}.data: Could not process image")
    if max(size) > MAX_SIDE:
        raise RequestError(
            f"{where}.data: At least one of the image dimensions exceed max allowed size: {MAX_SIDE} pixels"
        )
    return size


def check_image_set(sizes: list[tuple[str, int, int]]) -> None:
    """Rules over all images of one request: the count cap and the many-image side limit.

    :param sizes: (JSON path, width, height) of every image block, in request order.
    """
    if len(sizes) > MAX_IMAGES:
        raise RequestError(f"messages: Too many images in request: {len(sizes)} > {MAX_IMAGES} maximum")
    if len(sizes) > MANY_IMAGES:
        for path, width, height in sizes:
            if max(width, height) > MANY_IMAGES_MAX_SIDE:
                raise RequestError(
                    f"{path}.image.source.base64.data: At least one of the image dimensions exceed max "
                    f"allowed size for many-image requests: {MANY_IMAGES_MAX_SIDE} pixels"
                )
