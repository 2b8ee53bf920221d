"""Inputs that are not plain tables, run through the CLI: Hugging Face image columns, binary and
list cells, image folders and WebDataset shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobkit import invoke, photo, write_job, write_shard
from pipeline.errors import InputError
from pipeline.rows.reader import iter_rows, open_input
from pipeline.rows.webdataset import expand_braces

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# what `datasets` writes for an Image() column beside the struct (datasets 5.x, Features.to_dict)
HF_METADATA = {
    b"huggingface": json.dumps(
        {
            "info": {
                "features": {"image": {"_type": "Image"}, "caption": {"dtype": "string", "_type": "Value"}}
            }
        }
    ).encode()
}


def _job(tmp_path: Path, input_: str, **request: object) -> Path:
    return write_job(
        tmp_path,
        input=input_,
        output="out",
        request={"model": "claude-haiku-4-5", "max_tokens": 32, "prompt": "Caption {caption}.", **request},
        limits={"concurrency": 4, "max_attempts": 2, "timeout_s": 10},
    )


def _results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_hugging_face_parquet_with_embedded_images_runs(tmp_path: Path) -> None:
    """A Parquet whose image column is struct<bytes, path> (datasets' Image feature) is captioned;
    the output keeps the struct with the bytes' digest, never the bytes."""
    photos = [photo(i) for i in range(6)]
    table = pa.table(
        {
            "caption": [f"photo {i}" for i in range(6)],
            # datasets embeds bytes with the basename as path; a path-only row is read from disk
            "image": pa.array(
                [{"bytes": data, "path": f"img{i}.jpg"} for i, data in enumerate(photos[:5])]
                + [{"bytes": None, "path": "loose.jpg"}],
                IMAGE,
            ),
        }
    ).replace_schema_metadata(HF_METADATA)
    pq.write_table(table, tmp_path / "train.parquet")
    (tmp_path / "loose.jpg").write_bytes(photos[5])
    done = invoke(["run", str(_job(tmp_path, "train.parquet", images=["image"])), "--sandbox"])
    assert done.exit_code == 0, done.output
    frame = _results(tmp_path)
    assert frame["status"].to_list() == ["ok"] * 6
    assert all("(1 image)" in text for text in frame["response_text"].to_list())
    assert frame.schema["image"] == pl.Struct({"bytes": pl.String, "path": pl.String})
    images = frame["image"].to_list()
    assert images[0] == {"bytes": _digest(photos[0]), "path": "img0.jpg"}
    assert images[5] == {"bytes": None, "path": "loose.jpg"}
    written = (tmp_path / "out" / "results.parquet").read_bytes()
    assert all(data[200:400] not in written for data in photos)  # no image bytes in the output
    report = invoke(["report", str(tmp_path / "out")])
    assert report.exit_code == 0, report.output
    # the embedded images are not in the output to make thumbnails of; the one read from disk is
    assert "6 rows, 1 thumbnails, 5 images could not be read" in report.output
    page = (tmp_path / "out" / "report.html").read_text()
    assert "embedded in the input; the output keeps only its sha256" in page


def test_binary_column_and_list_of_images_cell(tmp_path: Path) -> None:
    """A binary image column and a list-of-images cell (one block per item, in order) both run."""
    photos = [photo(i) for i in range(9)]
    frame = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "caption": ["x", "y", "z"],
            "cover": [photos[0], photos[1], None],
            "pages": [[photos[2], photos[3]], [photos[4]], [photos[5], photos[6], photos[7]]],
        },
        schema={"id": pl.String, "caption": pl.String, "cover": pl.Binary, "pages": pl.List(pl.Binary)},
    )
    frame.write_parquet(tmp_path / "in.parquet")
    job = write_job(
        tmp_path,
        input="in.parquet",
        output="out",
        id_column="id",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Caption {caption}.",
            "images": ["cover", "pages"],
        },
    )
    done = invoke(["run", str(job), "--sandbox"])
    assert done.exit_code == 0, done.output
    results = _results(tmp_path)
    assert results["response_text"].to_list()[0].endswith("(3 images)")
    assert results["response_text"].to_list()[1].endswith("(2 images)")
    assert results["response_text"].to_list()[2].endswith("(3 images)")  # an empty cover is left out
    assert results["cover"].to_list() == [_digest(photos[0]), _digest(photos[1]), None]
    assert results["pages"].to_list()[2] == [_digest(p) for p in photos[5:8]]


def test_a_broken_embedded_image_is_that_rows_error(tmp_path: Path) -> None:
    """Bytes that are not an image make that row an image_error naming the cell, with no request."""
    frame = pl.DataFrame({"caption": ["ok", "bad"], "image": [photo(1), b"<html>nope</html>"]})
    frame.write_parquet(tmp_path / "in.parquet")
    done = invoke(["run", str(_job(tmp_path, "in.parquet", images=["image"])), "--sandbox"])
    assert done.exit_code == 1, done.output
    results = _results(tmp_path)
    assert results["status"].to_list() == ["ok", "error"]
    assert results["error_type"][1] == "image_error"
    assert results["error_message"][1].startswith("image (embedded, 17 bytes): not an image")
    assert results["attempts"][1] == 0


def test_row_hash_follows_the_bytes(tmp_path: Path) -> None:
    """Changing one embedded image sends that row again and only that row."""
    photos = [photo(i) for i in range(3)]
    pl.DataFrame({"id": ["a", "b", "c"], "caption": ["x"] * 3, "image": photos}).write_parquet(
        tmp_path / "in.parquet"
    )
    job = write_job(
        tmp_path,
        input="in.parquet",
        output="out",
        id_column="id",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Caption {caption}.",
            "images": ["image"],
        },
    )
    assert invoke(["run", str(job), "--sandbox"]).exit_code == 0
    pl.DataFrame(
        {"id": ["a", "b", "c"], "caption": ["x"] * 3, "image": [photos[0], photo(9), photos[2]]}
    ).write_parquet(tmp_path / "in.parquet")
    again = invoke(["run", str(job), "--sandbox"])
    assert again.exit_code == 0, again.output
    assert "1 rows sent: 1 ok, 0 error (2 already done, skipped)" in again.output


def test_image_folder_glob_is_one_row_per_file(tmp_path: Path) -> None:
    """input = "photos/**/*.jpg": rows of image_path (relative to photos/), file_name and file_size,
    id defaulting to image_path, so images = ["image_path"] and {file_name} just work."""
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    (tmp_path / "photos" / "a.jpg").write_bytes(photo(1))
    (tmp_path / "photos" / "2024" / "b.jpg").write_bytes(photo(2))
    (tmp_path / "photos" / "notes.txt").write_text("not matched")
    job = write_job(
        tmp_path,
        input="photos/**/*.jpg",
        output="out",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Describe {file_name}.",
            "images": ["image_path"],
        },
    )
    done = invoke(["run", str(job), "--sandbox"])
    assert done.exit_code == 0, done.output
    results = _results(tmp_path)
    assert results["row_id"].to_list() == ["2024/b.jpg", "a.jpg"]
    assert results["file_name"].to_list() == ["b.jpg", "a.jpg"]
    assert results["file_size"].to_list() == [len(photo(2)), len(photo(1))]
    assert "Describe b.jpg." in results["response_text"][0]
    assert results["status"].to_list() == ["ok", "ok"]


def test_a_glob_mixing_kinds_is_refused(tmp_path: Path) -> None:
    """A glob matching both tables and images names the mix instead of guessing."""
    (tmp_path / "a.jpg").write_bytes(photo(1))
    (tmp_path / "b.csv").write_text("x\n1\n")
    with pytest.raises(InputError, match="the input mixes images and tables"):
        open_input(str(tmp_path / "*"), id_column=None, needed={})


def _samples(start: int, count: int) -> list[tuple[str, dict[str, bytes]]]:
    return [
        (
            f"{n:06d}",
            {
                "jpg": photo(n),
                "txt": f"caption {n}".encode(),
                "json": json.dumps({"n": n}).encode(),
                "cls": str(n % 3).encode(),
            },
        )
        for n in range(start, start + count)
    ]


def test_webdataset_shards_with_brace_ranges(tmp_path: Path) -> None:
    """train-{000..002}.tar: a row per sample, a column per extension, id = key, in shard order."""
    (tmp_path / "shards").mkdir()
    for shard in range(3):
        write_shard(tmp_path / "shards" / f"train-{shard:03d}.tar", _samples(shard * 4, 4))
    job = write_job(
        tmp_path,
        input="shards/train-{000..002}.tar",
        output="out",
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Caption: {txt} (class {cls}).",
            "images": ["jpg"],
        },
    )
    done = invoke(["run", str(job), "--sandbox"])
    assert done.exit_code == 0, done.output
    results = _results(tmp_path)
    assert results["row_id"].to_list() == [f"{n:06d}" for n in range(12)]
    assert results["txt"].to_list()[5] == "caption 5"
    assert json.loads(results["json"][7]) == {"n": 7}
    assert results["cls"].to_list()[:4] == ["0", "1", "2", "0"]
    assert results["jpg"][0] == _digest(photo(0))
    assert "Caption: caption 3 (class 0)." in results["response_text"][3]
    assert set(results["status"]) == {"ok"}


def test_webdataset_is_streamed(tmp_path: Path) -> None:
    """Rows come out before a shard is read to its end: a shard whose tail is cut short still yields
    its first samples (a shard read whole would fail first), and the cut is one clear error."""
    path = write_shard(tmp_path / "s.tar", _samples(0, 300))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the second half is gone (the columns come from the first 64)
    table = open_input(str(path), id_column=None, needed={"txt": "request.prompt", "jpg": "request.images"})
    rows = iter_rows(table)
    first = [next(rows).row for _ in range(3)]
    assert [row.row_id for row in first] == ["000000", "000001", "000002"]
    with pytest.raises(InputError, match=r"s\.tar: cannot read the tar shard"):
        list(rows)


def test_webdataset_keys_follow_the_convention(tmp_path: Path) -> None:
    """Keys keep their folders and end at the first dot of the file name; __meta__ members are skipped."""
    write_shard(
        tmp_path / "s.tar",
        [
            ("dir.v2/a", {"seg.png": photo(1, fmt="PNG"), "txt": b"one"}),
            ("dir.v2/b", {"txt": b"two"}),
        ],
    )
    table = open_input(str(tmp_path / "s.tar"), id_column=None, needed={"txt": "request.prompt"})
    assert table.columns == ("key", "seg.png", "txt")
    rows = [sourced.row for sourced in iter_rows(table)]
    assert [row.row_id for row in rows] == ["dir.v2/a", "dir.v2/b"]
    assert rows[1].values["seg.png"] is None


def test_brace_expansion_keeps_zero_padding() -> None:
    """{000..002} keeps its width, {a,b} lists, several braces multiply."""
    assert expand_braces("t-{000..002}.tar") == ["t-000.tar", "t-001.tar", "t-002.tar"]
    assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
