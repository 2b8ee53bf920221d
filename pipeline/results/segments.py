"""A run's journal as immutable segments in object storage: staged locally, uploaded as the run goes.

:class:`SegmentedJournal` is a :class:`~pipeline.results.journal.Journal` (same ``append``,
``flush`` and ``close``) that writes each segment to a local file first, exactly like a local run's
journal, and closes it into a *segment* every ``segment_rows`` results or ``segment_s`` seconds,
whichever comes first. :class:`SegmentUploader` uploads closed segments in order from one
background thread, each as a create-only object ``OUTPUT/.journal/<name>.arrows`` (never
overwritten: two writers cannot clobber each other's segments), retrying what fails; an uploaded
segment moves from the staging folder's ``.journal/`` to its ``.segments/`` (the local copy of
what the bucket holds). Segment names sort in the order they were written:
``<run start>-<pid>-<sequence>.arrows``.

What ``kill -9`` can lose: nothing that reached the bucket, and nothing on this machine either,
since the next run here uploads what its staging folder still holds. Only if the machine (and its
staging folder) is lost too are the results since the last uploaded segment gone: at most
``segment_rows`` rows or ``segment_s`` seconds of them (1,000 rows or 10 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from pipeline.errors import OutputError
from pipeline.records import Result
from pipeline.results.journal import Journal
from pipeline.rows.storage import ObjectExists, ObjectStorage, ObjectStoreError

log = logging.getLogger("pipeline.run")

UPLOAD_ATTEMPTS = 5
_STOP = Path()


class SegmentUploader:
    """Uploads closed segments in order from one background thread; see the module docstring.

    :param remote_dir: the bucket folder segments go to (``s3://bucket/out/.journal``).
    :param uploaded_dir: where a segment's local file moves once it is in the bucket.
    """

    def __init__(
        self,
        storage: ObjectStorage,
        remote_dir: str,
        uploaded_dir: Path,
        *,
        after_each: Callable[[], None] = lambda: None,
    ) -> None:
        """:param after_each: called in the upload thread after each segment (side files go then)."""
        self.storage = storage
        self.after_each = after_each
        self.remote_dir = remote_dir.rstrip("/")
        self.uploaded_dir = uploaded_dir
        self.uploaded = 0
        self.failed: list[Path] = []
        self._queue: queue.Queue[Path] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, path: Path) -> None:
        """Queue a closed segment for upload."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="pipeline-segments", daemon=True)
            self._thread.start()
        self._queue.put(path)

    def upload_now(self, paths: Sequence[Path]) -> list[Path]:
        """Upload segments in this thread (a run's start: what a killed run here left); returns failures."""
        return [path for path in paths if not self._upload(path, attempts=UPLOAD_ATTEMPTS)]

    def drain(self) -> list[Path]:
        """Wait for every queued upload, try the failed ones once more; returns what is still not uploaded."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        with self._lock:
            failed, self.failed = self.failed, []
        return [path for path in failed if not self._upload(path, attempts=1)]

    def _work(self) -> None:
        while (path := self._queue.get()) != _STOP:
            with self._lock:
                retry, self.failed = self.failed, []
            for earlier in retry:  # what failed before goes first, so segments stay in order
                if not self._upload(earlier, attempts=1):
                    with self._lock:
                        self.failed.append(earlier)
            if not self._upload(path, attempts=UPLOAD_ATTEMPTS):
                with self._lock:
                    self.failed.append(path)
            self.after_each()

    def _upload(self, path: Path, *, attempts: int) -> bool:
        url = f"{self.remote_dir}/{path.name}"
        for attempt in range(1, attempts + 1):
            try:
                self.storage.put(url, path, mode="create")
            except ObjectExists:
                pass  # a retried upload that had gone through: the same immutable segment
            except ObjectStoreError as exc:
                log.warning("segment %s: upload attempt %d failed: %s", path.name, attempt, exc)
                if attempt < attempts:
                    time.sleep(min(2.0**attempt, 30.0))
                continue
            self.uploaded_dir.mkdir(parents=True, exist_ok=True)
            os.replace(path, self.uploaded_dir / path.name)
            self.uploaded += 1
            return True
        return False


class SegmentedJournal(Journal):
    """A journal that becomes immutable segments in object storage as the run goes.

    :param stem: the segment names' stem (``<run start>-<pid>``); a sequence number follows it.
    :param guard: raises OutputError when this run may no longer write (its lease was lost).
    """

    def __init__(
        self,
        directory: Path,
        schema: pa.Schema,
        *,
        stem: str,
        uploader: SegmentUploader,
        every_rows: int,
        every_s: float,
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self.directory = directory
        self.stem = stem
        self.uploader = uploader
        self.every_rows = every_rows
        self.every_s = every_s
        self.guard = guard
        self._sequence = 0
        self._in_segment = 0
        self._timer: asyncio.TimerHandle | None = None
        self._segment_failure: OutputError | None = None
        self.segments = 0  # segments closed so far
        # A segment's file is made by its first result, not before (so a segment is open exactly
        # while it holds results): a process killed with nothing to add since its last upload (a Ray
        # sender once the run is over, or one given only settled rows) leaves no empty file behind.
        self.schema = schema
        self.rows_written = 0
        self._pending = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot write {directory}: {exc.strerror or exc}") from None

    def _next_path(self) -> Path:
        self._sequence += 1
        return self.directory / f"{self.stem}-{self._sequence:06d}.arrows"

    def append(self, results: Sequence[Result]) -> None:
        """Record results; a full segment is closed and handed to the uploader."""
        self.guard()
        if self._segment_failure is not None:
            raise self._segment_failure
        if not results:
            return
        if not self._in_segment:
            rows = self.rows_written
            Journal.__init__(self, self._next_path(), self.schema)
            self.rows_written = rows
        super().append(results)
        self._in_segment += len(results)
        if self._in_segment >= self.every_rows:
            self.rotate()
        elif self._timer is None and results:
            with contextlib.suppress(RuntimeError):  # outside a loop: the row count alone rotates
                self._timer = asyncio.get_running_loop().call_later(self.every_s, self._due)

    def _due(self) -> None:
        self._timer = None
        try:
            self.rotate()
        except OutputError as exc:
            self._segment_failure = exc  # raised by the next append, or by close

    def rotate(self) -> None:
        """Close the current segment (if it holds results) and start the next one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._in_segment:
            return
        Journal.close(self)
        self.uploader.submit(self.path)
        self.segments += 1
        self._in_segment = 0

    def sync(self) -> None:
        """Nothing to do after ``close``: every segment is in the bucket by then."""

    def close(self) -> None:
        """Close the last segment and wait until every segment of the run is uploaded.

        :raises OutputError: a write failed, or some segments could not be uploaded (they stay in the
            staging folder, and the next run here uploads them).
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        failure = self._segment_failure
        if self._in_segment:
            try:
                Journal.close(self)
            except OutputError as exc:
                failure = failure or exc
            self.uploader.submit(self.path)
            self.segments += 1
            self._in_segment = 0
        stuck = self.uploader.drain()
        if stuck and failure is None:
            failure = OutputError(
                f"{len(stuck)} journal segments could not be uploaded; they are kept in {self.directory}"
                " and the next run on this machine uploads them"
            )
        if failure is not None:
            raise failure
