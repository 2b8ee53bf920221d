"""Tables on disk or in object storage: CSV, TSV, Parquet and JSONL, scanned lazily by polars.

Owns: scanning each format (CSV cells as text, so ids like ``007`` survive; Parquet and JSONL keep
their types), ``storage_options`` for object-storage tables, and refusing malformed local files with
one line that names the file and line: polars reads some of them silently wrong (short rows padded
with nulls, a blank line as a row of empty cells) and reports the rest without a line number.
Knows nothing about rows, ids or the API.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import InputError

SOURCE_COLUMN = "__pipeline_source_file"
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
TABLE_SUFFIXES = frozenset(CSV_SUFFIXES) | PARQUET_SUFFIXES | JSONL_SUFFIXES
# Longest piece of a library's message quoted back: polars may quote a whole (10 MB) cell.
MESSAGE_CHARS = 200
_CHUNK_BYTES = 1 << 20


def suffix_of(name: str) -> str:
    """A file name's (or URL's) last suffix, lower case."""
    return Path(name.rsplit("/", 1)[-1]).suffix.lower()


def scan_table(source: str | Path, storage_options: dict[str, str] | None = None) -> pl.LazyFrame:
    """A lazy scan of one table file (a local path or an object-storage URL) with its source column."""
    suffix = suffix_of(str(source))
    extra: dict[str, Any] = {"include_file_paths": SOURCE_COLUMN}
    if storage_options is not None:
        extra["storage_options"] = storage_options
    if suffix in CSV_SUFFIXES:
        # Everything as text: inference from the first rows breaks on row 40,000, and ids like 00123 survive.
        return pl.scan_csv(source, separator=CSV_SUFFIXES[suffix], infer_schema=False, **extra)
    if suffix in PARQUET_SUFFIXES:
        return pl.scan_parquet(source, **extra)
    if suffix in JSONL_SUFFIXES:
        return pl.scan_ndjson(source, **extra)
    raise InputError(
        f"{source}: unsupported input format {suffix!r} (use .csv, .tsv, .parquet or .jsonl; image files"
        " or .tar shards as a glob of their own)"
    )


def first_line(exc: BaseException) -> str:
    """An exception's first line, cut to MESSAGE_CHARS."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def describe(files: Sequence[object]) -> str:
    """Files as users named them, for messages."""
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


def explain(
    exc: BaseException, files: Sequence[Path | str], *, after_row: int | None = None, where: str | None = None
) -> str:
    """One line for a polars read error: the file and line when a check can find it, else polars' words.

    Only local files (``Path``) are checked line by line; object-storage URLs get polars' words.
    :param where: the input's name when it is no file (a table held in Python).
    """
    for path in files:
        problem = _file_problem(path) if isinstance(path, Path) else None
        if problem is not None:
            return problem
    where = where if where is not None else describe(files)
    if after_row:
        where += f" after row {after_row}"
    reason = first_line(exc)
    if reason.startswith("cannot parse") and any(suffix_of(str(path)) in JSONL_SUFFIXES for path in files):
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
