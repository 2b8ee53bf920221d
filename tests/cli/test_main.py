"""End to end through the real CLI against the sandbox: shipped jobs, resume, exit codes, secrets."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import jsonschema
import polars as pl
import pytest

from jobkit import FAKE_KEY, ROOT, invoke, run_subprocess, text_job
from pipeline.job.spec import load_job
from pipeline.sandbox import SandboxConfig, running_sandbox

REQUIRED_COLUMNS = [
    *("row_id", "status", "model", "response_text", "tool_calls", "stop_reason", "input_tokens"),
    *("output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "message_id"),
    *("request_id", "attempts", "latency_ms", "error_type", "error_message", "finished_at"),
]
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{400,}")


def _copy_project(tmp_path: Path) -> Path:
    """A copy of jobs/ and sample_data/, so shipped jobs run with their relative paths intact."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    return tmp_path


def _input_rows(job: Path) -> pl.DataFrame:
    spec = load_job(job)
    path = Path(spec.input)
    return pl.read_ndjson(path) if path.suffix == ".jsonl" else pl.read_csv(path, infer_schema=False)


@pytest.mark.parametrize("name", ["caption_images", "annotate_products", "classify_reviews"])
def test_shipped_job_runs_against_sandbox(tmp_path: Path, name: str) -> None:
    """Each shipped job runs with --sandbox: one ok row per input row, each with its own answer."""
    project = _copy_project(tmp_path)
    job = project / "jobs" / f"{name}.toml"
    result = invoke(["run", str(job), "--sandbox"], key=None)
    assert result.exit_code == 0, result.output
    out = project / "out" / name.replace("_", "-") / "results.parquet"
    frame = pl.read_parquet(out)
    inputs = _input_rows(job)
    assert frame.height == inputs.height
    assert set(REQUIRED_COLUMNS) <= set(frame.columns)
    assert set(frame["status"]) == {"ok"}
    assert all(model.startswith("sandbox:") for model in frame["model"])
    assert frame["row_id"].n_unique() == frame.height
    assert (frame["input_tokens"] > 0).all()
    spec = load_job(job)
    if spec.request.tools:
        schema = spec.request.tools[0].input_schema
        for calls in frame["tool_calls"].to_list():
            assert len(calls) == 1
            assert calls[0]["name"] == "record_annotation"
            jsonschema.validate(json.loads(calls[0]["input"]), schema)
    elif spec.request.output_schema is not None:
        # structured output on a current model: JSON that fits, typed columns, and the model's thinking
        for answer in frame["response_text"]:
            jsonschema.validate(json.loads(answer), spec.request.output_schema)
        assert frame["out_category"].is_in(["apparel", "electronics", "home", "other"]).all()
        assert frame["out_has_text"].dtype == pl.Boolean
        assert frame["thinking"].str.starts_with("[sandbox] thinking about ").all()
    else:
        # each row got its own answer: the sandbox echoes the row's prompt (cut at a stop sequence)
        key = "subject" if "subject" in frame.columns else "text"
        for cell, answer in zip(frame[key], frame["response_text"], strict=True):
            assert cell.split(".")[0][:30] in answer
    _assert_no_image_data(project, frame)


def _assert_no_image_data(project: Path, frame: pl.DataFrame) -> None:
    """No cell holds a base64 run, and no output file holds any sample image's base64 (what was sent)."""
    for column in frame.columns:
        if frame[column].dtype == pl.String:
            assert not any(BASE64_RUN.search(cell.encode()) for cell in frame[column].drop_nulls()), column
    images = (project / "sample_data" / "images").iterdir()
    encoded = [base64.b64encode(p.read_bytes())[100:400] for p in images]
    for path in (project / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(chunk in data for chunk in encoded), f"image data stored in {path}"


def test_rerun_sends_nothing_and_fresh_sends_all(tmp_path: Path) -> None:
    """A finished job's rerun sends zero requests; --fresh sends every row again."""
    job = text_job(tmp_path, rows=12)
    with running_sandbox() as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        assert first.exit_code == 0, first.output
        assert sandbox.stats()["answers_ok"] == 12
        second = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        summary = json.loads(second.stdout.strip().splitlines()[-1])
        assert summary["rows"] == {"total": 12, "ok": 0, "error": 0, "skipped": 12}
        assert summary["requests_sent"] == 0
        assert sandbox.stats()["requests_total"] == 12
        third = invoke(["run", str(job), "--base-url", sandbox.base_url, "--fresh"])
        assert third.exit_code == 0
        assert sandbox.stats()["answers_ok"] == 24
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").height == 12
    assert (tmp_path / "out" / "results.previous.parquet").exists()


def test_changed_prompt_redoes_rows(tmp_path: Path) -> None:
    """Changing the prompt invalidates earlier answers; the rerun sends every row again."""
    job = text_job(tmp_path, rows=5)
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
        job.write_text(job.read_text().replace("Say something", "Write a haiku"))
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
        assert sandbox.stats()["answers_ok"] == 10
    texts = pl.read_parquet(tmp_path / "out" / "results.parquet")["response_text"].to_list()
    assert all("haiku" in text for text in texts)


def test_limit_input_and_output_overrides(tmp_path: Path) -> None:
    """--limit, --input and --output override the job; only the first N rows are sent."""
    job = text_job(tmp_path, rows=30)
    other = tmp_path / "other.csv"
    other.write_text("id,topic\n" + "".join(f"o{i},other {i}\n" for i in range(20)))
    with running_sandbox() as sandbox:
        result = invoke(
            [
                "run",
                str(job),
                "--base-url",
                sandbox.base_url,
                "--input",
                str(other),
                "--output",
                str(tmp_path / "x"),
                "--limit",
                "7",
            ]
        )
        assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "x" / "results.parquet")
    assert frame["id"].to_list() == [f"o{i}" for i in range(7)]


def test_tool_and_streaming_job(tmp_path: Path) -> None:
    """A streamed, forced-tool job assembles tool input from input_json_delta events."""
    schema = {
        "type": "object",
        "required": ["label", "score"],
        "properties": {
            "label": {"type": "string", "enum": ["a", "b"]},
            "score": {"type": "integer", "minimum": 1, "maximum": 5},
        },
    }
    job = text_job(
        tmp_path,
        rows=6,
        stream=True,
        tools=[{"name": "rate", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "rate"},
    )
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["stop_reason"]) == {"tool_use"}
    for calls in frame["tool_calls"].to_list():
        jsonschema.validate(json.loads(calls[0]["input"]), schema)


def test_openai_shaped_bearer_provider(tmp_path: Path) -> None:
    """A provider with Bearer auth and OpenAI-like replies still yields text and token counts."""
    job = text_job(tmp_path, rows=4)
    job.write_text(job.read_text() + '\n[api]\nauth = "bearer"\n')
    with running_sandbox(SandboxConfig(auth="bearer", shape="openai", api_key=FAKE_KEY)) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert all(text.startswith("[sandbox]") for text in frame["response_text"])
    assert (frame["output_tokens"] > 0).all()


def test_bad_job_file_is_exit_2_one_line(tmp_path: Path) -> None:
    """An unknown key in the job file exits 2 with one line naming the key, and no traceback."""
    job = text_job(tmp_path, rows=1)
    job.write_text(job.read_text().replace("[limits]", "[limits]\nrpm = 5"))
    result = run_subprocess(["run", str(job), "--sandbox"])
    assert result.returncode == 2
    assert "unknown key 'limits.rpm'" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_key_is_exit_2(tmp_path: Path) -> None:
    """Without the API key (and without --sandbox) the run refuses up front with exit 2."""
    job = text_job(tmp_path, rows=1)
    result = run_subprocess(["run", str(job)], key=None)
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_rejected_key_is_exit_2_and_never_printed(tmp_path: Path) -> None:
    """A 401 stops the run with exit 2; the key appears in no output, log or file."""
    job = text_job(tmp_path, rows=20)
    with running_sandbox(SandboxConfig(api_key="sk-the-right-one")) as sandbox:
        result = run_subprocess(["run", str(job), "--base-url", sandbox.base_url, "-vv"])
    assert result.returncode == 2
    assert "authentication_error" in result.stderr
    assert "Traceback" not in result.stderr
    assert FAKE_KEY not in result.stdout + result.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes()


def test_row_errors_give_exit_1_and_a_fixed_row_is_resent(tmp_path: Path) -> None:
    """Rows the API rejects are errors (exit 1) kept in the output; fixing one in the input resends it."""
    job = text_job(tmp_path, rows=3)
    csv = tmp_path / "input.csv"
    csv.write_text("id,topic\n0,fine\n1,REJECT-ME\n2,also fine\n")
    with running_sandbox(SandboxConfig(reject_marker="REJECT-ME")) as sandbox:
        first = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert first.exit_code == 1, first.output
        frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
        assert frame.filter(pl.col("id") == "1")["error_type"].to_list() == ["invalid_request_error"]
        assert frame.filter(pl.col("status") == "ok").height == 2
        before = sandbox.stats()["requests_total"]
        csv.write_text("id,topic\n0,fine\n1,fixed now\n2,also fine\n")
        second = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert second.exit_code == 0
        assert sandbox.stats()["requests_total"] - before == 1


def test_python_dash_m_and_help() -> None:
    """`python -m pipeline --help` lists the commands."""
    result = run_subprocess(["--help"])
    assert result.returncode == 0
    for command in ("run", "validate", "sandbox"):
        assert command in result.stdout


def test_sandbox_command_refuses_bad_options_in_one_line() -> None:
    """`pipeline sandbox` with an unknown fault kind exits 2 with one line, no traceback."""
    result = run_subprocess(["sandbox", "--faults", "529,bogus"])
    assert result.returncode == 2
    assert "unknown kinds ['bogus']" in result.stderr
    assert "Traceback" not in result.stderr
