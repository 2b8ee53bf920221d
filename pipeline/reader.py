"""Reads the input table lazily: CSV, Parquet or JSONL files, one path or a glob of them.

Owns: finding the files, checking the columns the job needs, stable row ids, and handing out rows
in bounded batches (memory does not grow with the table). Knows nothing about the API.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.records import Row

SOURCE_COLUMN = "__pipeline_source_file"
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}


@dataclass(frozen=True, slots=True)
class InputTable:
    """An opened (not yet read) input: its files, columns and Arrow schema."""

    files: tuple[Path, ...]
    frame: pl.LazyFrame
    columns: tuple[str, ...]
    arrow_schema: pa.Schema
    id_column: str | None
    hash_columns: tuple[str, ...] = ()

    def describe(self) -> str:
        """The input as users named it, for messages."""
        return (
            str(self.files[0]) if len(self.files) == 1 else f"{len(self.files)} files ({self.files[0]}, ...)"
        )


@dataclass(frozen=True, slots=True)
class SourcedRow:
    """A row plus the folder its file lives in (relative image paths resolve against it)."""

    row: Row
    base_dir: Path


def find_files(pattern: str) -> tuple[Path, ...]:
    """The files a path or glob names, sorted; InputError when there are none."""
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"no input files match {pattern}")
        return tuple(files)
    path = Path(pattern)
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.is_dir():
        raise InputError(f"input is a directory, not a file: {path} (use a glob such as {path}/*.csv)")
    return (path,)


def _scan(path: Path) -> pl.LazyFrame:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        # Everything as text: inference from the first rows breaks on row 40,000, and ids like 00123 survive.
        return pl.scan_csv(
            path, separator=CSV_SUFFIXES[suffix], infer_schema=False, include_file_paths=SOURCE_COLUMN
        )
    if suffix in PARQUET_SUFFIXES:
        return pl.scan_parquet(path, include_file_paths=SOURCE_COLUMN)
    if suffix in JSONL_SUFFIXES:
        return pl.scan_ndjson(path, include_file_paths=SOURCE_COLUMN)
    raise InputError(f"{path}: unsupported input format {suffix!r} (use .csv, .tsv, .parquet or .jsonl)")


def open_input(pattern: str, *, id_column: str | None, needed: dict[str, str]) -> InputTable:
    """Open the input and check it has every needed column (column -> what needs it)."""
    files = find_files(pattern)
    scans = [_scan(path) for path in files]
    frame = scans[0] if len(scans) == 1 else pl.concat(scans, how="diagonal_relaxed")
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(
            f"cannot read {files[0] if len(files) == 1 else pattern}: {_first_line(exc)}"
        ) from None
    columns = tuple(name for name in schema.names() if name != SOURCE_COLUMN)
    wanted = dict(needed)
    if id_column is not None:
        wanted[id_column] = "id_column"
    for column, user in wanted.items():
        if column not in columns:
            shown = ", ".join(columns[:20]) + (" ..." if len(columns) > 20 else "")
            raise InputError(f"{files[0]}: no column {column!r} (used by {user}); columns are: {shown}")
    arrow_schema = pl.DataFrame(schema={name: schema[name] for name in columns}).to_arrow().schema
    table = InputTable(files, frame, columns, arrow_schema, id_column, tuple(needed))
    if id_column is not None:
        check_ids(table)
    return table


def check_ids(table: InputTable) -> None:
    """Refuse null or duplicate values in ``id_column``: silently overwriting rows loses answers."""
    column = table.id_column
    assert column is not None
    ids = pl.col(column).cast(pl.String)
    try:
        counts = (
            table.frame.select(ids.alias("id"))
            .group_by("id")
            .len()
            .filter((pl.col("len") > 1) | pl.col("id").is_null())
            .sort("len", descending=True)
            .head(6)
            .collect()
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {table.describe()}: {_first_line(exc)}") from None
    if counts.height == 0:
        return
    if counts["id"].null_count():
        raise InputError(f"{table.describe()}: id_column {column!r} has empty values; every row needs an id")
    shown = ", ".join(f"{value!r} ({n}×)" for value, n in counts.iter_rows())
    raise InputError(f"{table.describe()}: id_column {column!r} has duplicate values: {shown}")


def value_hash(values: Mapping[str, Any], columns: Sequence[str]) -> str:
    """A stable hash of some cells: Python's JSON (not polars') so it survives library upgrades."""
    cells = [values.get(column) for column in columns]
    text = json.dumps(cells, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def row_id(values: Mapping[str, Any], columns: Sequence[str], id_column: str | None) -> str:
    """A row's id: the id column as text, or a hash of all the row's values."""
    if id_column is not None:
        return str(values[id_column])
    return value_hash(values, columns)


def iter_rows(table: InputTable, *, batch_size: int = 2000, limit: int | None = None) -> Iterator[SourcedRow]:
    """Yield rows in input order, batch by batch.

    Without an id column, identical rows get ``-2``, ``-3``... suffixes so every row keeps its own id.
    """
    frame = table.frame if limit is None else table.frame.head(limit)
    seen: set[str] = set()
    index = 0
    try:
        for batch in frame.collect_batches(chunk_size=batch_size):
            sources = batch[SOURCE_COLUMN].to_list()
            values = batch.select(table.columns).rows(named=True)
            for source, cells in zip(sources, values, strict=True):
                key = row_id(cells, table.columns, table.id_column)
                if table.id_column is None:
                    key = _dedupe(key, seen)
                content = value_hash(cells, table.hash_columns)
                yield SourcedRow(Row(index, key, cells, content), Path(source).parent)
                index += 1
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {table.describe()} near row {index + 1}: {_first_line(exc)}") from None


def count_rows(table: InputTable) -> int:
    """Number of rows, reading as little as the format allows."""
    try:
        return int(table.frame.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {table.describe()}: {_first_line(exc)}") from None


def _dedupe(row_id: str, seen: set[str]) -> str:
    candidate, n = row_id, 1
    while candidate in seen:
        n += 1
        candidate = f"{row_id}-{n}"
    seen.add(candidate)
    return candidate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cell_text(value: Any) -> str:
    """A cell as prompt text: nulls become empty strings, everything else ``str()``."""
    return "" if value is None else str(value)
