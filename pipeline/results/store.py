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

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.errors import OutputError
from pipeline.job.spec import RequestSpec
from pipeline.job.structured import ColumnPlan, column_plan, plan_from_json
from pipeline.records import Result

# Arrow's default allocator (mimalloc) keeps what it frees for reuse, per thread, so the final
# compaction of a large run left tens of MB of peak RSS that never came back; the system allocator
# returns large blocks at once. A user's own ARROW_DEFAULT_MEMORY_POOL choice is left alone.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())

RESULTS_FILE = "results.parquet"
PREVIOUS_FILE = "results.previous.parquet"
JOURNAL_DIR = ".journal"
COALESCE_ROWS = 2048
SMALL_BATCHES = 64

TOOL_CALL_TYPE = pa.struct([("id", pa.string()), ("name", pa.string()), ("input", pa.string())])
HEAD_FIELDS = [
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
]
TAIL_FIELDS = [
    pa.field("model", pa.string()),
    pa.field("response_text", pa.string()),
    pa.field("tool_calls", pa.list_(TOOL_CALL_TYPE)),
    pa.field("stop_reason", pa.string()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cache_creation_input_tokens", pa.int64()),
    pa.field("cache_read_input_tokens", pa.int64()),
    pa.field("message_id", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("shared_request_with", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("latency_ms", pa.float64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("row_index", pa.int64()),
    pa.field("request_fingerprint", pa.string()),
    pa.field("row_hash", pa.string()),
]
RESULT_COLUMNS = frozenset(field.name for field in HEAD_FIELDS + TAIL_FIELDS)
# Errors that come back the same while the request and the row are unchanged: not retried by default.
NOT_RETRIED_BY_DEFAULT = frozenset({"invalid_request_error", "request_too_large", "not_found_error"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which earlier error rows a rerun sends again.

    ``types=None`` is the default: every error type but ``excluded``. An explicit set retries exactly
    those types (empty: none; ``ALL``: every type).
    """

    types: frozenset[str] | None = None
    excluded: frozenset[str] = NOT_RETRIED_BY_DEFAULT

    @classmethod
    def parse(cls, text: str | None) -> RetryPolicy:
        """``None`` (default), ``all``, ``none`` or a comma-separated list of error types."""
        if text is None:
            return cls()
        words = {word.strip() for word in text.split(",") if word.strip()}
        if words == {"all"}:
            return cls(types=None, excluded=frozenset())
        if words == {"none"} or not words:
            return cls(types=frozenset())
        return cls(types=frozenset(words))


# schema metadata key holding the forced tool's typed-column plan (structured.ColumnPlan.to_json)
TOOL_COLUMNS_KEY = b"pipeline.tool_columns"


def output_column(input_column: str, reserved: frozenset[str] = RESULT_COLUMNS) -> str:
    """The name an input column gets in the output: itself, or ``input_<name>`` when it clashes."""
    return f"input_{input_column}" if input_column in reserved else input_column


def output_schema(input_schema: pa.Schema, request: RequestSpec | None = None) -> pa.Schema:
    """Result columns around the input's own columns (types kept as read) and a forced tool's columns.

    Input columns yield: one named like a result column or a tool column (``out_<property>``)
    becomes ``input_<name>``.
    """
    plan = column_plan(request) if request is not None else None
    reserved = RESULT_COLUMNS | plan.names if plan else RESULT_COLUMNS
    inputs = [field.with_name(output_column(field.name, reserved)) for field in input_schema]
    if plan is None:
        return pa.schema(HEAD_FIELDS + inputs + TAIL_FIELDS)
    fields = HEAD_FIELDS + inputs + plan.fields() + TAIL_FIELDS
    return pa.schema(fields, metadata={TOOL_COLUMNS_KEY: plan.to_json().encode()})


def _plan(schema: pa.Schema | None) -> ColumnPlan | None:
    metadata = schema.metadata if schema is not None else None
    text = metadata.get(TOOL_COLUMNS_KEY) if metadata else None
    return plan_from_json(text.decode()) if text else None


def result_record(result: Result, schema: pa.Schema | None = None) -> dict[str, Any]:
    """One output row as a plain dict, keyed by output column names (``schema`` from ``output_schema``)."""
    plan = _plan(schema)
    reserved = RESULT_COLUMNS | plan.names if plan else RESULT_COLUMNS
    record: dict[str, Any] = {"row_id": result.row.row_id, "status": result.status}
    record.update({output_column(name, reserved): value for name, value in result.row.values.items()})
    if plan is not None:
        record.update(plan.values(result.reply))
    reply = result.reply
    usage = reply.usage if reply else None
    record.update(
        model=reply.model if reply else None,
        response_text=reply.text if reply else None,
        tool_calls=[{"id": c.id, "name": c.name, "input": c.input_json} for c in reply.tool_calls]
        if reply
        else [],
        stop_reason=reply.stop_reason if reply else None,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else None,
        cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
        message_id=reply.message_id if reply else None,
        request_id=reply.request_id if reply else None,
        shared_request_with=result.shared_with,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        error_type=result.error_type,
        error_message=result.error_message,
        finished_at=result.finished_at,
        row_index=result.row.index,
        request_fingerprint=result.fingerprint,
        row_hash=result.row.content_hash,
    )
    return record


class Journal:
    """The append-only record of one run's results.

    Inside an event loop, results appended during one turn of the loop are written together, as one
    record batch, when the turn ends (``loop.call_soon``): a batch costs ~120 µs however few rows it
    holds, and at zero latency several replies land per turn. A write that fails is raised by the
    next ``append`` or by ``close``. Outside a loop every append is written at once.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # OSFile is unbuffered: every batch reaches the OS when write_batch returns.
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, schema)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.rows_written = 0  # rows appended (written by the end of the loop's turn)
        self._pending: list[Result] = []
        self._flush_handle: asyncio.Handle | None = None
        self._failure: OutputError | None = None

    def append(self, results: Sequence[Result]) -> None:
        """Record results; they reach the file together (one batch: all or none survive a crash)."""
        if self._failure is not None:
            raise self._failure
        if not results:
            return
        self._pending.extend(results)
        self.rows_written += len(results)
        if self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_handle = loop.call_soon(self._flush_soon)

    def flush(self) -> None:
        """Write what was appended and not yet written, as one record batch."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        records = [result_record(r, self.schema) for r in pending]
        batch = pa.RecordBatch.from_pylist(records, schema=self.schema)
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _flush_soon(self) -> None:
        self._flush_handle = None
        try:
            self.flush()
        except OutputError as exc:
            self._failure = exc  # raised by the next append, or by close

    def close(self) -> None:
        """Write what is pending and finish the stream (an unfinished one still reads back fine).

        :raises OutputError: when a write of this journal failed; what was written before stays readable.
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        failure = self._failure
        try:
            self.flush()
        except OutputError as exc:
            failure = failure or exc
        with contextlib.suppress(OSError):
            self._writer.close()
        with contextlib.suppress(OSError):
            self._sink.close()
        if failure is not None:
            self._failure = None
            raise failure


def read_journal(path: Path) -> pa.Table | None:
    """Every complete batch of a journal; a torn tail (the process was killed mid-write) is dropped.

    A journal holds one small batch per result, so batches are coalesced as they are read: holding
    tens of thousands of one-row batches at once costs far more memory than their data.
    """
    schema = journal_schema(path)
    if schema is None:
        return None  # not even a schema made it to disk: the run died before its first result
    return pa.Table.from_batches(list(iter_journal(path)), schema=schema)


def journal_schema(path: Path) -> pa.Schema | None:
    """A journal's schema, or None when the run died before writing it."""
    try:
        with pa.OSFile(str(path), "rb") as source:
            return pa.ipc.open_stream(source).schema
    except (pa.ArrowInvalid, OSError):
        return None


def iter_journal(path: Path, rows: int = COALESCE_ROWS) -> Iterator[pa.RecordBatch]:
    """A journal's complete batches, coalesced to about ``rows`` rows each; a torn tail ends it quietly."""
    try:
        source = pa.OSFile(str(path), "rb")
    except OSError:
        return
    with source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError):
            return
        schema = reader.schema
        # Two levels: a batch read from the stream costs ~18 KB however small it is, so only
        # SMALL_BATCHES of them are held before they are copied into one.
        small: list[pa.RecordBatch] = []
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):
                break  # torn tail: the process was killed mid-write
            small.append(batch)
            pending_rows += batch.num_rows
            if len(small) >= SMALL_BATCHES or pending_rows >= rows:
                pending.extend(_coalesce(small, schema))
                small = []
            if pending_rows >= rows:
                yield from _coalesce(pending, schema)
                pending, pending_rows = [], 0
        pending.extend(_coalesce(small, schema))
        yield from _coalesce(pending, schema)


def _coalesce(batches: list[pa.RecordBatch], schema: pa.Schema) -> list[pa.RecordBatch]:
    if not batches:
        return []
    return list(pa.Table.from_batches(batches, schema=schema).combine_chunks().to_batches())


class ResultStore:
    """An output directory: its journals and its ``results.parquet``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.results_path = directory / RESULTS_FILE
        self.journal_dir = directory / JOURNAL_DIR

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

    def new_journal(self, schema: pa.Schema) -> Journal:
        """A journal for this run, named so that journals sort in the order they were started."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return Journal(self.journal_dir / f"{stamp}-{os.getpid()}.arrows", schema)

    def journals(self) -> list[Path]:
        """Existing journals, oldest first."""
        if not self.journal_dir.is_dir():
            return []
        return sorted(self.journal_dir.glob("*.arrows"))

    def settled(self, fingerprint: str, retry: RetryPolicy) -> dict[str, str]:
        """Rows not to send again, as row_id -> row_hash (call after ``compact``).

        A row is settled when its latest result came from a request with this fingerprint and is
        ``ok``, or an error that ``retry`` does not retry. The runner also compares the row's
        current hash, so a row whose request-feeding cells changed is sent again.
        """
        if not self.results_path.exists():
            return {}
        error_type = pl.col("error_type").fill_null("")
        if retry.types is None:
            not_retried = error_type.is_in(list(retry.excluded))
        else:
            not_retried = ~error_type.is_in(list(retry.types))
        keep = (pl.col("status") == "ok") | ((pl.col("status") == "error") & not_retried)
        try:
            frame = pl.scan_parquet(self.results_path)
            if "row_hash" not in frame.collect_schema().names():
                frame = frame.with_columns(pl.lit("").alias("row_hash"))
            settled = (
                frame.filter(keep & (pl.col("request_fingerprint") == fingerprint))
                .select("row_id", pl.col("row_hash").fill_null(""))
                .collect()
            )
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise OutputError(f"cannot read {self.results_path}: {exc}") from None
        return dict(zip(settled["row_id"].to_list(), settled["row_hash"].to_list(), strict=True))

    def compact(self) -> int:
        """Fold journals into ``results.parquet`` (latest result per row wins); returns its row count.

        Rows come out ordered by ``row_index`` (ties in the order they were recorded); columns a newer
        run added appear, null for older rows (a diagonal concatenation). Streams: see the module
        docstring.
        """
        journals = self.journals()
        if not journals:
            return self._count()
        from pipeline.results.compaction import Fold  # it reads journals with this module's helpers

        written = Fold(self, journals).run()
        self.remove(journals)
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
        """Have ``write`` fill a temporary file, fsync it, and rename it over ``results.parquet``."""
        tmp = self.directory / f".{RESULTS_FILE}.tmp-{os.getpid()}"
        try:
            write(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, self.results_path)
            _fsync_dir(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutputError(f"cannot write {self.results_path}: {exc.strerror or exc}") from None

    def _count(self) -> int:
        if not self.results_path.exists():
            return 0
        return int(pl.scan_parquet(self.results_path).select(pl.len()).collect().item())

    @staticmethod
    def remove(paths: Iterable[Path]) -> None:
        """Delete ``paths``; those already gone are fine."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _order_columns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(column_order(frame.columns))


def column_order(names: Sequence[str]) -> list[str]:
    """Result columns first and last, everything else (input and tool columns) between, as found."""
    head = [field.name for field in HEAD_FIELDS]
    tail = [field.name for field in TAIL_FIELDS]
    middle = [name for name in names if name not in RESULT_COLUMNS]
    return head + middle + [name for name in tail if name in names]


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; not every platform allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
