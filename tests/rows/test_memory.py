"""Tables held in Python as inputs: every kind becomes the rows a file gives, checked the same way."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from PIL import Image
from polars.io.plugins import register_io_source

from pipeline.errors import InputError
from pipeline.records import Row
from pipeline.rows.memory import FrameInput, frame_input, open_frame, row_ids
from pipeline.rows.reader import iter_rows, open_input

NEEDED = {"subject": "request.prompt"}
RECORDS = [
    {"id": 7, "subject": "a red bicycle", "image_path": "images/bicycle.jpg", "price": 3},
    {"id": 3, "subject": "a blue mug", "image_path": None, "price": 2.5},
    {"id": 5, "subject": "a red bicycle", "image_path": "images/bicycle.jpg", "price": 3},
]


def rows_of(data: object, *, id_column: str | None = None, base_dir: Path = Path("/data")) -> list[Row]:
    table = open_frame(frame_input(data, base_dir=base_dir), id_column=id_column, needed=NEEDED)
    return [sourced.row for sourced in iter_rows(table)]


def test_a_frame_gives_the_same_ids_hashes_and_indexes_as_the_same_table_in_a_file(tmp_path: Path) -> None:
    """Row ids (hashed or from id_column), row hashes and row_index match a Parquet file of the same table."""
    frame = pl.DataFrame(RECORDS)
    frame.write_parquet(tmp_path / "in.parquet")
    for id_column in (None, "id"):
        from_file = [
            s.row
            for s in iter_rows(open_input(str(tmp_path / "in.parquet"), id_column=id_column, needed=NEEDED))
        ]
        assert rows_of(frame, id_column=id_column) == from_file
    hashed = rows_of(frame)
    assert len({row.row_id for row in hashed}) == 3  # identical rows are told apart, as in a file
    assert [row.index for row in hashed] == [0, 1, 2]


def test_every_kind_of_table_gives_the_same_rows() -> None:
    """polars (eager and lazy), pandas, pyarrow, a list of dicts and a dict of columns: one set of rows."""
    frame = pl.DataFrame(RECORDS)
    expected = rows_of(frame, id_column="id")
    kinds: list[object] = [
        frame.lazy(),
        frame.to_pandas(),
        frame.to_arrow(),
        RECORDS,
        {name: frame[name].to_list() for name in frame.columns},
        datasets.Dataset.from_polars(frame),
    ]
    for data in kinds:
        assert [(r.row_id, r.content_hash, r.values["subject"]) for r in rows_of(data, id_column="id")] == [
            (r.row_id, r.content_hash, r.values["subject"]) for r in expected
        ], type(data)


def test_relative_image_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    """Each row's folder is base_dir, as a file's rows get the file's folder."""
    table = open_frame(frame_input(RECORDS, base_dir=tmp_path), id_column=None, needed=NEEDED)
    assert {sourced.base_dir for sourced in iter_rows(table)} == {tmp_path}


def test_a_late_float_in_a_list_of_dicts_is_read_not_refused() -> None:
    """Every dict decides the column types (polars alone looks at the first 100)."""
    records: list[dict[str, Any]] = [{"subject": f"s{i}", "score": 1} for i in range(150)]
    records.append({"subject": "last", "score": 0.5})
    assert rows_of(records)[-1].values["score"] == 0.5


def test_a_named_pandas_index_is_a_column_and_a_default_one_is_not() -> None:
    """df.set_index("id") keeps the ids (they can be the id_column); a RangeIndex adds nothing."""
    frame = pd.DataFrame(RECORDS)
    assert rows_of(frame.set_index("id"), id_column="id")[0].row_id == "7"
    assert "index" not in rows_of(frame)[0].values
    assert set(rows_of(frame)[0].values) == {"id", "subject", "image_path", "price"}


def test_a_dataset_is_read_in_its_selection_and_order() -> None:
    """A Dataset after select() gives the selected rows in their order; so does an IterableDataset."""
    dataset = datasets.Dataset.from_list([{"subject": f"item {i}", "n": i} for i in range(600)])
    picked = dataset.select([599, 3, 250, 3])
    assert [row.values["n"] for row in rows_of(picked)] == [599, 3, 250, 3]
    assert [row.values["n"] for row in rows_of(dataset)] == list(range(600))
    streamed = picked.to_iterable_dataset()  # an IterableDataset (streaming=True) reads the same way
    assert [row.values["n"] for row in rows_of(streamed)] == [599, 3, 250, 3]


def test_a_dataset_image_column_passes_through_as_its_struct() -> None:
    """An Image feature stays the struct of bytes and path the Dataset stores (image cells are rows')."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 40)).save(buffer, "PNG")
    features = datasets.Features({"subject": datasets.Value("string"), "photo": datasets.Image()})
    dataset = datasets.Dataset.from_dict(
        {"subject": ["a"], "photo": [{"bytes": buffer.getvalue(), "path": None}]}, features=features
    )
    table = open_frame(frame_input(dataset, base_dir=Path("/")), id_column=None, needed=NEEDED)
    assert table.frame.collect_schema()["photo"] == pl.Struct({"bytes": pl.Binary, "path": pl.String})
    cell = next(iter_rows(table)).row.values["photo"]
    assert cell == {"bytes": buffer.getvalue(), "path": None}


def test_problems_are_one_line_input_errors_naming_the_table() -> None:
    """A missing column, a duplicate id, an empty list, a non-table and a DatasetDict: each one line."""
    with pytest.raises(
        InputError, match=r"^pandas DataFrame: no column 'subject' \(used by request.prompt\)"
    ):
        rows_of(pd.DataFrame({"subjet": ["x"]}))
    with pytest.raises(InputError, match="did you mean 'subjet'"):
        rows_of(pl.DataFrame({"subjet": ["x"]}))
    with pytest.raises(
        InputError, match=r"^polars DataFrame: id_column 'id' has duplicate values: '1' \(2×\)"
    ):
        rows_of(pl.DataFrame({"id": [1, 1], "subject": ["a", "b"]}), id_column="id")
    with pytest.raises(InputError, match="list of dicts: it is empty"):
        frame_input([], base_dir=Path("/"))
    with pytest.raises(InputError, match="list of dicts: item 2 is a str, not a dict"):
        frame_input([{"a": 1}, "b"], base_dir=Path("/"))
    with pytest.raises(InputError, match="cannot read a int as input; pass a polars DataFrame"):
        frame_input(42, base_dir=Path("/"))
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"subject": "a"}])})
    with pytest.raises(InputError, match=r"holds several splits \('train'\); pass one, e.g. data\['train'\]"):
        frame_input(splits, base_dir=Path("/"))
    with pytest.raises(InputError) as caught:
        rows_of(pl.DataFrame({"x": [1]}))
    assert "\n" not in str(caught.value)


def test_a_lazy_plan_that_fails_midway_is_an_input_error_after_the_rows_read() -> None:
    """A LazyFrame whose source breaks after some rows: InputError naming it and how far it got."""

    def broken(*_: Any) -> Iterator[pl.DataFrame]:
        yield pl.DataFrame({"subject": ["a"] * 3000})
        raise OSError("the bucket went away")

    frame = register_io_source(broken, schema={"subject": pl.String})
    table = open_frame(FrameInput(frame, "polars LazyFrame", Path("/")), id_column=None, needed=NEEDED)
    with pytest.raises(InputError, match=r"^cannot read polars LazyFrame after row 2000: .*bucket went away"):
        list(iter_rows(table))


def test_row_ids_reads_only_the_id_column_when_there_is_one() -> None:
    """row_ids gives iter_rows' ids in order; with an id column the other columns are not read."""
    asked: list[list[str] | None] = []

    def source(
        with_columns: list[str] | None, _: Any, n_rows: int | None, *__: Any
    ) -> Iterator[pl.DataFrame]:
        asked.append(with_columns)
        frame = pl.DataFrame({"id": [2, 1], "subject": ["b", "a"]}).head(2 if n_rows is None else n_rows)
        yield frame if with_columns is None else frame.select(with_columns)

    frame = register_io_source(source, schema={"id": pl.Int64, "subject": pl.String})
    table = open_frame(FrameInput(frame, "polars LazyFrame", Path("/")), id_column="id", needed=NEEDED)
    asked.clear()  # the duplicate-id check read the ids once already
    assert row_ids(table) == ["2", "1"]
    assert asked == [["id"]]
    assert row_ids(table, limit=1) == ["2"]


def test_a_lazyframe_is_streamed_never_collected_whole() -> None:
    """A source that will not run far ahead of the reader: reading its rows never waits on it for long.

    The source produces 40,000 rows in batches of 10 and refuses to get more than 8,000 rows ahead of
    the rows the reader has taken (it waits, and fails after 60 s): an input collected whole before
    its rows are handed out could never be read.
    """
    total, ahead, batch = 40_000, 8_000, 10
    taken = 0
    produced = 0
    moved = threading.Condition()
    most_ahead = 0

    def source(*_: Any) -> Iterator[pl.DataFrame]:
        nonlocal produced, most_ahead

        def room() -> bool:
            return produced - taken < ahead

        for start in range(0, total, batch):
            with moved:
                if not moved.wait_for(room, timeout=60):
                    raise RuntimeError("the input was collected ahead of the reader")
                produced += batch
                most_ahead = max(most_ahead, produced - taken)
            yield pl.DataFrame({"subject": [f"s{i}" for i in range(start, start + batch)]})

    frame = register_io_source(source, schema={"subject": pl.String})
    table = open_frame(FrameInput(frame, "polars LazyFrame", Path("/")), id_column=None, needed=NEEDED)
    for _ in iter_rows(table):
        with moved:
            taken += 1
            moved.notify_all()
    assert taken == total
    assert most_ahead <= ahead


def test_a_pyarrow_table_is_not_copied_into_a_new_schema() -> None:
    """pyarrow types survive as polars reads them (the Arrow schema of the output follows the input)."""
    table = pa.table({"subject": ["a", "b"], "n": pa.array([1, 2], type=pa.int32())})
    opened = open_frame(frame_input(table, base_dir=Path("/")), id_column=None, needed=NEEDED)
    assert opened.arrow_schema.field("n").type == pa.int32()
    assert opened.describe() == "pyarrow Table"
