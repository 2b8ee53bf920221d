"""Reading input tables: formats, globs, column checks, stable ids, duplicate ids."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.errors import InputError
from pipeline.reader import iter_rows, open_input


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_jsonl_parquet_and_glob(tmp_path: Path) -> None:
    """The three formats read the same rows, and a glob concatenates files in sorted order."""
    _csv(tmp_path / "a.csv", "id,text\n1,hello\n2,world\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": "3", "text": "x"}) + "\n")
    pl.DataFrame({"id": ["4"], "text": ["y"]}).write_parquet(tmp_path / "c.parquet")
    table = open_input(str(tmp_path / "*"), id_column="id", needed={"text": "request.prompt"})
    rows = [sourced.row for sourced in iter_rows(table)]
    assert [r.row_id for r in rows] == ["1", "2", "3", "4"]
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert rows[0].values == {"id": "1", "text": "hello"}


def test_csv_keeps_text_ids_and_embedded_newlines(tmp_path: Path) -> None:
    """CSV cells stay text (leading zeros survive) and quoted newlines stay inside the cell."""
    path = _csv(tmp_path / "a.csv", 'id,text\n007,"two\nlines"\n')
    rows = list(iter_rows(open_input(str(path), id_column="id", needed={})))
    assert rows[0].row.row_id == "007"
    assert rows[0].row.values["text"] == "two\nlines"
    assert rows[0].base_dir == tmp_path


def test_missing_column_names_column_and_user(tmp_path: Path) -> None:
    """A column the prompt needs but the input lacks is an InputError naming both."""
    path = _csv(tmp_path / "a.csv", "id,text\n1,a\n")
    with pytest.raises(InputError, match=r"no column 'subject' \(used by request.prompt\)"):
        open_input(str(path), id_column=None, needed={"subject": "request.prompt"})


def test_missing_file_glob_and_bad_format(tmp_path: Path) -> None:
    """Missing files, empty globs and unknown suffixes are clear InputErrors."""
    with pytest.raises(InputError, match="not found"):
        open_input(str(tmp_path / "none.csv"), id_column=None, needed={})
    with pytest.raises(InputError, match="no input files match"):
        open_input(str(tmp_path / "*.csv"), id_column=None, needed={})
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(InputError, match="unsupported input format"):
        open_input(str(tmp_path / "x.xlsx"), id_column=None, needed={})


def test_duplicate_ids_are_refused_by_name(tmp_path: Path) -> None:
    """Duplicate id_column values are an error naming the values, not a silent overwrite."""
    path = _csv(tmp_path / "a.csv", "id,text\n1,a\n2,b\n1,c\n")
    with pytest.raises(InputError, match=r"duplicate values: '1' \(2×\)"):
        open_input(str(path), id_column="id", needed={})


def test_hashed_ids_are_stable_and_unique(tmp_path: Path) -> None:
    """Without id_column, ids hash the row's values: the same across runs, suffixed for repeats."""
    path = _csv(tmp_path / "a.csv", "text\nsame\nother\nsame\n")
    first = [s.row.row_id for s in iter_rows(open_input(str(path), id_column=None, needed={}))]
    second = [s.row.row_id for s in iter_rows(open_input(str(path), id_column=None, needed={}))]
    assert first == second
    assert len(set(first)) == 3
    assert first[2] == f"{first[0]}-2"


def test_limit_takes_first_rows(tmp_path: Path) -> None:
    """limit=N yields only the first N rows."""
    path = _csv(tmp_path / "a.csv", "id\n" + "".join(f"{i}\n" for i in range(50)))
    rows = list(iter_rows(open_input(str(path), id_column="id", needed={}), limit=7, batch_size=3))
    assert [s.row.row_id for s in rows] == [str(i) for i in range(7)]
