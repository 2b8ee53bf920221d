"""What image bytes are: the real type read from the magic bytes, never from a file name.

Owns: recognising every format a table may hold (the API's four, and the ones that must be
converted: TIFF, BMP, HEIC, AVIF...), the Pillow class that opens each one header-first, the
exceptions Pillow reports a damaged file with, and safe words for both in error messages.
"""

from __future__ import annotations

import struct
import zlib
from typing import Final

from PIL import (
    AvifImagePlugin,
    BmpImagePlugin,
    DdsImagePlugin,
    GifImagePlugin,
    IcoImagePlugin,
    ImageFile,
    Jpeg2KImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    PsdImagePlugin,
    QoiImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from pipeline.wire import MediaType

API_TYPES: Final[dict[str, MediaType]] = {
    "image/jpeg": "image/jpeg",
    "image/png": "image/png",
    "image/gif": "image/gif",
    "image/webp": "image/webp",
}

# Opening through the format's own class (rather than Image.open) parses only the header, skips the
# probing of every plugin, and skips Pillow's own bomb check: that one warns through the global
# warnings machinery, which a worker thread must not touch. We check the pixel count ourselves.
OPENERS: Final[dict[str, type[ImageFile.ImageFile]]] = {
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/png": PngImagePlugin.PngImageFile,
    "image/gif": GifImagePlugin.GifImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
    "image/tiff": TiffImagePlugin.TiffImageFile,
    "image/bmp": BmpImagePlugin.BmpImageFile,
    "image/vnd.microsoft.icon": IcoImagePlugin.IcoImageFile,
    "image/x-portable-anymap": PpmImagePlugin.PpmImageFile,
    "image/jp2": Jpeg2KImagePlugin.Jpeg2KImageFile,
    "image/vnd.adobe.photoshop": PsdImagePlugin.PsdImageFile,
    "image/qoi": QoiImagePlugin.QoiImageFile,
    "image/vnd-ms.dds": DdsImagePlugin.DdsImageFile,
}
if AvifImagePlugin.SUPPORTED:
    OPENERS["image/avif"] = AvifImagePlugin.AvifImageFile

# Pillow reports a malformed or truncated file with any of these, depending on the plugin.
DECODE_ERRORS: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)

_FORMAT_NAMES: Final = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WebP",
    "image/tiff": "TIFF",
    "image/bmp": "BMP",
    "image/vnd.microsoft.icon": "ICO",
    "image/x-portable-anymap": "PNM",
    "image/jp2": "JPEG 2000",
    "image/vnd.adobe.photoshop": "PSD",
    "image/qoi": "QOI",
    "image/vnd-ms.dds": "DDS",
    "image/avif": "AVIF",
    "image/heic": "HEIC",
}

# BITMAPINFOHEADER sizes: "BM" alone is too weak a signature (text can start with it)
_BMP_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


def sniff_media_type(data: bytes) -> str | None:
    """The media type the magic bytes say, or ``None`` when they match no image format we know.

    Returns one of the API's four types, or a name for a format that needs converting
    (``image/tiff``, ``image/bmp``, ``image/heic``...). File names are never consulted.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image/tiff"
    if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "image/bmp"
    if data[:4] == b"\x00\x00\x01\x00" and len(data) >= 6 and data[4:6] != b"\x00\x00":
        return "image/vnd.microsoft.icon"
    if len(data) >= 3 and data[:1] == b"P" and data[1:2] in b"123456" and data[2:3] in b" \t\r\n#":
        return "image/x-portable-anymap"
    if data[4:8] == b"ftyp":
        # ISO base media: the brands after "ftyp" say AVIF or HEIF (mif1 alone is ambiguous)
        box = data[8 : max(16, min(int.from_bytes(data[:4], "big"), 64))]
        if b"avif" in box or b"avis" in box:
            return "image/avif"
        if data[8:12] in _HEIF_BRANDS:
            return "image/heic"
        return None
    if data.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "image/jp2"
    if data[:4] == b"8BPS":
        return "image/vnd.adobe.photoshop"
    if data[:4] == b"qoif":
        return "image/qoi"
    if data[:4] == b"DDS ":
        return "image/vnd-ms.dds"
    return None


def preview(data: bytes) -> str:
    head = data[:16]
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return repr(head.decode("ascii"))
    return head.hex(" ")


def kind_of(media_type: str) -> str:
    return _FORMAT_NAMES.get(media_type, media_type)
