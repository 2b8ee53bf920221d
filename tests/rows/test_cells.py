"""Media cells of every shape: which items one cell holds, and what the output records of it."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest

from pipeline.rows.cells import (
    cell_items,
    holds_bytes,
    media_type_problem,
    recorded_dtype,
    recorded_value,
)

JPEG = b"\xff\xd8\xff" + b"x" * 20


def test_text_bytes_struct_and_list_cells_give_their_items_in_order() -> None:
    """Text, bytes, a Hugging Face struct (bytes win over path) and lists of them, empties left out."""
    assert [item.value for item in cell_items("  a.jpg ")] == ["a.jpg"]
    assert [item.value for item in cell_items(JPEG)] == [JPEG]
    assert [item.value for item in cell_items({"bytes": JPEG, "path": "p.jpg"})] == [JPEG]
    assert cell_items({"bytes": JPEG, "path": "p.jpg"})[0].name == "p.jpg"
    assert [item.value for item in cell_items({"bytes": None, "path": "/abs/p.jpg"})] == ["/abs/p.jpg"]
    listed = cell_items(["x.png", None, "", {"bytes": JPEG, "path": None}, b"", "s3://b/k.jpg"])
    assert [item.value for item in listed] == ["x.png", JPEG, "s3://b/k.jpg"]
    assert [item.position for item in listed] == [0, 1, 2]
    for empty in (None, "", "   ", b"", [], {"bytes": None, "path": None}, [None, ""]):
        assert cell_items(empty) == []


def test_labels_name_the_item_without_its_bytes() -> None:
    """A byte item is named by column, position, its struct path and size; a URL loses its query."""
    assert cell_items(JPEG)[0].label("image") == f"image (embedded, {len(JPEG):,} bytes)"
    item = cell_items([{"bytes": JPEG, "path": "cat.jpg"}])[0]
    assert item.label("frames") == f"frames[0] cat.jpg (embedded, {len(JPEG):,} bytes)"
    assert cell_items("s3://b/k.jpg?X-Amz-Signature=s")[0].label("image") == "image s3://b/k.jpg"


def test_bytes_are_recorded_as_their_digest_with_the_shape_kept() -> None:
    """The output keeps sha256:<hex> in place of bytes, inside structs and lists too."""
    digest = "sha256:" + hashlib.sha256(JPEG).hexdigest()
    assert recorded_value(JPEG) == digest
    assert recorded_value({"bytes": JPEG, "path": "p.jpg"}) == {"bytes": digest, "path": "p.jpg"}
    assert recorded_value([JPEG, "a.jpg", None]) == [digest, "a.jpg", None]
    assert recorded_value("a.jpg") == "a.jpg"
    image = pl.Struct({"bytes": pl.Binary, "path": pl.String})
    assert recorded_dtype(image) == pl.Struct({"bytes": pl.String, "path": pl.String})
    assert recorded_dtype(pl.List(pl.Binary)) == pl.List(pl.String)
    assert recorded_dtype(pl.String) == pl.String
    assert holds_bytes(image)
    assert holds_bytes(pl.List(image))
    assert not holds_bytes(pl.List(pl.String))


@pytest.mark.parametrize(
    "dtype",
    [
        pl.String,
        pl.Binary,
        pl.Null,
        pl.Struct({"bytes": pl.Binary, "path": pl.String}),
        pl.Struct({"path": pl.String}),
        pl.List(pl.String),
        pl.List(pl.Struct({"bytes": pl.Binary, "path": pl.String})),
    ],
)
def test_every_media_shape_is_accepted(dtype: pl.DataType) -> None:
    """Text, binary, the Hugging Face struct and lists of them can hold images or documents."""
    assert media_type_problem(dtype) is None


@pytest.mark.parametrize(
    "dtype",
    [pl.Int64, pl.Float64, pl.List(pl.Int64), pl.Struct({"x": pl.Int64}), pl.Struct({"bytes": pl.Int64})],
)
def test_other_types_are_refused_naming_what_is_expected(dtype: pl.DataType) -> None:
    """Numbers, lists of numbers and structs without bytes/path cannot hold images."""
    problem = media_type_problem(dtype)
    assert problem is not None
    assert problem.startswith(f"holds {dtype}, expected text (paths, URLs or data: URIs), bytes")
