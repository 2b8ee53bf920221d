"""Streaming compaction: an old ``results.parquet`` plus journals into a new one, never all in memory.

:class:`Fold` is what :meth:`pipeline.results.store.ResultStore.compact` runs; the store owns the files, the
atomic replace and the journal format, this module only the merge (latest result per row wins,
ordered by ``row_index``, schemas unified as a diagonal concatenation would).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import replace_file
from pipeline.errors import OutputError
from pipeline.results.journal import iter_journal, journal_schema
from pipeline.results.schema import column_order


def prefer_system_allocator() -> None:
    """Make Arrow allocate from the system allocator for the rest of the process, unless the user chose.

    Arrow's default allocator (mimalloc) keeps what it frees for reuse, per thread, so the final
    compaction of a large run left tens of MB of peak RSS that never came back; the system
    allocator returns large blocks at once. It is process-wide state, so only the CLI, which owns
    its process, calls this (when a command starts); importing the package changes nothing, and a
    program that uses the library keeps its own choice. ``ARROW_DEFAULT_MEMORY_POOL`` always wins.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


# Rows per row group of results.parquet, and per step of compaction: what compaction holds at once.
FOLD_ROWS = 4096


class Fold:
    """One streaming compaction: old ``results.parquet`` plus journals into a new one.

    1. The sources' schemas are unified, as ``pl.concat(how="diagonal_relaxed")`` would: a column
       missing from a source is null there, differing types widen (to a string when nothing else fits).
    2. One pass over the journals copies each, conformed to that schema and in coalesced batches,
       into a random-access Arrow file beside it (the torn tail dropped), keeping only the keys.
    3. From the keys alone: the latest result per ``row_id`` wins, ordered by ``row_index``.
    4. The output is written :data:`FOLD_ROWS` rows at a time: each step reads only the row groups
       and batches holding rows of that step, then sorts those rows into place.
    """

    def __init__(
        self, results: Path, journals: list[Path], *, metadata: dict[bytes, bytes] | None = None
    ) -> None:
        """:param results: the ``results.parquet`` to fold into (it may not exist yet).

        :param metadata: schema metadata the new file carries besides what its sources carry
            (an object-storage output names the segments it folded).
        """
        self.results = results
        self.journals = journals
        self.metadata = metadata
        self.copies: list[Path] = []

    def run(self) -> int | None:
        """Write the folded results; None when the journals hold no rows (nothing is rewritten)."""
        try:
            return self._run()
        except (pa.ArrowException, OSError) as exc:
            raise OutputError(f"cannot compact {self.results.parent}: {exc}") from None
        finally:
            remove_files(self.copies)

    def _run(self) -> int | None:
        # copies a compaction killed midway left behind (the output lock says no other one runs)
        for journal_dir in {path.parent for path in self.journals}:
            remove_files(journal_dir.glob(".*.fold-*"))
        results = self.results
        old = pq.ParquetFile(results) if results.exists() else None
        schemas = [_plain_schema(old.schema_arrow)] if old is not None else []
        journal_schemas = [(path, journal_schema(path)) for path in self.journals]
        schemas += [schema for _, schema in journal_schemas if schema is not None]
        if not schemas:
            return None
        target = _unify(schemas)
        if self.metadata:
            target = target.with_metadata({**(target.metadata or {}), **self.metadata})
        sources: list[_Source] = []
        if old is not None:
            sources.append(_ParquetSource(results, old, target))
        for path, schema in journal_schemas:
            if schema is not None:
                copy = path.with_name(f".{path.name}.fold-{os.getpid()}")
                self.copies.append(copy)
                sources.append(_copy_journal(path, copy, target))
        if not any(source.rows for source in sources[1 if old is not None else 0 :]):
            return None  # journals with no results: results.parquet stays as it is
        total = _plan_order(sources)

        def write(tmp: Path) -> None:
            # no dictionary pages: most result columns are unique per row (ids, answers), where a
            # dictionary costs memory while writing and makes the file bigger (zstd does better)
            options = {"compression": "zstd", "write_statistics": True, "use_dictionary": False}
            with pq.ParquetWriter(tmp, target, **options) as writer:
                for lo in range(0, max(total, 1), FOLD_ROWS):
                    writer.write_table(_gather(sources, target, lo, lo + FOLD_ROWS), row_group_size=FOLD_ROWS)

        replace_file(results, write)
        return total


def relabel(results: Path, old: str, new: str, max_tokens: int) -> int:
    """Rewrite ``results.parquet`` so rows of fingerprint ``old`` carry ``new`` and their ``max_tokens``.

    For results an earlier version wrote (:meth:`pipeline.job.request.RequestSpec.legacy_fingerprint`):
    its fingerprint hashed ``max_tokens``, so such a row was sent with the job's current one. One pass,
    a row group at a time, only when some row has ``old``; returns the rows relabelled (0: unchanged).
    """
    try:
        file = pq.ParquetFile(results)
        fingerprints = file.read(columns=["request_fingerprint"]).column(0)
        count = pc.sum(pc.equal(fingerprints, old)).as_py() or 0
        if not count:
            return 0
        schema = _plain_schema(file.schema_arrow)
        if "max_tokens" not in schema.names:
            fields = {field.name: field for field in schema}
            fields["max_tokens"] = pa.field("max_tokens", pa.int64())
            schema = pa.schema([fields[name] for name in column_order(list(fields))])

        def write(tmp: Path) -> None:
            options = {"compression": "zstd", "write_statistics": True, "use_dictionary": False}
            with pq.ParquetWriter(tmp, schema, **options) as writer:
                for group in range(file.num_row_groups):
                    table = file.read_row_group(group)
                    mask = pc.fill_null(pc.equal(table.column("request_fingerprint"), old), False)
                    if "max_tokens" in table.column_names:
                        sent = table.column("max_tokens").cast(pa.int64())
                    else:
                        sent = pa.nulls(table.num_rows, pa.int64())
                    sent = pc.if_else(
                        pc.and_(mask, pc.is_null(sent)), pa.scalar(max_tokens, pa.int64()), sent
                    )
                    table = _set(table, "max_tokens", sent)
                    table = _set(
                        table,
                        "request_fingerprint",
                        pc.if_else(mask, new, table.column("request_fingerprint")),
                    )
                    writer.write_table(_conform(table, schema), row_group_size=FOLD_ROWS)

        replace_file(results, write)
    except (pa.ArrowException, OSError) as exc:
        raise OutputError(f"cannot update {results}: {exc}") from None
    return int(count)


def _set(table: pa.Table, name: str, column: pa.ChunkedArray | pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


class _Source:
    """Rows in units (row groups, record batches), each readable on its own, with where each row goes.

    ``out[i]`` is the output position of the source's row ``i``, or -1 when a later result replaced it.
    """

    def __init__(self, units: list[int], keys: pa.Table) -> None:
        self.units = units  # rows per unit
        self.starts = [0]
        for rows in units:
            self.starts.append(self.starts[-1] + rows)
        self.rows = self.starts[-1]
        self.keys: pa.Table | None = keys  # row_id, row_index: dropped once the plan is made
        self.out: pa.Array = pa.array([], pa.int64())

    def read_unit(self, number: int) -> pa.Table:
        raise NotImplementedError


class _ParquetSource(_Source):
    """The old ``results.parquet``; its units are batches of at most FOLD_ROWS within a row group.

    A file written by an earlier version may be one row group of every row: reading it whole would
    hold them all at once, so a unit is found by decoding its row group's batches up to it.
    """

    def __init__(self, path: Path, file: pq.ParquetFile, target: pa.Schema) -> None:
        self.store_path = path
        self.file = file
        self.target = target
        meta = file.metadata
        self.places: list[tuple[int, int]] = []  # (row group, first row within it) per unit
        units: list[int] = []
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            for start in range(0, rows, FOLD_ROWS):
                self.places.append((group, start))
                units.append(min(FOLD_ROWS, rows - start))
        names = file.schema_arrow.names
        key_columns = [name for name in ("row_id", "row_index") if name in names]
        keys = [
            _key_table(pa.Table.from_batches([b])) for b in file.iter_batches(FOLD_ROWS, columns=key_columns)
        ]
        super().__init__(units, _concat(keys))

    def read_unit(self, number: int) -> pa.Table:
        group, start = self.places[number]
        stop = start + self.units[number]
        pieces: list[pa.RecordBatch] = []
        offset = 0
        for batch in self.file.iter_batches(FOLD_ROWS, row_groups=[group]):
            end = offset + batch.num_rows
            if end > start:
                pieces.append(batch.slice(max(0, start - offset), min(end, stop) - max(offset, start)))
            if end >= stop:
                break
            offset = end
        table = pa.Table.from_batches(pieces, schema=self.file.schema_arrow)
        if table.num_rows != self.units[number]:
            raise OutputError(f"{self.store_path}: changed while it was being compacted")
        return _conform(table, self.target)


class _ArrowFileSource(_Source):
    def __init__(self, path: Path, units: list[int], keys: pa.Table) -> None:
        self.path = path
        super().__init__(units, keys)

    def read_unit(self, number: int) -> pa.Table:
        with pa.OSFile(str(self.path), "rb") as source:
            return pa.Table.from_batches([pa.ipc.open_file(source).get_batch(number)])


def _copy_journal(path: Path, copy: Path, target: pa.Schema) -> _ArrowFileSource:
    """Copy a journal's complete batches, conformed to ``target``, into a random-access Arrow file."""
    units: list[int] = []
    keys: list[pa.Table] = []
    with pa.OSFile(str(copy), "wb") as sink, pa.ipc.new_file(sink, target) as writer:
        for batch in iter_journal(path, FOLD_ROWS // 2):
            table = _conform(pa.Table.from_batches([batch]), target)
            for chunk in table.combine_chunks().to_batches():
                writer.write_batch(chunk)
                units.append(chunk.num_rows)
            keys.append(_key_table(table))
    return _ArrowFileSource(copy, units, _concat(keys))


def _plan_order(sources: list[_Source]) -> int:
    """Fill each source's ``out``: the latest result per row_id wins, ordered by row_index (stable).

    Returns the number of rows the output will hold.
    """
    parts = [source.keys for source in sources if source.keys is not None]
    keys = pa.concat_tables(parts).combine_chunks()
    for source in sources:
        source.keys = None
    rows = keys.num_rows
    # g: the order results were recorded in (sources in order, rows in order); the largest g wins
    g = pa.array(range(rows), pa.int64())
    keys = keys.append_column("g", g)
    latest = keys.group_by("row_id", use_threads=False).aggregate([("g", "max")])
    kept = keys.take(latest.column("g_max"))
    order = pc.sort_indices(kept, sort_keys=[("row_index", "ascending"), ("g", "ascending")])
    sorted_g = pc.take(kept.column("g"), order)  # g of output row 0, 1, 2...
    by_g = pc.sort_indices(sorted_g)  # output positions, in the order of g
    wins = pc.is_in(g, value_set=pc.take(sorted_g, by_g))
    out = pc.replace_with_mask(pc.fill_null(pa.nulls(rows, pa.int64()), -1), wins, pc.cast(by_g, pa.int64()))
    for source, start in zip(sources, itertools.accumulate([0] + [s.rows for s in sources]), strict=False):
        source.out = out.slice(start, source.rows)
    return int(kept.num_rows)


def _gather(sources: list[_Source], target: pa.Schema, lo: int, hi: int) -> pa.Table:
    """Output rows ``lo`` to ``hi`` (exclusive), in order, from the units that hold them."""
    parts: list[pa.Table] = []
    places: list[pa.Array] = []
    for source in sources:
        for number, rows in enumerate(source.units):
            out = source.out.slice(source.starts[number], rows)
            wanted = pc.and_(pc.greater_equal(out, lo), pc.less(out, hi))
            if not pc.any(wanted).as_py():
                continue
            parts.append(source.read_unit(number).filter(wanted))
            places.append(out.filter(wanted))
    if not parts:
        return target.empty_table()
    order = pc.sort_indices(pa.chunked_array(places, pa.int64()))
    return pa.concat_tables(parts).take(order)


def _key_table(table: pa.Table) -> pa.Table:
    """Just ``row_id`` (as large_string) and ``row_index`` (int64; -1 where missing, so it sorts first)."""
    row_id = table.column("row_id").cast(pa.large_string())
    if "row_index" in table.column_names:
        row_index = pc.fill_null(table.column("row_index").cast(pa.int64()), -1)
    else:
        row_index = pa.chunked_array([pa.array([-1] * table.num_rows, pa.int64())])
    return pa.table({"row_id": row_id, "row_index": row_index})


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({"row_id": pa.array([], pa.large_string()), "row_index": pa.array([], pa.int64())})
    return pa.concat_tables(tables).combine_chunks()


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without Parquet's own copy of the Arrow schema, should a writer have left it."""
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k != b"ARROW:schema"}
    return schema.with_metadata(metadata) if metadata else schema.remove_metadata()


def _unify(schemas: list[pa.Schema]) -> pa.Schema:
    """The schema a diagonal, relaxed concatenation of ``schemas`` has, in the result column order."""
    fields: dict[str, pa.Field] = {}
    present: dict[str, int] = {}
    for schema in schemas:
        for field in schema:
            present[field.name] = present.get(field.name, 0) + 1
            known = fields.get(field.name)
            fields[field.name] = (
                field if known is None else known.with_type(_supertype(known.type, field.type))
            )
    metadata: dict[bytes, bytes] = {}
    for schema in schemas:
        metadata.update(schema.metadata or {})
    ordered = [
        # a column some source lacks is null there
        fields[name].with_nullable(fields[name].nullable or present[name] < len(schemas))
        for name in column_order(list(fields))
    ]
    return pa.schema(ordered, metadata=metadata or None)


def _supertype(left: pa.DataType, right: pa.DataType) -> pa.DataType:
    if left == right:
        return left
    try:
        unified = pa.unify_schemas(
            [pa.schema([("c", left)]), pa.schema([("c", right)])], promote_options="permissive"
        )
    except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.large_string()  # polars' relaxed concat falls back to strings as well
    return unified.field("c").type


def _conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """``table`` with ``target``'s columns, order and types: missing columns null, others cast."""
    columns = []
    for field in target:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else pc.cast(column, field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=target)


def remove_files(paths: Iterable[Path]) -> None:
    """Delete ``paths``; those already gone are fine."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
