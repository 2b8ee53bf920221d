"""Where a cluster run's workers write: one journal per sender, and the settled rows read tasks skip.

The driver holds the output (its lock, or an object-storage output's lease) and folds the journals
into ``results.parquet`` at the end, exactly as a local run does (``results.outputs.open_output``);
the workers only append journals and read the rerun rule's settled rows. :class:`OutputTarget` is
that small surface, with two implementations:

- :class:`DirectoryTarget`: a directory every node reaches at the same path (on one machine, any
  directory; across machines, a shared filesystem). Each sender's journal is written through to it.
- :class:`ObjectTarget`: a prefix in object storage (``s3://bucket/prefix/job``). Each sender's journal
  is an object-storage output's own (``results.segments.SegmentedJournal``): staged in the node's
  staging folder (``[storage] staging_dir``, else the user cache), closed into an immutable segment
  every ``[storage] segment_rows`` results or ``segment_s`` seconds and uploaded beside the run's
  other segments; when the run ends each sender uploads what it still stages
  (:meth:`SegmentJournalWriter.upload`) before the driver folds the segments in. Settled rows are
  read from the bucket's ``results.parquet``, once per worker process and version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from pipeline.errors import OutputError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import StorageSpec
from pipeline.records import Result
from pipeline.results.outputs import is_remote_output
from pipeline.results.store import JOURNAL_DIR, RESULTS_FILE, RerunPolicy, ResultStore


class JournalWriter(Protocol):
    """A sender's journal."""

    def append(self, results: Sequence[Result]) -> None:
        """Record results together (all or none survive a crash)."""

    def flush(self) -> None:
        """Make what was appended part of the output before returning (the journal's own file)."""

    def close(self) -> None:
        """Finish the journal."""


class OutputTarget(Protocol):
    """An output as the workers of a run see it."""

    def open_journal(self, schema: pa.Schema, *, writer: str) -> JournalWriter:
        """A new journal for one sender; ``writer`` names it apart from every other sender's."""

    def settled(self, request: RequestSpec, retry: RerunPolicy, *, sandbox_answers: bool) -> dict[str, str]:
        """The rerun rule's settled rows (row_id -> row hash), read once per worker process.

        :param sandbox_answers: whether the sandbox's answers count (a run to a loopback server).
        """


def output_target(output: Path | str, storage: StorageSpec) -> OutputTarget:
    """The target for an output: a directory (absolute), or an object-storage prefix."""
    if is_remote_output(output):
        return ObjectTarget(str(output).rstrip("/"), storage)
    return DirectoryTarget(Path(output))


@dataclass(frozen=True, slots=True)
class DirectoryTarget:
    """An output directory (an absolute path every node reaches)."""

    directory: Path

    def open_journal(self, schema: pa.Schema, *, writer: str) -> JournalWriter:
        return ResultStore(self.directory).new_journal(schema, writer=writer)

    def settled(self, request: RequestSpec, retry: RerunPolicy, *, sandbox_answers: bool) -> dict[str, str]:
        path = ResultStore(self.directory).results_path
        try:
            info = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (info.st_mtime_ns, info.st_size)
        key = (str(self.directory), stamp, request.fingerprint(), retry, sandbox_answers)
        return _cached(
            key, lambda: ResultStore(self.directory).settled(request, retry, sandbox_answers=sandbox_answers)
        )


_CACHE: dict[tuple[object, ...], dict[str, str]] = {}


def _cached(key: tuple[object, ...], read: Callable[[], dict[str, str]]) -> dict[str, str]:
    """Settled rows, read once per worker process and results version (``key``): every read task of a
    worker process shares one read; the last two versions are kept."""
    found = _CACHE.get(key)
    if found is None:
        found = read()
        while len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = found
    return found


@dataclass(frozen=True, slots=True)
class ObjectTarget:
    """An object-storage output (its URL, no trailing slash) and the job's ``[storage]`` table.

    Credentials are no part of it: every node reads them from its own environment.
    """

    url: str
    storage: StorageSpec

    def open_journal(self, schema: pa.Schema, *, writer: str) -> SegmentJournalWriter:
        from pipeline.results.remote import staging_folder
        from pipeline.results.segments import SegmentedJournal, SegmentUploader
        from pipeline.rows.storage import ObjectStorage, StorageSettings

        spec = self.storage
        staging = staging_folder(self.url, spec)
        client = ObjectStorage(StorageSettings.from_spec(spec))
        # an uploaded segment is the driver's to fold: the sender keeps no copy (see upload)
        uploaded = staging / JOURNAL_DIR / f".uploaded-{writer}"
        uploader = SegmentUploader(client, f"{self.url}/{JOURNAL_DIR}", uploaded)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        journal = SegmentedJournal(
            staging / JOURNAL_DIR,
            schema,
            stem=f"{stamp}-{writer}",
            uploader=uploader,
            every_rows=spec.segment_rows,
            every_s=spec.segment_s,
        )
        return SegmentJournalWriter(journal, client, uploaded)

    def settled(self, request: RequestSpec, retry: RerunPolicy, *, sandbox_answers: bool) -> dict[str, str]:
        from pipeline.rows.storage import ObjectNotFound, ObjectStorage, ObjectStoreError, StorageSettings

        url = f"{self.url}/{RESULTS_FILE}"
        settings = StorageSettings.from_spec(self.storage)
        client = ObjectStorage(settings)
        try:
            info = client.head(url)
        except ObjectNotFound:
            return {}
        except ObjectStoreError as exc:
            raise OutputError(f"cannot read {url}: {exc}") from None
        finally:
            client.close()
        version = info.e_tag or str(info.size)
        key = (url, version, request.fingerprint(), retry, sandbox_answers)
        return _cached(key, lambda: _settled_object(settings, url, request, retry, sandbox_answers))


def _settled_object(
    settings: object, url: str, request: RequestSpec, retry: RerunPolicy, sandbox_answers: bool
) -> dict[str, str]:
    """The settled rows of the bucket's results.parquet, from a copy in a temporary folder."""
    from pipeline.rows.storage import ObjectStorage, ObjectStoreError, StorageSettings

    assert isinstance(settings, StorageSettings)
    client = ObjectStorage(settings)
    try:
        with tempfile.TemporaryDirectory(prefix="pipeline-settled-") as folder:
            copy = ResultStore(Path(folder))
            client.download(url, copy.results_path)
            return copy.settled(request, retry, sandbox_answers=sandbox_answers)
    except ObjectStoreError as exc:
        raise OutputError(f"cannot read {url}: {exc}") from None
    finally:
        client.close()


class SegmentJournalWriter:
    """A sender's journal into object storage: a segmented journal and the client it uploads with."""

    def __init__(self, journal: object, client: object, uploaded: Path) -> None:
        from pipeline.results.segments import SegmentedJournal
        from pipeline.rows.storage import ObjectStorage

        assert isinstance(journal, SegmentedJournal)
        assert isinstance(client, ObjectStorage)
        self.journal = journal
        self.client = client
        self.uploaded = uploaded

    def append(self, results: Sequence[Result]) -> None:
        self.journal.append(results)

    def flush(self) -> None:
        self.journal.flush()

    def rotate(self) -> None:
        """Close the segment being written (when it holds results) and queue it for upload (in the loop)."""
        self.journal.rotate()

    def upload(self) -> None:
        """Wait until every closed segment is in the bucket (blocks: call it off the loop, after
        :meth:`rotate`).

        :raises OutputError: segments that could not be uploaded (they stay in the staging folder,
            and the next run on this machine uploads them).
        """
        stuck = self.journal.uploader.drain()
        shutil.rmtree(self.uploaded, ignore_errors=True)  # in the bucket now
        if stuck:
            raise OutputError(
                f"{len(stuck)} journal segments could not be uploaded; they are kept in"
                f" {self.journal.directory} and the next run on this machine uploads them"
            )

    def close(self) -> None:
        try:
            self.journal.close()
        finally:
            shutil.rmtree(self.uploaded, ignore_errors=True)
            self.client.close()


def writer_name() -> str:
    """A name for this process's journal that no other process of the run shares, on any node."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return f"{node[:12]}-{os.getpid()}"
