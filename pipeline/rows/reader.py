"""Reads the input lazily, whatever it is and wherever it lives, and hands out its rows.

Owns: opening what the job's ``input`` names (a path, a glob, brace ranges, an ``s3://``, ``gs://``
or ``az://`` URL or glob; matched by :mod:`~pipeline.rows.matching`) by its kind (tables:
:mod:`~pipeline.rows.tables`; image files: :mod:`~pipeline.rows.folder`; WebDataset shards:
:mod:`~pipeline.rows.webdataset`),
checking the columns the job needs (present, and of a usable type), stable row ids, and handing out
rows in bounded batches (memory does not grow with the input). A table held in Python is opened by
:mod:`~pipeline.rows.memory` through the same checks (:func:`checked_table`). Knows nothing about the API.

Rows keep what they always had: ``index`` (position in the input), ``row_id`` (the id column as
text, else a hash of the row's values, ``-2``... suffixes for repeats) and ``content_hash`` (a hash
of the cells that feed the request). Media cells that hold bytes are recorded as digests
(:mod:`~pipeline.rows.cells`); the raw cells travel beside the row, in :attr:`SourcedRow.media`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import polars as pl
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.records import Row
from pipeline.rows import folder, webdataset
from pipeline.rows.cells import holds_bytes, media_type_problem, recorded_dtype, recorded_value
from pipeline.rows.matching import find_files, input_kind, list_remote
from pipeline.rows.storage import ObjectStorage, ObjectStoreError, ObjectUrl, is_object_url
from pipeline.rows.tables import (
    SOURCE_COLUMN,
    check_file,
    describe,
    explain,
    scan_table,
)

# rows per batch read from a table; a table whose media cells hold bytes reads fewer at a time
BATCH_ROWS = 2000
BYTES_BATCH_ROWS = 32

__all__ = [
    "SOURCE_COLUMN",
    "InputTable",
    "SourcedRow",
    "check_file",
    "check_ids",
    "checked_table",
    "count_rows",
    "file_table",
    "iter_rows",
    "media_of",
    "open_input",
    "row_id",
    "value_hash",
]


@dataclass(frozen=True, slots=True)
class InputTable:
    """An opened (not yet read) input: what it matched, its columns and the Arrow schema the output keeps.

    :param frame: the rows as a lazy polars frame (every kind but WebDataset shards).
    :param stream: for streamed kinds, a function giving frames of at most N rows (``frame`` is None).
    :param base: where every row's relative paths resolve (image folders), else each file's folder.
    :param media_columns: image and document columns whose cells may hold bytes (recorded as digests).
    :param unique_ids: ids are made unique with ``-2``... suffixes (hash ids, WebDataset keys).
    """

    files: tuple[Path | str, ...]
    frame: pl.LazyFrame | None
    columns: tuple[str, ...]
    arrow_schema: pa.Schema
    id_column: str | None
    hash_columns: tuple[str, ...] = ()
    kind: str = "table"
    stream: Callable[[int], Iterator[pl.DataFrame]] | None = None
    base: tuple[Path, str | None] | None = None
    media_columns: tuple[str, ...] = ()
    unique_ids: bool = False
    label: str | None = None  # an input that is no file (rows.memory): its name in messages

    def describe(self) -> str:
        """The input as users named it, for messages."""
        return self.label if self.label is not None else describe(self.files)

    @property
    def batch_rows(self) -> int:
        """Rows to read at once: fewer when image or document bytes are in the rows."""
        return BYTES_BATCH_ROWS if self.media_columns else BATCH_ROWS


@dataclass(frozen=True, slots=True)
class SourcedRow:
    """A row plus where its relative paths resolve, and the raw cells of media columns holding bytes.

    :param base_dir: the folder of the row's file (local inputs).
    :param base_url: the folder of the row's file in object storage (``s3://bucket/dir/``), when it is there.
    :param media: media column -> its cell as read (bytes, structs, lists); ``row.values`` holds digests.
    :param media_bytes: how many bytes ``media`` holds (bounds what is read ahead).
    """

    row: Row
    base_dir: Path
    base_url: str | None = None
    media: Mapping[str, Any] = field(default_factory=dict)
    media_bytes: int = 0


def open_input(
    pattern: str,
    *,
    id_column: str | None,
    needed: dict[str, str],
    media: Sequence[str] | None = None,
    storage: ObjectStorage | None = None,
) -> InputTable:
    """Open the input and check it has every needed column (column -> what needs it).

    :param media: the image and document columns (their cells may hold bytes, structs and lists);
        by default the columns ``needed`` says ``request.images`` or ``request.documents`` use.
    :param storage: object storage, for ``s3://``, ``gs://`` and ``az://`` inputs (made when needed).
    :raises InputError: one line naming the file (and line, when one is to blame) for an empty or
        malformed file, a missing column (suggesting a near name), or a column of an unusable type.
    """
    if media is None:
        media = media_of(needed)
    patterns = webdataset.expand_braces(pattern)
    remote = any(is_object_url(item) for item in patterns)
    if remote:
        storage = storage or ObjectStorage()
        objects = [info for item in patterns for info in list_remote(item, storage)]
        files: tuple[Path | str, ...] = tuple(info.url for info in objects)
    else:
        files = tuple(path for item in patterns for path in find_files(item))
    kind = input_kind(files)
    if kind == "images":
        found = (
            folder.remote_folder(patterns[0], objects) if remote else folder.local_folder(patterns[0], files)  # type: ignore[arg-type]
        )
        # the id defaults to image_path: one row per file, named by the file
        chosen = id_column or folder.PATH_COLUMN
        return checked_table(
            files,
            found.frame,
            chosen,
            needed,
            media,
            kind=kind,
            base=(found.base_dir, found.base_url),
        )
    if kind == "webdataset":
        return _open_shards(files, id_column, needed, media, storage)
    scans = []
    for item in files:
        if isinstance(item, Path):
            check_file(item)
            scans.append(scan_table(item))
        else:
            assert storage is not None
            scans.append(scan_table(item, storage.settings.polars_options(item)))
    frame = scans[0] if len(scans) == 1 else pl.concat(scans, how="diagonal_relaxed")
    return checked_table(files, frame, id_column, needed, media)


def media_of(needed: Mapping[str, str]) -> list[str]:
    """The columns ``needed`` says ``request.images`` or ``request.documents`` use."""
    return [name for name, user in needed.items() if "request.images" in user or "request.documents" in user]


def _open_shards(
    files: tuple[Path | str, ...],
    id_column: str | None,
    needed: dict[str, str],
    media: Sequence[str],
    storage: ObjectStorage | None,
) -> InputTable:
    shards = [str(item) for item in files]

    def opener(shard: str) -> IO[bytes]:
        if is_object_url(shard):
            assert storage is not None
            return webdataset.chunk_file(storage.stream(shard))
        try:
            return Path(shard).open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {shard}: {exc.strerror or exc}") from None

    try:
        schema = webdataset.discover(shards, opener)
    except ObjectStoreError as exc:
        raise InputError(f"cannot read {shards[0]}: {exc}") from None

    def stream(rows: int) -> Iterator[pl.DataFrame]:
        return webdataset.shard_batches(shards, opener, schema, rows)

    empty = pl.DataFrame(schema={**schema, SOURCE_COLUMN: pl.String()}).lazy()
    table = checked_table(
        files,
        empty,
        id_column or webdataset.KEY_COLUMN,
        needed,
        media,
        kind="webdataset",
        check_unique=False,
    )
    # a streamed input is read once: repeated ids get -2, -3... suffixes rather than a second pass
    return InputTable(
        table.files,
        None,
        table.columns,
        table.arrow_schema,
        table.id_column,
        table.hash_columns,
        kind="webdataset",
        stream=stream,
        media_columns=table.media_columns,
        unique_ids=True,
    )


def checked_table(
    files: tuple[Path | str, ...],
    frame: pl.LazyFrame,
    id_column: str | None,
    needed: dict[str, str],
    media: Sequence[str],
    *,
    kind: str = "table",
    base: tuple[Path, str | None] | None = None,
    check_unique: bool = True,
    label: str | None = None,
) -> InputTable:
    """The opened input, once it has every needed column (and ``id_column``) of a usable type.

    :param media: the image and document columns (their cells may hold bytes, structs and lists).
    :param label: the input's name in messages when it is no file (a table held in Python).
    :raises InputError: naming the input, the column and what uses it; or the id column's problem.
    """
    where = label if label is not None else describe(files)
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(explain(exc, files, where=label)) from None
    columns = tuple(name for name in schema.names() if name != SOURCE_COLUMN)
    wanted = dict(needed)
    if id_column is not None:
        wanted[id_column] = "id_column"
    for column, user in wanted.items():
        if column not in columns:
            raise InputError(f"{where}: no column {column!r} (used by {user}){_suggest(column, columns)}")
    media_set = set(media)
    for column, user in wanted.items():
        _check_type(where, column, user, schema[column], media=column in media_set)
    byte_media = tuple(name for name in media if name in columns and holds_bytes(schema[name]))
    recorded = {
        name: recorded_dtype(schema[name]) if name in byte_media else schema[name] for name in columns
    }
    arrow_schema = pl.DataFrame(schema=recorded).to_arrow().schema
    table = InputTable(
        files,
        frame,
        columns,
        arrow_schema,
        id_column,
        tuple(needed),
        kind=kind,
        base=base,
        media_columns=byte_media,
        unique_ids=id_column is None,
        label=label,
    )
    if id_column is not None and check_unique:
        check_ids(table)
    return table


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


def _check_type(where: str, column: str, user: str, dtype: pl.DataType, *, media: bool) -> None:
    """Refuse columns whose type cannot do their job, before any row is sent."""
    if media:
        # str() of a number would be read as a path: every row a confusing image_error
        problem = media_type_problem(dtype)
        if problem is not None:
            raise InputError(f"{where}: column {column!r} (used by {user}) {problem}")
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
    assert table.frame is not None
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
        raise InputError(explain(exc, table.files, where=table.label)) from None
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


def iter_rows(
    table: InputTable,
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    first_index: int = 0,
    seen: set[str] | None = None,
) -> Iterator[SourcedRow]:
    """Yield rows in input order, batch by batch.

    Without an id column, identical rows get ``-2``, ``-3``... suffixes so every row keeps its own id
    (so do repeated WebDataset keys: a streamed input is not read twice to refuse them).

    :param first_index: the index of the table's first row, when the table is a part of a larger input
        read apart (:func:`file_table`): rows keep the indexes they have in the whole input.
    :param seen: row ids already given to earlier rows of the whole input (when ids are made unique).
    """
    rows = batch_size or table.batch_rows
    seen = set() if seen is None else seen
    index = first_index
    bases: dict[str, tuple[Path, str | None]] = {}
    try:
        for batch in _batches(table, rows, limit):
            sources = batch[SOURCE_COLUMN].to_list() if SOURCE_COLUMN in batch.columns else None
            values = batch.select(table.columns).rows(named=True)
            for position, cells in enumerate(values):
                if limit is not None and index - first_index >= limit:
                    return
                raw: Mapping[str, Any] = {}
                size = 0
                if table.media_columns:
                    raw = {name: cells[name] for name in table.media_columns}
                    size = sum(_size(value) for value in raw.values())
                    for name in table.media_columns:
                        cells[name] = recorded_value(cells[name])
                key = row_id(cells, table.columns, table.id_column)
                if table.unique_ids:
                    key = _dedupe(key, seen)
                content = value_hash(cells, table.hash_columns)
                base_dir, base_url = table.base or _base_of(sources[position] if sources else None, bases)
                yield SourcedRow(Row(index, key, cells, content), base_dir, base_url, raw, size)
                index += 1
    except (pl.exceptions.PolarsError, OSError) as exc:
        # polars reads whole batches, so all we know is that the rows before this one were fine
        raise InputError(explain(exc, table.files, after_row=index, where=table.label)) from None
    except ObjectStoreError as exc:
        raise InputError(f"cannot read {table.describe()} after row {index}: {exc}") from None


def file_table(table: InputTable, item: Path | str, storage: ObjectStorage | None = None) -> InputTable:
    """One file of a table input as a table of its own, to be read apart from the others (a cluster's
    read task).

    Its columns are the whole table's, as one read of every file would give them: a column only other
    files have is null here, and each column has the type the files' types widen to.
    """
    assert table.frame is not None
    assert table.kind == "table"
    schema = table.frame.collect_schema()
    if isinstance(item, Path):
        scan = scan_table(item)
    else:
        storage = storage or ObjectStorage()
        scan = scan_table(item, storage.settings.polars_options(item))
    own = scan.collect_schema()
    columns = [_conformed(name, dtype, own) for name, dtype in schema.items()]
    return replace(table, files=(item,), frame=scan.select(columns))


def _conformed(name: str, dtype: pl.DataType, own: pl.Schema) -> pl.Expr:
    if name not in own:
        return pl.lit(None, dtype=dtype).alias(name)
    return pl.col(name) if own[name] == dtype else pl.col(name).cast(dtype)


def count_rows(table: InputTable) -> int:
    """How many rows ``table`` holds (a pass over the input; Parquet answers from its footer; a
    streamed input is read through)."""
    try:
        if table.frame is None:
            return sum(batch.height for batch in _batches(table, table.batch_rows, None))
        return int(table.frame.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(explain(exc, table.files)) from None
    except ObjectStoreError as exc:
        raise InputError(f"cannot read {table.describe()}: {exc}") from None


def _batches(table: InputTable, rows: int, limit: int | None) -> Iterator[pl.DataFrame]:
    if table.stream is not None:
        yield from table.stream(rows)  # closing this generator closes the shard being read
        return
    assert table.frame is not None
    frame = table.frame if limit is None else table.frame.head(limit)
    yield from frame.collect_batches(chunk_size=rows)


def _base_of(source: str | None, cache: dict[str, tuple[Path, str | None]]) -> tuple[Path, str | None]:
    """The folder a row's relative paths resolve against: its file's, locally or in object storage."""
    if source is None:
        return Path.cwd(), None
    found = cache.get(source)
    if found is None:
        if is_object_url(source):
            parsed = ObjectUrl.parse(source)
            folder_key = parsed.key.rpartition("/")[0]
            found = (
                Path.cwd(),
                str(ObjectUrl(parsed.scheme, parsed.bucket, folder_key + "/" if folder_key else "")),
            )
        else:
            found = (Path(source).parent, None)
        cache[source] = found
    return found


def _size(value: Any) -> int:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_size(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size(item) for item in value)
    return 0


def _dedupe(row_id: str, seen: set[str]) -> str:
    candidate, n = row_id, 1
    while candidate in seen:
        n += 1
        candidate = f"{row_id}-{n}"
    seen.add(candidate)
    return candidate
