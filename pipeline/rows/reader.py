"""Reads the input table lazily: CSV, Parquet or JSONL files, one path or a glob of them.

Owns: finding the files, checking the columns the job needs (present, and of a usable type), stable
row ids, and handing out rows in bounded batches (memory does not grow with the table). Also owns
refusing malformed files with one line that names the file and line: polars reads some of them
silently wrong (short rows padded with nulls, a blank line as a row of empty cells) and reports the
rest without a line number. Knows nothing about the API.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import glob
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
# Polars types an image column may hold: paths, URLs and data: URIs are text (Null: every cell empty).
TEXT_TYPES = frozenset({pl.String, pl.Categorical, pl.Enum, pl.Null})
# Longest piece of a library's message quoted back: polars may quote a whole (10 MB) cell.
MESSAGE_CHARS = 200
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class InputTable:
    """An opened (not yet read) input: its files, columns and Arrow schema."""

    files: tuple[Path, ...]
    frame: pl.LazyFrame
    columns: tuple[str, ...]
    arrow_schema: pa.Schema
    id_column: str | None
    hash_columns: tuple[str, ...] = ()
    label: str | None = None  # an input that is no file (rows.memory): its name in messages

    def describe(self) -> str:
        """The input as users named it, for messages."""
        return self.label if self.label is not None else _describe(self.files)


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
    """Open the input and check it has every needed column (column -> what needs it).

    :raises InputError: one line naming the file (and line, when one is to blame) for an empty or
        malformed file, a missing column (suggesting a near name), or a column of an unusable type.
    """
    files = find_files(pattern)
    for path in files:
        check_file(path)
    scans = [_scan(path) for path in files]
    frame = scans[0] if len(scans) == 1 else pl.concat(scans, how="diagonal_relaxed")
    where = _describe(files)
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(_explain(exc, files)) from None
    columns = check_columns(where, schema, id_column=id_column, needed=needed)
    arrow_schema = pl.DataFrame(schema={name: schema[name] for name in columns}).to_arrow().schema
    table = InputTable(files, frame, columns, arrow_schema, id_column, tuple(needed))
    if id_column is not None:
        check_ids(table)
    return table


def check_columns(
    where: str, schema: pl.Schema, *, id_column: str | None, needed: dict[str, str]
) -> tuple[str, ...]:
    """The input's own columns, once it has every needed one (and ``id_column``) of a usable type.

    :raises InputError: naming ``where``, the column and what uses it.
    """
    columns = tuple(name for name in schema.names() if name != SOURCE_COLUMN)
    wanted = dict(needed)
    if id_column is not None:
        wanted[id_column] = "id_column"
    for column, user in wanted.items():
        if column not in columns:
            raise InputError(f"{where}: no column {column!r} (used by {user}){_suggest(column, columns)}")
    for column, user in wanted.items():
        _check_type(where, column, user, schema[column])
    return columns


def _suggest(column: str, columns: Sequence[str]) -> str:
    """``; did you mean 'x'? Columns are: ...`` for a missing-column message (typos are the usual cause)."""
    # a quoted CSV header may hold a line break; the message must stay one line
    shown = ", ".join(name.replace("\n", "\\n") for name in columns[:20]) + (
        " ..." if len(columns) > 20 else ""
    )
    close = difflib.get_close_matches(column, columns, n=1)
    if not close:
        # a case slip ("Subject") scores too low on a short name; compare case-blind too
        lowered = {name.lower(): name for name in columns}
        close = [lowered[match] for match in difflib.get_close_matches(column.lower(), list(lowered), n=1)]
    if close:
        return f"; did you mean {close[0]!r}? Columns are: {shown}"
    return f"; columns are: {shown}"


def _check_type(where: str, column: str, user: str, dtype: pl.DataType) -> None:
    """Refuse columns whose type cannot do their job, before any row is sent."""
    if "request.images" in user and dtype.base_type() not in TEXT_TYPES:
        # str() of a number or a list would be read as a path: every row a confusing image_error
        raise InputError(
            f"{where}: column {column!r} (used by {user}) holds {dtype}, "
            "expected text (paths, URLs or data: URIs)"
        )
    if user != "id_column":
        return
    if dtype.is_float():
        raise InputError(
            f"{where}: id_column {column!r} holds {dtype}; floats make poor ids (1.0 is not 1 as text, "
            "and large values round): use a column of integers or text"
        )
    if dtype.is_nested() or dtype.base_type() in {pl.Binary, pl.Object}:
        raise InputError(f"{where}: id_column {column!r} holds {dtype}, expected integers or text")


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
        raise InputError(_explain(exc, table.files, where=table.label)) from None
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
        # polars reads whole batches, so all we know is that the rows before this one were fine
        raise InputError(_explain(exc, table.files, after_row=index, where=table.label)) from None


def _dedupe(row_id: str, seen: set[str]) -> str:
    candidate, n = row_id, 1
    while candidate in seen:
        n += 1
        candidate = f"{row_id}-{n}"
    seen.add(candidate)
    return candidate


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def _describe(files: Sequence[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"


def check_file(path: Path) -> None:
    """Refuse an empty file, and a CSV/TSV that polars would misread or reject, naming the line.

    Reads a CSV once more than polars does (about 0.5 s per 100 MB); that is the price of naming the
    line, and of refusing what polars would otherwise read silently wrong.
    """
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if empty:
        raise InputError(f"{path}: input file is empty")
    separator = CSV_SUFFIXES.get(path.suffix.lower())
    if separator is not None:
        problem = _csv_problem(path, separator)
        if problem is not None:
            raise InputError(problem)


def _explain(
    exc: BaseException, files: Sequence[Path], *, after_row: int | None = None, where: str | None = None
) -> str:
    """One line for a polars read error: the file and line when a check can find it, else polars' words."""
    for path in files:
        problem = _file_problem(path)
        if problem is not None:
            return problem
    where = where if where is not None else _describe(files)
    if after_row:
        where += f" after row {after_row}"
    reason = _first_line(exc)
    if reason.startswith("cannot parse") and any(path.suffix.lower() in JSONL_SUFFIXES for path in files):
        # polars fixes a JSONL column's type from the first lines; a later line that disagrees ends up here
        reason += " (a value whose type differs from the same key's in earlier lines)"
    return f"cannot read {where}: {reason}"


def _file_problem(path: Path) -> str | None:
    """What is wrong with one file, for a message; None when the checks here find nothing."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _csv_problem(path, CSV_SUFFIXES[suffix])
    if suffix in JSONL_SUFFIXES:
        return _jsonl_problem(path)
    return None


def _csv_problem(path: Path, separator: str) -> str | None:
    """The first line polars would misread or reject (bad UTF-8, ragged, blank, bad quoting), or None."""
    # A 10 MB cell is legitimate input; the csv module's default cap is 128 KiB (and process-wide).
    previous = csv.field_size_limit(2**31 - 1)
    try:
        # utf-8-sig: a BOM is not part of the first column's name (polars drops it as well)
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return _csv_records_problem(path, handle, separator)
    except UnicodeDecodeError:
        return _utf8_problem(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    finally:
        csv.field_size_limit(previous)


def _csv_records_problem(path: Path, handle: Iterable[str], separator: str) -> str | None:
    """Walk the file's records; line numbers are the file's own (a quoted newline counts)."""
    # The csv module reads no further than the record it returns, so `raw` collects exactly its lines.
    raw: list[str] = []

    def lines() -> Iterator[str]:
        for line in handle:
            raw.append(line)
            yield line

    reader = csv.reader(lines(), delimiter=separator, strict=True)
    width: int | None = None
    while True:
        start = reader.line_num + 1
        raw.clear()
        try:
            record = next(reader)
        except StopIteration:
            return None if width is not None else f"{path}: input file is empty (no header row)"
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return f"{path} line {start}: a quoted cell starts here and is never closed"
            hint = 'a quote inside a quoted cell must be doubled ("")'
            return f"{path} line {start}: malformed CSV ({exc}); {hint}"
        if sum(line.count('"') for line in raw) % 2:
            # the csv module keeps a lone quote in an unquoted cell; polars opens a quoted cell there
            # and runs on into the next lines, then refuses the file without saying where
            return (
                f'{path} line {start}: a lone quote (") in a cell that is not quoted; quote the cell '
                'and double the quote: "5\'11"""'
            )
        if width is None:
            if not record:
                continue  # polars skips blank lines before the header
            width = len(record)
            if len(set(record)) < width:
                # polars would rename the second 'x' to 'x_duplicated_0': which one a prompt gets is a guess
                twice = next(name for name in record if record.count(name) > 1)
                return f"{path} line {start}: the header names column {twice!r} twice"
            continue
        if len(record) == width or (not record and width == 1):
            continue
        if not record:
            return f"{path} line {start} is blank; delete it (it would be read as a row of empty cells)"
        # too few: polars pads the row with empty cells; too many: polars refuses without a line number
        return (
            f"{path} line {start} has {len(record)} fields, but the header has {width}; "
            "quote cells that contain the separator, and keep empty cells (a,,c)"
        )


def _utf8_problem(path: Path) -> str | None:
    """Where a file stops being UTF-8: line, byte offset and the byte; None when it is valid."""
    line, offset, carry = 1, 0, b""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                data = carry + chunk
                try:
                    # final=False: a character split across chunks is kept for the next round
                    _text, used = codecs.utf_8_decode(data, "strict", False)
                except UnicodeDecodeError as exc:
                    line += data.count(b"\n", 0, exc.start)
                    return (
                        f"{path} line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02X} at offset "
                        f"{offset + exc.start:,}); re-save the file as UTF-8"
                    )
                line += data.count(b"\n", 0, used)
                offset += used
                carry = data[used:]
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    if carry:
        return f"{path} line {line}: not valid UTF-8 (the file ends inside a character); re-save it as UTF-8"
    return None


def _jsonl_problem(path: Path) -> str | None:
    """The first line of a JSONL file that is not UTF-8 or not a JSON object, or None."""
    problem = _utf8_problem(path)
    if problem is not None:
        return problem
    objects = 0
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
            if not isinstance(value, dict):
                return f"{path} line {number}: expected a JSON object, got {type(value).__name__}"
            objects += 1
    return None if objects else f"{path}: input file is empty (no JSON objects)"
