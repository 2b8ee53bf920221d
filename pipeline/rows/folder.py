"""Image files as an input: a glob of images (``photos/**/*.jpg``), on disk or in object storage.

One row per file, in path order, with three columns: ``image_path`` (relative to the glob's fixed
prefix, ``/``-separated), ``file_name`` and ``file_size`` (bytes). The row id defaults to
``image_path``, and every row's relative paths resolve against the prefix, so ``images =
["image_path"]`` and ``{file_name}`` in the prompt work as they are. Files are listed, never read,
here: a million photos cost a listing, not a download.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polars as pl

from pipeline.rows.storage import ObjectInfo, ObjectUrl

# what the image preparation recognises (payloads.sniff), by the names files usually carry
IMAGE_SUFFIXES: Final = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif",
    ".avif", ".jp2", ".j2k", ".qoi", ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".psd", ".dds",
})  # fmt: skip
PATH_COLUMN = "image_path"
COLUMNS: Final = (PATH_COLUMN, "file_name", "file_size")


@dataclass(frozen=True, slots=True)
class Folder:
    """The listed images: a frame of their columns, and where their relative paths start."""

    frame: pl.LazyFrame
    base_dir: Path
    base_url: str | None


def fixed_prefix(pattern: str) -> str:
    """The folders of a glob before its first wildcard: ``photos/`` of ``photos/**/*.jpg``, else ``""``."""
    fixed: list[str] = []
    for part in pattern.split("/")[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed) + "/" if fixed else ""


def local_folder(pattern: str, files: Sequence[Path]) -> Folder:
    """The images among local ``files`` that ``pattern`` matched, relative to its fixed prefix."""
    prefix = Path(fixed_prefix(pattern) or ".") if glob.has_magic(pattern) else files[0].parent
    rows = [(path.relative_to(prefix).as_posix(), path.name, path.stat().st_size) for path in files]
    return Folder(_frame(rows), prefix, None)


def remote_folder(pattern: str, objects: Sequence[ObjectInfo]) -> Folder:
    """The images among listed ``objects`` that ``pattern`` matched, relative to its fixed prefix."""
    parsed = ObjectUrl.parse(pattern)
    if any(glob.has_magic(part) for part in parsed.key.split("/")):
        prefix_key = fixed_prefix(parsed.key)
    else:
        prefix_key = parsed.key.rpartition("/")[0] + "/" if "/" in parsed.key else ""
    base = str(ObjectUrl(parsed.scheme, parsed.bucket, prefix_key))
    rows = []
    for info in objects:
        key = ObjectUrl.parse(info.url).key
        relative = key[len(prefix_key) :]
        rows.append((relative, relative.rsplit("/", 1)[-1], info.size))
    return Folder(_frame(rows), Path.cwd(), base)


def _frame(rows: list[tuple[str, str, int]]) -> pl.LazyFrame:
    rows.sort()
    return pl.DataFrame(
        {
            PATH_COLUMN: [row[0] for row in rows],
            "file_name": [row[1] for row in rows],
            "file_size": [row[2] for row in rows],
        },
        schema={PATH_COLUMN: pl.String, "file_name": pl.String, "file_size": pl.Int64},
    ).lazy()
