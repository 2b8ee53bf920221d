"""Reading input tables: formats, globs, column checks, stable ids, duplicate ids."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.rows.reader import count_rows, file_table, iter_rows, open_input, row_id, value_hash


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


def test_files_read_apart_give_the_rows_of_one_read(tmp_path: Path) -> None:
    """Each file read on its own (file_table, first_index, seen) yields exactly the rows one read yields."""
    _csv(tmp_path / "a.csv", "id,text,extra\n1,hello,x\n2,world,y\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": 3, "text": "z"}) + "\n")  # an int id, no 'extra'
    pl.DataFrame({"id": ["4", "5"], "text": ["hello", "hello"]}).write_parquet(tmp_path / "c.parquet")
    for id_column in ("id", None):
        if id_column is None:  # the same row in two files: the hashed ids need the suffix of one read
            _csv(tmp_path / "d.csv", "id,text,extra\n1,hello,x\n")
        table = open_input(str(tmp_path / "*"), id_column=id_column, needed={"text": "request.prompt"})
        whole = [sourced.row for sourced in iter_rows(table)]
        apart: list[Any] = []
        seen: set[str] = set()
        first = 0
        for path in table.files:
            part = file_table(table, path)
            apart += [sourced.row for sourced in iter_rows(part, first_index=first, seen=seen)]
            first += count_rows(part)
        assert apart == whole
        assert count_rows(table) == len(whole)
    assert whole[2].values == {"id": "3", "text": "z", "extra": None}
    assert whole[-1].row_id == f"{whole[0].row_id}-2"


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


CELLS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
ROWS = st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=4), CELLS, min_size=1, max_size=6)


@given(ROWS)
def test_value_hash_is_fixed_length_hex_and_ignores_insertion_order(values: dict[str, Any]) -> None:
    """The hash is 20 hex digits, the same for equal values however the dict was built."""
    columns = sorted(values)
    digest = value_hash(values, columns)
    assert len(digest) == 20
    assert set(digest) <= set("0123456789abcdef")
    assert value_hash(dict(reversed(list(values.items()))), columns) == digest
    assert value_hash(dict(values), list(columns)) == digest


@given(ROWS, st.data())
def test_any_change_in_a_hashed_column_changes_the_hash(values: dict[str, Any], data: st.DataObject) -> None:
    """Changing one hashed cell changes the hash; changing a cell outside the hashed columns does not."""
    columns = sorted(values)
    column = data.draw(st.sampled_from(columns))
    new = data.draw(CELLS)
    assume(new != values[column] or type(new) is not type(values[column]))
    changed = {**values, column: new}
    assert value_hash(changed, columns) != value_hash(values, columns)
    others = [name for name in columns if name != column]
    assert value_hash(changed, others) == value_hash(values, others)


@given(ROWS, st.data())
def test_row_id_is_the_id_cell_as_text_or_the_row_hash(values: dict[str, Any], data: st.DataObject) -> None:
    """With an id column the id is its value as text; without one it is the hash of all the columns."""
    columns = sorted(values)
    id_column = data.draw(st.sampled_from(columns))
    assert row_id(values, columns, id_column) == str(values[id_column])
    assert row_id(values, columns, None) == value_hash(values, columns)
    assert row_id(dict(values), columns, None) == row_id(values, columns, None)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "input file is empty"),
        (b"\n\n", r"input file is empty \(no header row\)"),
        (
            b"id,text\n1,caf\xe9\n",
            r"line 2: not valid UTF-8 \(byte 0xE9 at offset 13\); re-save the file as UTF-8",
        ),
        (b"id,text\n1,a,b\n", "line 2 has 3 fields, but the header has 2"),
        (b"id,text,x\n1,a\n", "line 2 has 2 fields, but the header has 3"),
        (b"id,text\n1,a\n\n2,b\n", "line 3 is blank"),
        (b'id,text\n1,"two\nlines"\n2,5\'11"\n', r"line 4: a lone quote"),
        (b'id,text\n1,"open\n2,b\n', "line 2: a quoted cell starts here and is never closed"),
        (b'id,text\n1,"a"b\n', "line 2: malformed CSV"),
        (b"id,text,id\n1,a,2\n", "line 1: the header names column 'id' twice"),
    ],
)
def test_malformed_csv_is_refused_naming_the_line(tmp_path: Path, content: bytes, expected: str) -> None:
    """Each malformed CSV is one InputError line naming the file and the line, before any row is read."""
    path = tmp_path / "a.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected) as info:
        open_input(str(path), id_column=None, needed={})
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_bom_header_only_and_padded_cells_are_fine(tmp_path: Path) -> None:
    """A BOM stays out of the first column's name, a header alone is zero rows, quoted empties are kept."""
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfid,text\n1,a\n")
    assert [s.row.row_id for s in iter_rows(open_input(str(bom), id_column="id", needed={}))] == ["1"]
    header = _csv(tmp_path / "h.csv", "id,text\n")
    assert list(iter_rows(open_input(str(header), id_column="id", needed={}))) == []
    padded = _csv(tmp_path / "p.csv", 'id,text,x\n1,a,\n2,"",""\n')
    rows = [s.row.values for s in iter_rows(open_input(str(padded), id_column="id", needed={}))]
    assert rows == [{"id": "1", "text": "a", "x": None}, {"id": "2", "text": "", "x": ""}]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    """A JSONL line that is not JSON, or not UTF-8, is named by number."""
    broken = tmp_path / "a.jsonl"
    broken.write_text('{"id": 1}\n{"id": 2,\n')
    with pytest.raises(InputError, match=r"a.jsonl line 2: not valid JSON"):
        open_input(str(broken), id_column=None, needed={})
    latin = tmp_path / "b.jsonl"
    latin.write_bytes(b'{"id": 1}\n{"id": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"b.jsonl line 2: not valid UTF-8"):
        open_input(str(latin), id_column=None, needed={})


def test_typo_suggests_the_nearest_column(tmp_path: Path) -> None:
    """A missing column that is close to a real one (a typo, a case slip) names the real one."""
    path = _csv(tmp_path / "a.csv", "id,subject,Body\n1,a,b\n")
    with pytest.raises(InputError, match=r"no column 'subjcet' .*; did you mean 'subject'\?"):
        open_input(str(path), id_column=None, needed={"subjcet": "request.prompt"})
    with pytest.raises(InputError, match=r"did you mean 'Body'\?"):
        open_input(str(path), id_column=None, needed={"body": "request.prompt"})
    with pytest.raises(InputError) as info:
        open_input(str(path), id_column=None, needed={"zzz": "request.prompt"})
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("frame", "id_column", "needed", "expected"),
    [
        (pl.DataFrame({"img": [1, 2]}), None, {"img": "request.images"}, "holds Int64, expected text"),
        # a list of images is a valid cell (tests/rows/test_cells.py); a list of numbers is not
        (pl.DataFrame({"img": [[1], [2]]}), None, {"img": "request.images"}, r"holds List\(Int64\)"),
        (
            pl.DataFrame({"img": [{"x": 1}]}),
            None,
            {"img": "request.documents"},
            r"holds Struct\(\{'x': Int64\}\)",
        ),
        (pl.DataFrame({"id": [1.0, 2.0]}), "id", {}, "id_column 'id' holds Float64; floats make poor ids"),
        (pl.DataFrame({"id": [[1], [2]]}), "id", {}, r"holds List\(Int64\), expected integers or text"),
    ],
)
def test_columns_of_the_wrong_type_are_refused(
    tmp_path: Path, frame: pl.DataFrame, id_column: str | None, needed: dict[str, str], expected: str
) -> None:
    """A media column of no usable type, or an id column of floats or lists, is refused up front."""
    path = tmp_path / "a.parquet"
    frame.write_parquet(path)
    with pytest.raises(InputError, match=expected):
        open_input(str(path), id_column=id_column, needed=needed)


def test_integer_ids_and_null_image_columns_are_fine(tmp_path: Path) -> None:
    """Integer ids and an all-empty image column are accepted."""
    path = tmp_path / "a.parquet"
    pl.DataFrame({"id": [1, 2], "img": [None, None]}).write_parquet(path)
    table = open_input(str(path), id_column="id", needed={"img": "request.images"})
    assert [s.row.row_id for s in iter_rows(table)] == ["1", "2"]
