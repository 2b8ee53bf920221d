"""Small JPEG thumbnails of the images behind image cells, for the review gallery.

Owns: fetching each distinct cell once (local paths, ``data:`` URIs, http(s) URLs and objects in
object storage, through ``rows.media``), shrinking it to a small JPEG off the event loop (EXIF
orientation applied, alpha laid on white), and saying why a cell has no thumbnail (an image that
was embedded in the input is kept in the output only as its digest). A thumbnail is made when the
report is written; viewing the report needs no network.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageError
from pipeline.rows.cells import DIGEST_PREFIX
from pipeline.rows.media import download_client, load_image, load_stored
from pipeline.rows.storage import ObjectStorage, is_object_url, join_url

THUMB_EDGE = 160
THUMB_QUALITY = 60
FETCH_TIMEOUT_S = 20.0
MAX_PIXELS = 100_000_000  # refuse to decode past this (a decompression bomb would take the report down)


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A cell's thumbnail (JPEG bytes), or why there is none."""

    jpeg: bytes | None
    problem: str | None = None


def make_thumbnail(data: bytes, edge: int = THUMB_EDGE, quality: int = THUMB_QUALITY) -> bytes:
    """``data`` (any format Pillow reads) as a JPEG whose long edge is at most ``edge`` pixels."""
    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} is too many pixels for a thumbnail")
        # JPEG can decode at 1/2, 1/4 or 1/8 scale: far faster than decoding everything and shrinking
        img.draft("RGB", (edge * 2, edge * 2))
        picture = ImageOps.exif_transpose(img)
        picture.thumbnail((edge, edge), Image.Resampling.BILINEAR, reducing_gap=2.0)
        if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
            rgba = picture.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            picture = flat
        elif picture.mode != "RGB":
            picture = picture.convert("RGB")
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=quality, optimize=True)
        return out.getvalue()


def thumbnails(
    cells: Iterable[str], base_dir: Path, edge: int = THUMB_EDGE, *, base_url: str | None = None
) -> dict[str, Thumbnail]:
    """A thumbnail (or a problem) for each distinct cell, made concurrently.

    :param base_url: where relative paths resolve when the input lives in object storage.

    Callable from inside a running event loop too (a notebook): the work then gets a thread of its own.
    """
    work = sorted(set(cells))
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_thumbnails(work, base_dir, edge, base_url))
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _thumbnails(work, base_dir, edge, base_url)).result()


async def _thumbnails(
    cells: list[str], base_dir: Path, edge: int, base_url: str | None
) -> dict[str, Thumbnail]:
    # Pillow releases the GIL while decoding, so threads use every core
    slots = asyncio.Semaphore(max(2, (os.cpu_count() or 2) * 2))
    storage = ObjectStorage()
    async with download_client() as http:

        async def fetch(cell: str) -> bytes:
            if cell.startswith(DIGEST_PREFIX):
                raise ImageError("embedded in the input; the output keeps only its sha256")
            stored = cell if is_object_url(cell) else None
            if (
                stored is None
                and base_url is not None
                and "://" not in cell
                and not cell.startswith(("/", "data:"))
            ):
                stored = join_url(base_url, cell)
            if stored is not None:
                return await load_stored(stored, storage)
            return await load_image(cell, base_dir=base_dir, http=http, timeout_s=FETCH_TIMEOUT_S)

        async def one(cell: str) -> tuple[str, Thumbnail]:
            async with slots:
                try:
                    data = await fetch(cell)
                    jpeg = await asyncio.to_thread(make_thumbnail, data, edge)
                except ImageError as exc:
                    return cell, Thumbnail(None, str(exc))
                except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                    return cell, Thumbnail(None, f"cannot make a thumbnail: {exc}")
                return cell, Thumbnail(jpeg)

        try:
            results = await asyncio.gather(*(one(cell) for cell in cells))
        finally:
            storage.close()
    return dict(results)
