"""Files that appear whole or not at all: written beside their target, fsynced, renamed over it.

The one home of "write a temporary file, fsync it, rename it, fsync the folder", used for
``results.parquet``, ``job.json``, exports and the review page, and of the fsync of a file that
was appended to (a batch's rows file, a journal).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import OutputError


def replace_file(target: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``target``, then make it ``target`` in one step.

    A reader (or a crash) sees the old file or the new one, never a part. The folder is created
    when missing.

    :raises OutputError: naming ``target`` when any step fails; the temporary file is removed.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None


def write_text(target: Path, text: str) -> None:
    """``text`` as ``target``'s whole new content (UTF-8), atomically."""

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    replace_file(target, write)


def fsync_path(path: Path) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; platforms that refuse a directory fsync are let be."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
