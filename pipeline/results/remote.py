"""An output in object storage (``output = "s3://bucket/prefix/job"``) that keeps a local output's promises.

Layout under the output's prefix::

    results.parquet          whole or not at all (one PUT, conditional on the version this run read)
    .journal/<segment>.arrows  immutable journal segments, uploaded as the run goes (results.segments)
    .lease                   who may write (results.lease)
    job.json  files.jsonl  .batches/...   the same side files a local output holds

A run works in a *staging folder* on this machine (``~/.cache/pipeline/outputs/<name>``, or
``[storage] staging_dir``): an ordinary local output directory, guarded by the local lock and the
bucket's lease. It starts by uploading what a run killed here left unuploaded, then mirrors the
bucket (results.parquet, the segments not yet folded into it, the side files), and folds the
segments into ``results.parquet`` like a local compaction: the new file is written locally, then
PUT over exactly the version read (``If-Match``; ``If-None-Match`` for the first), and only then
are the folded segments deleted. Its schema metadata names the segments it holds
(``pipeline.segments``), so a segment that outlived a crash between the PUT and the deletes is
never applied twice. Readers (``status``, ``export``, ``report``, ``estimate``) fold the same way in
a temporary folder, changing nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.api.models import CACHE_FILE as MODELS_CACHE
from pipeline.errors import OutputError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import StorageSpec
from pipeline.results.compaction import Fold, remove_files
from pipeline.results.journal import Journal
from pipeline.results.lease import LEASE_NAME, Lease
from pipeline.results.lock import locked_output
from pipeline.results.segments import SegmentedJournal, SegmentUploader
from pipeline.results.store import JOURNAL_DIR, PREVIOUS_FILE, RESULTS_FILE, ResultStore
from pipeline.rows.storage import ObjectChanged, ObjectInfo, ObjectNotFound, ObjectStorage, ObjectStoreError

log = logging.getLogger("pipeline.run")

SEGMENTS_DIR = ".segments"
SEGMENTS_KEY = b"pipeline.segments"
ETAGS_FILE = ".remote-etags.json"
# what is never mirrored as a side file: the results, the journal, the lease, and local-only state
_NOT_SIDE_FILES = (RESULTS_FILE, LEASE_NAME, f"{JOURNAL_DIR}/")
# kept on this machine only: the lock, the ETags, staged segments, and the model facts' cache
_LOCAL_ONLY = frozenset({".lock", ETAGS_FILE, SEGMENTS_DIR, JOURNAL_DIR, MODELS_CACHE})


def staging_folder(url: str, spec: StorageSpec | None) -> Path:
    """Where this machine stages the output at ``url``: the same folder for the same URL, every run."""
    if spec is not None and spec.staging_dir is not None:
        base = Path(spec.staging_dir)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache) / "pipeline" / "outputs"
    slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", url.split("://", 1)[-1]).strip("-")[-80:]
    return base / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def folded_segments(results: Path) -> set[str]:
    """The segment names a ``results.parquet`` says it holds (none for a local output's file)."""
    try:
        metadata = pq.read_schema(results).metadata or {}
    except (OSError, pa.ArrowException):
        return set()
    raw = metadata.get(SEGMENTS_KEY)
    try:
        names = json.loads(raw) if raw else []
    except ValueError:
        return set()
    return {str(name) for name in names} if isinstance(names, list) else set()


class ObjectResultStore(ResultStore):
    """An object-storage output, staged in a local folder (see the module docstring).

    The same methods as a local :class:`ResultStore`, which it is on its staging folder; what
    differs is holding it (:meth:`locked`: the local lock, the lease, then mirroring the bucket),
    compaction (folded segments, then the PUT), and journals (uploaded as segments).
    """

    def __init__(self, url: str, storage: ObjectStorage, spec: StorageSpec | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage = storage
        self.spec = spec or StorageSpec()
        super().__init__(staging_folder(self.url, self.spec))
        self.segments_dir = self.directory / SEGMENTS_DIR
        self.uploader = SegmentUploader(
            storage, f"{self.url}/{JOURNAL_DIR}", self.segments_dir, after_each=self._push_changed
        )
        self._changed: set[Path] = set()
        self._changed_lock = threading.Lock()
        self.lease = Lease(storage, f"{self.url}/{LEASE_NAME}", ttl_s=self.spec.lease_ttl_s, label=self.url)
        self._results_etag: str | None = None
        self._remote_segments: set[str] = set()
        self._holding = False

    @property
    def location(self) -> str:
        """The output as the user named it."""
        return self.url

    def remote(self, relative: str) -> str:
        """The URL of a file of the output."""
        return f"{self.url}/{relative}"

    # ------------------------------------------------------------------ holding it

    def prepare(self) -> None:
        """Create the staging folder and check the bucket answers, before any money is spent."""
        super().prepare()
        try:
            self.storage.list(self.remote(LEASE_NAME))
        except ObjectStoreError as exc:
            raise OutputError(f"cannot use output {self.url}: {exc}") from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the output for a run: the lease (refused naming its holder), then this machine's lock on
        the staging folder; then mirror the bucket."""
        self.lease.acquire()
        try:
            with locked_output(self.directory):
                self._holding = True
                try:
                    self._pull()
                    yield
                finally:
                    self._holding = False
        finally:
            self.lease.release()

    def holder(self) -> str | None:
        """Who holds the output now ("host h, pid p, started t"), or None."""
        try:
            record = self.lease.holder()
        except ObjectStoreError:
            return None
        return record.describe() if record is not None else None

    def refresh(self) -> None:
        """Mirror the bucket again while holding the output: the segments other processes of this run
        uploaded (a cluster's senders), after uploading what any of them left staged on this machine."""
        self._pull()

    def _guard(self) -> None:
        self.lease.check()

    # ------------------------------------------------------------------ mirroring

    def _listing(self) -> dict[str, ObjectInfo]:
        try:
            listed = self.storage.list(self.url + "/")
        except ObjectStoreError as exc:
            raise OutputError(f"cannot list {self.url}: {exc}") from None
        prefix = self.url + "/"
        return {info.url[len(prefix) :]: info for info in listed if info.url.startswith(prefix)}

    def _pull(self) -> None:
        """Upload what a run killed here left, then make the staging folder what the bucket holds."""
        leftovers = sorted(self.journal_dir.glob("*.arrows"))
        if leftovers:
            failed = self.uploader.upload_now(leftovers)
            if failed:
                raise OutputError(
                    f"cannot upload {len(failed)} journal segments left in {self.journal_dir} by an earlier"
                    f" run to {self.url}; nothing is lost, they stay there"
                )
            log.info("uploaded %d journal segments an interrupted run left on this machine", len(leftovers))
        listing = self._listing()
        etags = self._etags()
        self._remote_segments = {
            name.removeprefix(f"{JOURNAL_DIR}/") for name in listing if name.startswith(f"{JOURNAL_DIR}/")
        }
        results = listing.get(RESULTS_FILE)
        if results is None:
            with contextlib.suppress(FileNotFoundError):
                self.results_path.unlink()
            self._results_etag = None
        else:
            if etags.get(RESULTS_FILE) != results.e_tag or not self.results_path.exists():
                self._download(RESULTS_FILE, self.results_path)
            self._results_etag = results.e_tag
        folded = folded_segments(self.results_path) if results is not None else set()
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        for path in self.segments_dir.glob("*.arrows"):
            if path.name not in self._remote_segments or path.name in folded:
                path.unlink()  # folded by a run elsewhere, or already in results.parquet
        for name in sorted(self._remote_segments & folded):
            # results.parquet holds it: a crash came between the PUT and this segment's delete
            with contextlib.suppress(ObjectStoreError):
                self.storage.delete(self.remote(f"{JOURNAL_DIR}/{name}"))
                self._remote_segments.discard(name)
        for name in sorted(self._remote_segments - folded):
            target = self.segments_dir / name
            if not target.exists():
                self._download(f"{JOURNAL_DIR}/{name}", target)
        sides = {name: info for name, info in listing.items() if _is_side_file(name)}
        for path in self._local_side_files():
            relative = path.relative_to(self.directory).as_posix()
            if relative not in sides:
                path.unlink()  # the bucket no longer has it: neither does the mirror
        for name, info in sides.items():
            target = self.directory / name
            if etags.get(name) != info.e_tag or not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(name, target)
        self._save_etags({name: info.e_tag for name, info in listing.items() if info.e_tag})

    def _download(self, relative: str, target: Path) -> None:
        try:
            self.storage.download(self.remote(relative), target)
        except ObjectStoreError as exc:
            raise OutputError(f"cannot read {self.remote(relative)}: {exc}") from None
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None

    def _local_side_files(self) -> list[Path]:
        found = []
        for path in self.directory.rglob("*"):
            relative = path.relative_to(self.directory)
            if relative.parts[0] in _LOCAL_ONLY or relative.name.startswith(".write-test"):
                continue
            if path.is_file() and _is_side_file(relative.as_posix()):
                found.append(path)
        return found

    def _etags(self) -> dict[str, str]:
        try:
            data = json.loads((self.directory / ETAGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(key): str(value) for key, value in data.items()} if isinstance(data, dict) else {}

    def _save_etags(self, etags: dict[str, str]) -> None:
        with contextlib.suppress(OSError):
            (self.directory / ETAGS_FILE).write_text(json.dumps(etags), encoding="utf-8")

    def _remember(self, relative: str, etag: str | None) -> None:
        etags = self._etags()
        if etag is None:
            etags.pop(relative, None)
        else:
            etags[relative] = etag
        self._save_etags(etags)

    def sync(self, path: Path) -> None:
        """Upload a side file (``job.json``, ``files.jsonl``, ``.batches/...``) the run just changed."""
        relative = path.relative_to(self.directory).as_posix()
        try:
            etag = self.storage.put(self.remote(relative), path)
        except ObjectStoreError as exc:
            raise OutputError(f"cannot write {self.remote(relative)}: {exc}") from None
        self._remember(relative, etag)

    def changed(self, path: Path) -> None:
        """A side file grew: uploaded after the next journal segment (and when the run compacts)."""
        with self._changed_lock:
            self._changed.add(path)

    def _push_changed(self) -> None:
        with self._changed_lock:
            paths, self._changed = self._changed, set()
        for path in sorted(paths):
            try:
                self.sync(path)
            except OutputError as exc:
                log.warning("%s; trying again after the next segment", exc)
                with self._changed_lock:
                    self._changed.add(path)

    # ------------------------------------------------------------------ results

    def new_journal(self, schema: pa.Schema, *, writer: str | None = None) -> Journal:
        """A journal that becomes segments in the bucket as the run goes (``[storage] segment_*``)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return SegmentedJournal(
            self.journal_dir,
            schema,
            stem=f"{stamp}-{writer or os.getpid()}",
            uploader=self.uploader,
            every_rows=self.spec.segment_rows,
            every_s=self.spec.segment_s,
            guard=self._guard,
        )

    def journals(self) -> list[Path]:
        """Segments not yet folded into results.parquet (uploaded, then the ones still staged), in order."""
        uploaded = sorted(self.segments_dir.glob("*.arrows")) if self.segments_dir.is_dir() else []
        return uploaded + super().journals()

    def compact(self) -> int:
        """Fold the uploaded segments into results.parquet, PUT it, then delete what it now holds."""
        if self._holding:
            self.lease.check()
        self._push_changed()
        todo = sorted(self.segments_dir.glob("*.arrows")) if self.segments_dir.is_dir() else []
        if not todo:
            return self._count()
        before = folded_segments(self.results_path) if self.results_path.exists() else set()
        names = sorted({path.name for path in todo} | (before & self._remote_segments))
        written = Fold(self.results_path, todo, metadata={SEGMENTS_KEY: json.dumps(names).encode()}).run()
        if written is not None:
            self._push_results()
        for path in todo:
            with contextlib.suppress(ObjectStoreError):
                self.storage.delete(self.remote(f"{JOURNAL_DIR}/{path.name}"))
            self._remote_segments.discard(path.name)
        remove_files(todo)
        return self._count() if written is None else written

    def adopt_legacy(self, request: RequestSpec) -> int:
        """As a local store does; the relabelled results.parquet is uploaded at once."""
        relabelled = super().adopt_legacy(request)
        if relabelled:
            self._push_results()
        return relabelled

    def _push_results(self) -> None:
        try:
            if self._results_etag is None:
                etag = self.storage.put(self.remote(RESULTS_FILE), self.results_path, mode="create")
            else:
                etag = self.storage.put(
                    self.remote(RESULTS_FILE), self.results_path, if_match=self._results_etag
                )
        except (ObjectChanged, ObjectNotFound) as exc:
            raise OutputError(
                f"{self.remote(RESULTS_FILE)} changed while this run held the output ({exc});"
                " nothing is lost:"
                " the journal segments stay in the bucket and the next run folds them"
            ) from None
        except ObjectStoreError as exc:
            raise OutputError(f"cannot write {self.remote(RESULTS_FILE)}: {exc}") from None
        self._results_etag = etag
        self._remember(RESULTS_FILE, etag)

    def ensure_results(self, schema: pa.Schema) -> None:
        """Leave a valid, empty results.parquet, in the bucket too, when a run had nothing to record."""
        if self._results_etag is None and not self.results_path.exists():
            super().ensure_results(schema)
            self._push_results()

    def start_fresh(self) -> None:
        """``--fresh``: keep the old results as results.previous.parquet (in the bucket) and forget them."""
        self.compact()
        if not self.results_path.exists():
            return
        try:
            self.storage.put(self.remote(PREVIOUS_FILE), self.results_path)
            self.storage.delete(self.remote(RESULTS_FILE))
        except ObjectStoreError as exc:
            raise OutputError(f"cannot move {self.remote(RESULTS_FILE)} aside: {exc}") from None
        self.results_path.unlink()
        self._results_etag = None
        self._remember(RESULTS_FILE, None)


def _is_side_file(relative: str) -> bool:
    if relative.endswith("/") or relative in _NOT_SIDE_FILES or relative == PREVIOUS_FILE:
        return False
    return not any(relative.startswith(prefix) for prefix in _NOT_SIDE_FILES if prefix.endswith("/"))


@contextmanager
def readable_copy(url: str, storage: ObjectStorage) -> Iterator[ResultStore]:
    """A read-only copy of an object-storage output in a temporary folder: results, segments, side files.

    Nothing in the bucket changes; the copy goes when the block ends.
    """
    url = url.rstrip("/")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-output-"))
    try:
        store = ResultStore(folder)
        try:
            listed = storage.list(url + "/")
        except ObjectStoreError as exc:
            raise OutputError(f"cannot read {url}: {exc}") from None
        prefix = url + "/"
        names = [info.url[len(prefix) :] for info in listed if info.url.startswith(prefix)]
        if RESULTS_FILE in names:
            storage.download(f"{prefix}{RESULTS_FILE}", store.results_path)
        folded = folded_segments(store.results_path) if store.results_path.exists() else set()
        store.journal_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = folder / name
            if name.startswith(f"{JOURNAL_DIR}/"):
                if Path(name).name in folded:
                    continue
            elif not _is_side_file(name):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                storage.download(f"{prefix}{name}", target)
            except ObjectNotFound:
                continue  # folded and deleted by a run while we listed: results.parquet holds it
        yield store
    except ObjectStoreError as exc:
        raise OutputError(f"cannot read {url}: {exc}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
