"""validate and estimate understand every input kind and cell shape, offline."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from jobkit import invoke, pdf_bytes, photo, write_job, write_shard

IMAGE = pl.Struct({"bytes": pl.Binary, "path": pl.String})


def _job(tmp_path: Path, input_: str, **request: object) -> Path:
    return write_job(
        tmp_path,
        input=input_,
        output="out",
        request={"model": "claude-haiku-4-5", "max_tokens": 32, "prompt": "Describe it.", **request},
    )


def test_validate_checks_embedded_images_and_documents_offline(tmp_path: Path) -> None:
    """Bytes, struct and list cells are checked like files; object-storage and URL cells are counted."""
    frame = pl.DataFrame(
        {
            "image": [{"bytes": photo(1), "path": "a.jpg"}, {"bytes": b"nope", "path": "b.jpg"}, None],
            "more": [
                [
                    {"bytes": None, "path": "s3://bucket/x.jpg"},
                    {"bytes": None, "path": "https://example.com/y.jpg"},
                ],
                [],
                [{"bytes": photo(2), "path": None}],
            ],
            "doc": [pdf_bytes(1), None, b"text document"],
        },
        schema={"image": IMAGE, "more": pl.List(IMAGE), "doc": pl.Binary},
    )
    frame.write_parquet(tmp_path / "in.parquet")
    done = invoke(
        ["validate", str(_job(tmp_path, "in.parquet", images=["image", "more"], documents=["doc"]))]
    )
    assert done.exit_code == 1, done.output
    assert "row 2 (id " in done.output
    assert "image b.jpg (embedded, 4 bytes): not an image" in done.output
    assert (
        "3 rows, 2 images, 2 documents checked (2 not fetched: 1 by URL, 1 in object storage;"
        " --fetch checks them), 1 rows with problems" in done.output
    )


def test_estimate_counts_images_in_shards_and_folders(tmp_path: Path) -> None:
    """estimate reads WebDataset bytes and image folders as a run would, and counts their image tokens."""
    write_shard(
        tmp_path / "s.tar", [(f"k{i}", {"jpg": photo(i, size=(300, 200)), "txt": b"t"}) for i in range(4)]
    )
    shards = invoke(["estimate", str(_job(tmp_path, "s.tar", images=["jpg"])), "--json"])
    assert shards.exit_code == 0, shards.output
    found = json.loads(shards.output)
    assert found["rows"]["total"] == 4
    assert found["images"]["count"] == 4
    assert found["images"]["largest"] == [300, 200]
    (tmp_path / "pics").mkdir()
    for i in range(3):
        (tmp_path / "pics" / f"{i}.png").write_bytes(photo(i, fmt="PNG"))
    folder = invoke(["estimate", str(_job(tmp_path, "pics/*.png", images=["image_path"])), "--json"])
    assert folder.exit_code == 0, folder.output
    assert json.loads(folder.output)["images"]["count"] == 3
