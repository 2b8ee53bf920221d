"""Hostile input through the real CLI: a broken table is one precise line and exit 2, a bad row is that
row's error with no request sent, and nothing ever ends in a traceback or a request the API would reject.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from jobkit import image_bytes, invoke, run_subprocess, write_job
from pipeline.sandbox import running_sandbox

LIMITS = {"concurrency": 4, "max_attempts": 2, "timeout_s": 10}


def _job(
    directory: Path,
    input_name: str = "in.csv",
    *,
    name: str = "job",
    id_column: str | None = "id",
    **request: Any,
) -> Path:
    """A text job ``directory/<name>.toml`` over ``directory/input_name``; ``request`` overrides defaults."""
    settings: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "About {topic}."}
    top: dict[str, Any] = {"input": input_name, "output": "out"}
    if id_column is not None:
        top["id_column"] = id_column
    return write_job(directory, name=name, **top, request={**settings, **request}, limits=LIMITS)


def _refused(job: Path) -> str:
    """Run ``job`` against the sandbox, expect exit 2 with one stderr line and no output; return the line."""
    result = invoke(["run", str(job), "--sandbox"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pipeline: error: ")
    assert not (job.parent / "out" / "results.parquet").exists()
    return lines[0]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"id,topic\n1,caf\xe9\n",
            "in.csv line 2: not valid UTF-8 (byte 0xE9 at offset 14); re-save the file as UTF-8",
        ),
        (b"id,topic\n1,a\n2,b,c\n", "in.csv line 3 has 3 fields, but the header has 2"),
        (b"id,topic,x\n1,a,b\n2,b\n", "in.csv line 3 has 2 fields, but the header has 3"),
        (b"id,topic\n1,a\n\n2,b\n", "in.csv line 3 is blank"),
        (b'id,topic\n1,12" pizza\n', "in.csv line 2: a lone quote"),
        (b"", "in.csv: input file is empty"),
        (b"id,topic\n1,a\n2,b\n1,c\n", "id_column 'id' has duplicate values: '1' (2×)"),
    ],
    ids=[
        "latin-1",
        "too-many-fields",
        "too-few-fields",
        "blank-line",
        "lone-quote",
        "zero-bytes",
        "duplicate-ids",
    ],
)
def test_malformed_csv_is_exit_2_naming_the_line(tmp_path: Path, content: bytes, expected: str) -> None:
    """Each broken CSV stops the run before any request with one line naming the file and the line."""
    (tmp_path / "in.csv").write_bytes(content)
    assert expected in _refused(_job(tmp_path))


def test_latin1_csv_in_a_real_process_prints_one_line(tmp_path: Path) -> None:
    """In a child process too, a Latin-1 CSV is exit 2 and one stderr line, with no traceback."""
    (tmp_path / "in.csv").write_bytes(b"id,topic\n1,ok\n2,na\xefve\n")
    result = run_subprocess(["run", str(_job(tmp_path)), "--sandbox"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pipeline: error: {tmp_path / 'in.csv'} line 3: not valid UTF-8 (byte 0xEF at offset 18); "
        "re-save the file as UTF-8"
    ]


def test_duplicate_ids_are_all_named(tmp_path: Path) -> None:
    """Several repeated ids are named with their counts, not silently overwritten."""
    (tmp_path / "in.csv").write_text("id,topic\n7,a\n8,b\n7,c\n8,d\n7,e\n9,f\n")
    line = _refused(_job(tmp_path))
    assert "id_column 'id' has duplicate values: '7' (3×), '8' (2×)" in line


def test_typo_in_a_placeholder_suggests_the_column(tmp_path: Path) -> None:
    """A template placeholder with a typo names the missing column, who uses it, and the near match."""
    (tmp_path / "in.csv").write_text("id,subject\n1,a cat\n")
    line = _refused(_job(tmp_path, prompt="Describe {subjcet}."))
    assert (
        "no column 'subjcet' (used by request.prompt); did you mean 'subject'? Columns are: id, subject"
        in line
    )


@pytest.mark.parametrize(
    ("frame", "request_extra", "expected"),
    [
        (
            pl.DataFrame({"id": ["a"], "topic": ["t"], "img": [3]}),
            {"images": ["img"]},
            "column 'img' (used by request.images) holds Int64, expected text (paths, URLs or data: URIs)",
        ),
        (
            pl.DataFrame({"id": [1.0, 2.0], "topic": ["t", "u"]}),
            {},
            "id_column 'id' holds Float64; floats make poor ids",
        ),
    ],
    ids=["int-image-column", "float-id-column"],
)
def test_parquet_with_wrong_column_types_is_exit_2(
    tmp_path: Path, frame: pl.DataFrame, request_extra: dict[str, Any], expected: str
) -> None:
    """A Parquet column whose type cannot do its job is refused up front, naming column and type."""
    frame.write_parquet(tmp_path / "in.parquet")
    assert expected in _refused(_job(tmp_path, "in.parquet", **request_extra))


def test_bom_csv_runs_and_finds_the_id_column(tmp_path: Path) -> None:
    """A UTF-8 BOM does not end up in the first column's name: id_column = "id" is found and used."""
    (tmp_path / "in.csv").write_bytes(b"\xef\xbb\xbfid,topic\r\n1,a\r\n2,b\r\n")
    result = invoke(["run", str(_job(tmp_path)), "--sandbox"])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame["row_id"].to_list() == ["1", "2"]
    assert "id" in frame.columns
    assert set(frame["status"]) == {"ok"}


def test_header_only_csv_is_a_clean_empty_run(tmp_path: Path) -> None:
    """A CSV with a header and no rows sends nothing and exits 0."""
    (tmp_path / "in.csv").write_text("id,topic\n")
    job = _job(tmp_path)
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert sandbox.stats()["requests_total"] == 0
    assert result.exit_code == 0, result.output
    assert "0 rows sent" in result.stderr


def test_header_only_csv_writes_an_empty_results_file(tmp_path: Path) -> None:
    """A zero-row run leaves a valid results.parquet with zero rows, as the summary line claims."""
    (tmp_path / "in.csv").write_text("id,topic\n")
    assert invoke(["run", str(_job(tmp_path)), "--sandbox"]).exit_code == 0
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 0


def test_ten_megabyte_cell_is_a_row_error_and_never_sent(tmp_path: Path) -> None:
    """A 10 MB cell makes that row request_too_large with no request; the other rows are answered."""
    pl.DataFrame({"id": ["0", "1", "2"], "topic": ["cats", "x" * 10_000_000, "dogs"]}).write_csv(
        tmp_path / "in.csv"
    )
    job = _job(tmp_path)
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert result.exit_code == 1, result.output
    assert stats["requests_total"] == 2
    assert stats["by_status"] == {"200": 2}
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet").select(
        "row_id", "status", "error_type", "error_message", "attempts"
    )
    rows = {row["row_id"]: row for row in frame.iter_rows(named=True)}
    assert rows["0"]["status"] == rows["2"]["status"] == "ok"
    big = rows["1"]
    assert (big["status"], big["error_type"], big["attempts"]) == ("error", "request_too_large", 0)
    assert "over the model's context window of 200,000 (request.max_input_tokens)" in big["error_message"]
    checked = invoke(["validate", str(job)], key=None)
    assert checked.exit_code == 1
    assert "row 2 (id 1): prompt is about 2,857," in checked.stderr


def test_image_root_confines_paths_after_resolving_symlinks(tmp_path: Path) -> None:
    """With image_root, images reached by '..', an absolute path or a symlink out of it are row errors."""
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "inside.png").write_bytes(image_bytes("PNG"))
    (tmp_path / "secret.png").write_bytes(image_bytes("PNG"))
    (pics / "link.png").symlink_to(tmp_path / "secret.png")
    cells = ["pics/inside.png", "pics/../secret.png", "pics/link.png", str(tmp_path / "secret.png")]
    pl.DataFrame({"id": ["in", "dotdot", "symlink", "absolute"], "topic": ["t"] * 4, "img": cells}).write_csv(
        tmp_path / "in.csv"
    )
    confined = _job(tmp_path, name="confined", images=["img"], image_root="pics")
    with running_sandbox() as sandbox:
        result = invoke(["run", str(confined), "--base-url", sandbox.base_url])
        assert sandbox.stats()["requests_total"] == 1
        assert result.exit_code == 1, result.output
        frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
        rows = {row["row_id"]: row for row in frame.iter_rows(named=True)}
        assert rows["in"]["status"] == "ok"
        for name in ("dotdot", "symlink", "absolute"):
            assert (rows[name]["error_type"], rows[name]["attempts"]) == ("image_error", 0)
            assert f"is outside image_root {pics}" in rows[name]["error_message"]
        # the default policy follows '..', absolute paths and symlinks: the same table runs whole
        free = invoke(["run", str(_job(tmp_path, images=["img"])), "--base-url", sandbox.base_url, "--fresh"])
        assert free.exit_code == 0, free.output
    checked = invoke(["validate", str(confined)], key=None)
    assert checked.exit_code == 1
    assert "3 rows with problems" in checked.stderr
