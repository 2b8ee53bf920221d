"""`pipeline export`: the results as CSV, JSONL or Parquet, read back with nothing dropped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest

from jobkit import invoke, run_subprocess, text_job
from pipeline.sandbox import running_sandbox

SCHEMA = {
    "type": "object",
    "required": ["label", "score", "tags", "spot"],
    "properties": {
        "label": {"type": "string", "enum": ["a", "b"]},
        "score": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "spot": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}},
    },
}


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output directory from a forced-tool job, with one image_error row among them."""
    tmp_path = tmp_path_factory.mktemp("export")
    job = text_job(
        tmp_path,
        rows=6,
        images=["photo"],
        tools=[{"name": "rate", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "rate"},
    )
    (tmp_path / "input.csv").write_text(
        "id,topic,photo\n" + "".join(f"{i},topic {i},\n" for i in range(5)) + "5,broken,missing.png\n",
        encoding="utf-8",
    )
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 1
    return tmp_path / "out"


def _json(text: str | None) -> object:
    return None if text is None else json.loads(text)


def _results(output: Path) -> pl.DataFrame:
    return pl.read_parquet(output / "results.parquet")


def test_csv_keeps_every_column_with_nested_ones_as_json(output: Path) -> None:
    """CSV has every column and row; tool_calls and out_* lists and structs are JSON text that reads back."""
    result = invoke(["export", str(output), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "6 rows written to" in result.output
    results = _results(output)
    back = pl.read_csv(output / "export.csv", infer_schema=False)
    assert back.columns == results.columns
    assert back.height == results.height
    for got, want in zip(back.iter_rows(named=True), results.iter_rows(named=True), strict=True):
        assert got["row_id"] == want["row_id"]
        assert json.loads(got["tool_calls"]) == want["tool_calls"]
        assert _json(got["out_tags"]) == want["out_tags"]
        assert _json(got["out_spot"]) == want["out_spot"]
        assert got["error_message"] == want["error_message"]
        assert (got["out_score"] is None) == (want["out_score"] is None)


def test_jsonl_round_trips_nested_values(output: Path) -> None:
    """JSONL keeps lists and structs as JSON values: read back, every column equals the Parquet one."""
    target = output.parent / "elsewhere" / "results.jsonl"
    assert invoke(["export", str(output), "--format", "jsonl", "--to", str(target)]).exit_code == 0
    results = _results(output)
    back = pl.read_ndjson(target, schema=results.schema | {"finished_at": pl.String})
    assert back.columns == results.columns
    assert back.drop("finished_at").equals(results.drop("finished_at"))
    stamps = [json.loads(line)["finished_at"] for line in target.read_text().splitlines()]
    assert len(stamps) == results.height
    assert all(stamp.startswith(str(results["finished_at"][0].year)) for stamp in stamps)


def test_parquet_export_equals_results(output: Path, tmp_path: Path) -> None:
    """A Parquet export holds the same frame as results.parquet."""
    target = tmp_path / "copy.parquet"
    assert invoke(["export", str(output), "--format", "parquet", "--to", str(target)]).exit_code == 0
    assert pl.read_parquet(target).equals(_results(output))


def test_stdout_export(output: Path) -> None:
    """--to - writes JSONL to stdout, one line per row."""
    result = run_subprocess(["export", str(output), "--format", "jsonl", "--to", "-"])
    assert result.returncode == 0, result.stderr
    frame = pl.read_ndjson(io.StringIO(result.stdout))
    assert frame.height == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "parquet", "--to", "-"], "parquet is binary"),
        (["--format", "parquet", "--to", "{out}/results.parquet"], "is the results file itself"),
    ],
)
def test_refusals_are_one_line(output: Path, args: list[str], message: str) -> None:
    """Exports that would garble a terminal or overwrite the results exit 2 with one line."""
    result = run_subprocess(["export", str(output), *[arg.format(out=output) for arg in args]])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pipeline: error: ")
    assert message in result.stderr


def test_export_of_an_empty_directory_fails_cleanly(tmp_path: Path) -> None:
    """An output directory without results is a one-line error, exit 2."""
    result = run_subprocess(["export", str(tmp_path), "--format", "csv"])
    assert result.returncode == 2
    assert "holds no results" in result.stderr
    assert "Traceback" not in result.stderr
