"""Stores results so that a crash cannot corrupt or lose them.

Layout of an output directory::

    results.parquet          one row per input row (latest attempt wins); only ever appears whole
    .journal/<run>.arrows    Arrow IPC streams, one per run, appended as results arrive

Each result is appended to the run's journal the moment it arrives (a write to the OS, so ``kill -9``
loses at most the requests still in flight; a torn last record is detected and dropped on read).
``compact`` folds the journals into ``results.parquet`` by writing a temporary file, fsyncing it and
renaming it over the old one, then deletes the folded journals. It streams: one pass reads only the
keys (``row_id``, ``row_index``) and copies each journal into a random-access Arrow file, then the
output is written a row group at a time, so memory stays flat however many rows the store holds.
Knows nothing about HTTP.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa

from pipeline.atomic import replace_file, write_text
from pipeline.errors import OutputError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import JobSpec, is_url
from pipeline.results.compaction import Fold, relabel, remove_files
from pipeline.results.journal import Journal, read_journal
from pipeline.results.lock import lock_holder, locked_output
from pipeline.results.schema import column_order
from pipeline.rows.memory import FrameInput, InputSource

RESULTS_FILE = "results.parquet"
PREVIOUS_FILE = "results.previous.parquet"
JOURNAL_DIR = ".journal"

# what the sandbox reports as the model of its answers (``sandbox:<model>``)
SANDBOX_MODEL_PREFIX = "sandbox:"
# Errors that come back the same while the request and the row are unchanged: not retried by default.
# A refusal is the model declining the request; a max_tokens row is sent again once max_tokens is
# raised above what it was sent with (settled_rows), which changes its request.
NOT_RETRIED_BY_DEFAULT = frozenset(
    {
        "invalid_request_error",
        "request_too_large",
        "not_found_error",
        "refusal",
        "max_tokens",
        "model_context_window_exceeded",
    }
)


@dataclass(frozen=True, slots=True)
class RerunPolicy:
    """Which earlier error rows a rerun sends again.

    ``types=None`` is the default: every error type but ``excluded``. An explicit set retries exactly
    those types (empty: none; ``ALL``: every type).
    """

    types: frozenset[str] | None = None
    excluded: frozenset[str] = NOT_RETRIED_BY_DEFAULT

    @classmethod
    def parse(cls, text: str | None) -> RerunPolicy:
        """``None`` (default), ``all``, ``none`` or a comma-separated list of error types."""
        if text is None:
            return cls()
        words = {word.strip() for word in text.split(",") if word.strip()}
        if words == {"all"}:
            return cls(types=None, excluded=frozenset())
        if words == {"none"} or not words:
            return cls(types=frozenset())
        return cls(types=frozenset(words))


class ResultStore:
    """An output directory: its journals and its ``results.parquet``.

    The interface every output implements (a local directory here, an object-storage prefix in
    :class:`pipeline.results.remote.ObjectResultStore`, which is this class on a staging folder):
    :meth:`locked` for a run, :meth:`prepare`, :meth:`compact`, :meth:`settled`, :meth:`new_journal`,
    :meth:`ensure_results`, :meth:`start_fresh`, :meth:`snapshot`, :meth:`note_job` and :meth:`sync`
    for the side files (``job.json``, ``files.jsonl``, ``.batches/``) kept in :attr:`directory`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.results_path = directory / RESULTS_FILE
        self.journal_dir = directory / JOURNAL_DIR

    @property
    def location(self) -> str:
        """The output as the user named it, for messages."""
        return str(self.directory)

    def locked(self) -> AbstractContextManager[None]:
        """Hold the output for a run (``flock``: another run is refused, naming the holder)."""
        return locked_output(self.directory)

    def holder(self) -> str | None:
        """Who holds the output now ("pid N, started T"), or None; changes nothing."""
        return lock_holder(self.directory)

    def sync(self, path: Path) -> None:
        """A side file in :attr:`directory` changed and must be saved now; a local output already is."""
        del path

    def changed(self, path: Path) -> None:
        """A side file in :attr:`directory` grew; saving it may wait for the next journal segment."""
        del path

    def note_job(self, spec: JobSpec, source: InputSource) -> None:
        """Record the latest run's job (``job.json``), and :meth:`sync` it."""
        note_job(self.directory, spec, source)
        self.sync(self.directory / JOB_NOTE)

    def prepare(self) -> None:
        """Create the directory and prove it is writable, before any money is spent."""
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(
                f"cannot write to output directory {self.directory}: {exc.strerror or exc}"
            ) from None

    def new_journal(self, schema: pa.Schema, *, writer: str | None = None) -> Journal:
        """A journal for this run, named so that journals sort in the order they were started.

        :param writer: who writes it, when several processes of one run do (a cluster's senders, on
            several machines: a pid alone could repeat); default: this process's pid.
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return Journal(self.journal_dir / f"{stamp}-{writer or os.getpid()}.arrows", schema)

    def journals(self) -> list[Path]:
        """Existing journals, oldest first."""
        if not self.journal_dir.is_dir():
            return []
        return sorted(self.journal_dir.glob("*.arrows"))

    def settled(self, request: RequestSpec, retry: RerunPolicy, *, sandbox_answers: bool) -> dict[str, str]:
        """Rows not to send again, row_id -> row_hash (call after ``compact``; see :func:`settled_rows`)."""
        if not self.results_path.exists():
            return {}
        try:
            results = pl.scan_parquet(self.results_path)
            return settled_rows(results, request, retry, sandbox_answers=sandbox_answers)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise OutputError(f"cannot read {self.results_path}: {exc}") from None

    def adopt_legacy(self, request: RequestSpec) -> int:
        """Relabel rows an earlier version answered for ``request`` with its current fingerprint.

        Their fingerprint hashed ``max_tokens`` (:meth:`RequestSpec.legacy_fingerprint`); once
        relabelled (and given the ``max_tokens`` they were sent with), raising ``max_tokens`` keeps
        them. Call after ``compact``, under the lock; returns the rows relabelled.
        """
        legacy = request.legacy_fingerprint()
        if legacy is None or not self.results_path.exists():
            return 0
        return relabel(self.results_path, legacy, request.fingerprint(), request.max_tokens)

    def compact(self) -> int:
        """Fold journals into ``results.parquet`` (latest result per row wins); returns its row count.

        Rows come out ordered by ``row_index`` (ties in the order they were recorded); columns a newer
        run added appear, null for older rows (a diagonal concatenation). Streams: see the module
        docstring.
        """
        journals = self.journals()
        if not journals:
            return self._count()
        written = Fold(self.results_path, journals).run()
        remove_files(journals)
        return self._count() if written is None else written

    def ensure_results(self, schema: pa.Schema) -> None:
        """Leave a valid, empty ``results.parquet`` when a run had nothing to record (a header-only input)."""
        if not self.results_path.exists():
            empty = pl.from_arrow(schema.empty_table())
            assert isinstance(empty, pl.DataFrame)
            self._write_atomically(empty)

    def snapshot(self) -> pl.DataFrame | None:
        """What ``results.parquet`` would hold after compaction, read without writing anything."""
        return self._merge(self.journals())

    def _merge(self, journals: list[Path]) -> pl.DataFrame | None:
        frames = list(self._frames(journals))
        if not frames:
            return None
        merged = (
            pl.concat(frames, how="diagonal_relaxed")
            .unique(subset="row_id", keep="last", maintain_order=True)
            .sort("row_index", maintain_order=True)
        )
        return _order_columns(merged)

    def start_fresh(self) -> None:
        """``--fresh``: keep the old results as ``results.previous.parquet`` and forget them."""
        self.compact()
        if self.results_path.exists():
            try:
                os.replace(self.results_path, self.directory / PREVIOUS_FILE)
            except OSError as exc:
                raise OutputError(f"cannot move {self.results_path} aside: {exc.strerror or exc}") from None

    def _frames(self, journals: Iterable[Path]) -> Iterator[pl.DataFrame]:
        if self.results_path.exists():
            try:
                yield pl.read_parquet(self.results_path)
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise OutputError(f"cannot read {self.results_path}: {exc}") from None
        for path in journals:
            table = read_journal(path)
            if table is not None and table.num_rows:
                frame = pl.from_arrow(table)
                assert isinstance(frame, pl.DataFrame)
                yield frame

    def _write_atomically(self, frame: pl.DataFrame) -> None:
        self.replace_results(lambda tmp: frame.write_parquet(tmp, compression="zstd", statistics=True))

    def replace_results(self, write: Callable[[Path], None]) -> None:
        """Have ``write`` fill a temporary file that then becomes ``results.parquet`` whole."""
        replace_file(self.results_path, write)

    def _count(self) -> int:
        if not self.results_path.exists():
            return 0
        return int(pl.scan_parquet(self.results_path).select(pl.len()).collect().item())


def settled_rows(
    results: pl.LazyFrame, request: RequestSpec, retry: RerunPolicy, *, sandbox_answers: bool
) -> dict[str, str]:
    """The rerun rule: rows whose latest result stands, as row_id -> row_hash.

    A row is settled when its latest result came from a request with this fingerprint (or the one an
    earlier version wrote for it, :meth:`RequestSpec.legacy_fingerprint`) and is ``ok``, or an error
    that ``retry`` does not retry; but a row cut off at ``max_tokens`` is sent again whenever
    ``max_tokens`` is now above what it was sent with (its request changed), whatever ``retry``
    says. Callers also compare the row's current hash, so a row whose request-feeding cells changed
    is sent again.

    :param sandbox_answers: whether answers the sandbox gave (``model`` ``sandbox:...``) count. They
        must not for a run that goes to a real server: a job tried with ``--sandbox`` and then run
        for real would otherwise skip every row the sandbox answered.
    """
    error_type = pl.col("error_type").fill_null("")
    if retry.types is None:
        not_retried = error_type.is_in(list(retry.excluded))
    else:
        not_retried = ~error_type.is_in(list(retry.types))
    keep = (pl.col("status") == "ok") | ((pl.col("status") == "error") & not_retried)
    if not sandbox_answers:
        keep = keep & ~pl.col("model").fill_null("").str.starts_with(SANDBOX_MODEL_PREFIX)
    names = results.collect_schema().names()
    if "row_hash" not in names:
        results = results.with_columns(pl.lit("").alias("row_hash"))
    if "max_tokens" in names:
        # null: written before the column existed, under a fingerprint that hashed max_tokens
        sent = pl.col("max_tokens").fill_null(request.max_tokens)
        raised = (error_type == "max_tokens") & (sent < request.max_tokens)
        keep = keep & ~raised
    fingerprints = [request.fingerprint()]
    if (legacy := request.legacy_fingerprint()) is not None:
        fingerprints.append(legacy)
    settled = (
        results.filter(keep & pl.col("request_fingerprint").is_in(fingerprints))
        .select("row_id", pl.col("row_hash").fill_null(""))
        .collect()
    )
    return dict(zip(settled["row_id"].to_list(), settled["row_hash"].to_list(), strict=True))


def _order_columns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(column_order(frame.columns))


def note_job(directory: Path, spec: JobSpec, source: InputSource) -> None:
    """Record the latest run's job (``OUTPUT/job.json``): images for report, prices for status."""
    note = {
        "name": spec.name,
        "job": spec.source,
        "input": (
            source.note_path()
            if isinstance(source, FrameInput)
            else source
            if is_url(source)
            else os.path.abspath(source)
        ),
        "images": list(spec.request.images),
        "model": spec.request.model,
        "prices": spec.prices.model_dump() if spec.prices else None,
        # what `pipeline status` prices this run's rows with (rows of this fingerprint)
        "cache_ttl": spec.request.cache_ttl,
        "fingerprint": spec.request.fingerprint(),
    }
    write_text(directory / JOB_NOTE, json.dumps(note, indent=2) + "\n")


JOB_NOTE = "job.json"
