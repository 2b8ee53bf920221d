"""Inputs that are no file: a table handed over in Python, opened as the same ``InputTable`` a file gives.

Owns: turning each kind of table into a polars LazyFrame without reading more than it must (a
LazyFrame stays lazy and is streamed; a Hugging Face ``Dataset`` is read a batch at a time through a
polars IO source; a pyarrow Table is wrapped, not copied), the same checks a file input gets
(``reader.checked_table``: columns, types, media cells, ids), where relative image paths resolve
(``base_dir``), and reading an input's row ids back in order (to match results to rows). From there
on the rows are a file's rows: ``reader.iter_rows`` gives them the same ids, content hashes and ``row_index``.

Cells pass through as polars reads their Arrow values: a ``Dataset``'s ``Image`` column stays its
struct of ``bytes`` and ``path``, for the image-cell rules of ``rows`` to take or refuse.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.rows.reader import SOURCE_COLUMN, InputTable, checked_table, iter_rows, media_of
from pipeline.rows.tables import first_line

# rows per batch read from a Hugging Face Dataset: image rows can be large, keep a batch small
DATASET_BATCH_ROWS = 256

SUPPORTED = (
    "a polars DataFrame or LazyFrame, a pandas DataFrame, a pyarrow Table, a Hugging Face Dataset, "
    "a list of dicts, or a path (str) to a CSV, Parquet or JSONL file"
)


@dataclass(frozen=True, slots=True)
class FrameInput:
    """A table held in Python, as a LazyFrame, and the folder its relative image paths start from.

    :param label: what the table is, for messages (``"pandas DataFrame"``).
    """

    frame: pl.LazyFrame
    label: str
    base_dir: Path

    def note_path(self) -> str:
        """What ``OUTPUT/job.json`` records as the input: a name inside ``base_dir`` (``report`` finds
        relative images there)."""
        return str(self.base_dir / f"<{self.label}>")


# what a run reads: a file or glob, or a table held in Python
InputSource = str | FrameInput


def frame_input(data: object, *, base_dir: Path) -> FrameInput:
    """Wrap a table as an input, reading no rows (a list of dicts or a pandas frame is converted once).

    :param base_dir: the folder relative image paths resolve against (absolute).
    :raises InputError: for anything that is not a table, or one polars cannot take.
    """
    label, frame = _as_lazy(data)
    return FrameInput(frame, label, base_dir)


def _as_lazy(data: object) -> tuple[str, pl.LazyFrame]:
    if isinstance(data, pl.LazyFrame):
        return "polars LazyFrame", data
    if isinstance(data, pl.DataFrame):
        return "polars DataFrame", data.lazy()
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        label = f"pyarrow {type(data).__name__}"
        return label, _converted(label, lambda: pl.from_arrow(data, rechunk=False))
    module = type(data).__module__.split(".")[0]
    name = type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return "pandas DataFrame", _converted("pandas DataFrame", lambda: _from_pandas(data))
    if module == "datasets":
        return _dataset(data, name)
    if isinstance(data, Mapping):
        return "dict of columns", _converted("dict of columns", lambda: pl.DataFrame(dict(data)))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return "list of dicts", _records(data)
    raise InputError(f"cannot read a {type(data).__name__} as input; pass {SUPPORTED}")


def _converted(label: str, convert: Any) -> pl.LazyFrame:
    """``convert()`` as a LazyFrame; a conversion polars or pyarrow refuses is one InputError line."""
    try:
        frame = convert()
    except (pl.exceptions.PolarsError, pa.ArrowException, TypeError, ValueError) as exc:
        raise InputError(f"{label}: cannot be read as a table: {first_line(exc)}") from None
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()


def _from_pandas(data: Any) -> pl.DataFrame:
    # a named index (df.set_index("id")) holds data, often the id; the default RangeIndex holds none
    named = all(name is not None for name in data.index.names)
    return pl.from_pandas(data, include_index=named)


def _records(rows: Sequence[Any]) -> pl.LazyFrame:
    if not rows:
        raise InputError("list of dicts: it is empty (no rows, so no columns to check)")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise InputError(f"list of dicts: item {number} is a {type(row).__name__}, not a dict")
    # every row decides the types, not the first 100 (polars' default): a late float must not fail
    return _converted("list of dicts", lambda: pl.DataFrame(list(rows), infer_schema_length=None))


def _dataset(data: Any, name: str) -> tuple[str, pl.LazyFrame]:
    if name in {"DatasetDict", "IterableDatasetDict"}:
        splits = ", ".join(repr(split) for split in data)
        raise InputError(
            f"a Hugging Face {name} holds several splits ({splits}); pass one, e.g. data['train']"
        )
    if name not in {"Dataset", "IterableDataset"} or getattr(data, "features", None) is None:
        raise InputError(f"cannot read a {name} as input (its columns are unknown); pass {SUPPORTED}")
    label = f"Hugging Face {name}"
    try:
        empty = pl.from_arrow(data.features.arrow_schema.empty_table())
        assert isinstance(empty, pl.DataFrame)
        schema = empty.schema
    except (pl.exceptions.PolarsError, pa.ArrowException) as exc:
        raise InputError(f"{label}: its features cannot be read as columns: {first_line(exc)}") from None
    return label, _dataset_source(data, schema)


def _dataset_source(data: Any, schema: pl.Schema) -> pl.LazyFrame:
    """A LazyFrame that reads the Dataset a batch at a time (its selection and order respected).

    ``register_io_source`` is polars' documented way to stream from Python (marked unstable there);
    the batches come from the Dataset's own Arrow iterator, so a memory-mapped Dataset is never loaded
    whole.
    """
    from polars.io.plugins import register_io_source

    def batches(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, _batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        source = data.with_format("arrow")
        if with_columns is not None:
            source = source.select_columns(with_columns)
        left = n_rows
        for table in source.iter(batch_size=DATASET_BATCH_ROWS):
            frame = pl.from_arrow(table, rechunk=False)
            assert isinstance(frame, pl.DataFrame)
            if predicate is not None:
                frame = frame.filter(predicate)
            if left is not None:
                frame = frame.head(left)
                left -= frame.height
            yield frame
            if left == 0:
                return

    return register_io_source(batches, schema=schema)


def open_frame(source: FrameInput, *, id_column: str | None, needed: dict[str, str]) -> InputTable:
    """Open a table held in Python as a file input is opened: the same column, type and id checks.

    :raises InputError: one line naming the table for a missing column (suggesting a near name), a
        column of an unusable type, or an id column with empty or duplicate values.
    """
    try:
        source.frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {source.label}: {first_line(exc)}") from None
    # iter_rows takes each row's folder from this column, as it does a file's; here: base_dir
    frame = source.frame.with_columns(pl.lit(source.note_path()).alias(SOURCE_COLUMN))
    return checked_table((), frame, id_column, needed, media_of(needed), kind="frame", label=source.label)


def row_ids(table: InputTable, *, limit: int | None = None) -> list[str]:
    """The input's row ids in order, exactly as a run gives them (``iter_rows``).

    With an id column only that column is read; without one every cell is (the id hashes them all).
    """
    if table.id_column is not None:
        assert table.frame is not None
        only = table.frame.select(table.id_column, SOURCE_COLUMN)  # projected into the source's scan
        table = replace(table, frame=only, columns=(table.id_column,), hash_columns=(), media_columns=())
    return [sourced.row.row_id for sourced in iter_rows(table, limit=limit)]
