"""An exclusive lock on an output directory, so two runs never send the same rows twice.

``flock`` on ``OUTPUT/.lock``: the kernel drops it when the holder dies (even by ``kill -9``), so a
lock left by a killed run is never stale. The file holds the holder's pid and start time for the
message a second run prints.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import OutputError

LOCK_FILE = ".lock"


@contextmanager
def locked_output(directory: Path) -> Iterator[None]:
    """Hold the directory's lock for the block; OutputError naming the holder if another run has it."""
    path = directory / LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write to output directory {directory}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{directory} is in use by another run ({_holder(path)})") from None
        now = datetime.now(UTC).isoformat(timespec="seconds")
        stamp = json.dumps({"pid": os.getpid(), "started_at": now})
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"pid {info['pid']}, started {info['started_at']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def lock_holder(directory: Path) -> str | None:
    """Who holds the directory's lock right now ("pid N, started T"), or None; changes nothing."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(path)
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None
