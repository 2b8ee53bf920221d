"""Dedupe in batch mode through the real CLI against the loopback sandbox: what batches hold and write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from jobkit import invoke, write_job
from pipeline.batch.state import BatchLog, read_rows, row_leaders
from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox

FAST_POLL = {"poll_interval_s": 0.1, "max_poll_interval_s": 0.2}
LEADERS = {"1", "2", "6"}  # the first row of each distinct request
SHARED = {"1": None, "2": None, "3": "1", "4": "1", "5": "2", "6": None}


def dupes_job(directory: Path, batch: dict[str, Any] | None = None, **request: Any) -> Path:
    """Six rows, three distinct prompts: rows 3 and 4 repeat row 1, row 5 repeats row 2."""
    rows = ["1,cats", "2,dogs", "3,cats", "4,cats", "5,dogs", "6,fish"]
    (directory / "in.csv").write_text("id,topic\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return write_job(
        directory,
        name="dupes",
        input="in.csv",
        output="out",
        id_column="id",
        batch={**FAST_POLL, **(batch or {})},
        request={"model": "claude-haiku-4-5", "max_tokens": 40, "prompt": "About {topic}.", **request},
    )


def run(job: Path, sandbox: SandboxHandle, *extra: str) -> Any:
    """``pipeline run JOB --mode batch --json`` against the sandbox, in-process."""
    return invoke(["run", str(job), "--mode", "batch", "--base-url", sandbox.base_url, "--json", *extra])


def summary(result: Any) -> dict[str, Any]:
    """The --json summary line of an invocation."""
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def results(directory: Path) -> pl.DataFrame:
    """The output's results.parquet, in input order."""
    return pl.read_parquet(directory / "out" / "results.parquet").sort("row_index")


def sent_ids(sandbox: SandboxHandle) -> dict[str, int]:
    """custom_id -> times the sandbox received it in a batch body."""
    submitted: dict[str, int] = sandbox.stats()["batches"]["submitted_by_custom_id"]
    return submitted


def test_identical_requests_go_into_the_batch_once_and_every_row_gets_the_answer(tmp_path: Path) -> None:
    """At temperature 0 a batch holds each distinct request once; collecting answers all rows, as realtime."""
    job = dupes_job(tmp_path, temperature=0.0)
    with running_sandbox(SandboxConfig(batch_processing_s=3600.0)) as sandbox:
        first = run(job, sandbox)
        assert first.exit_code == 0, first.output
        assert "1 submitted (6 rows, 3 requests)" in first.stderr
        assert "pending: 1 batches (6 rows)" in first.stderr
        submitted = summary(first)
        assert submitted["requests_sent"] == 3
        assert submitted["batch"]["submitted_rows"] == 6
        assert submitted["batch"]["submitted_requests"] == 3
        assert sandbox.stats()["batches"]["requests"] == 3
        assert set(sent_ids(sandbox)) == LEADERS
        again = run(job, sandbox)  # followers are pending with their leaders: nothing goes out again
        assert "0 submitted (0 rows)" in again.stderr
        assert "pending: 1 batches (6 rows)" in again.stderr
        assert sandbox.finish_batches() == 1
        collected = invoke(["batch", "collect", str(tmp_path / "out"), "--wait", "--json"])
        assert collected.exit_code == 0, collected.output
        final = run(job, sandbox)
        assert "0 submitted (0 rows)" in final.stderr
        assert sandbox.stats()["batches"]["created"] == 1
        assert max(sent_ids(sandbox).values()) == 1
    frame = results(tmp_path)
    assert set(frame["status"]) == {"ok"}
    assert dict(zip(frame["row_id"], frame["shared_request_with"], strict=True)) == SHARED
    texts = dict(zip(frame["row_id"], frame["response_text"], strict=True))
    assert texts["3"] == texts["4"] == texts["1"]
    assert texts["5"] == texts["2"]
    followers = frame.filter(pl.col("shared_request_with").is_not_null())
    leaders = frame.filter(pl.col("shared_request_with").is_null())
    assert (followers["input_tokens"] == 0).all()
    assert (followers["output_tokens"] == 0).all()
    assert followers["attempts"].to_list() == [0, 0, 0]
    assert leaders["attempts"].to_list() == [1, 1, 1]
    assert (leaders["input_tokens"] > 0).all()
    assert followers["request_id"].str.starts_with("msgbatch_").all()
    done = summary(collected)
    assert done["rows_shared"] == 3
    assert done["rows"]["ok"] == 6
    assert done["tokens"]["input"] == frame["input_tokens"].sum()  # followers add nothing to the bill
    assert "3 rows answered by an identical request" in collected.stderr
    [sub] = BatchLog(tmp_path / "out").submissions()
    mapping = read_rows(BatchLog(tmp_path / "out").rows_path(sub.key))
    stored = dict(zip(mapping.column("row_id").to_pylist(), row_leaders(mapping), strict=True))
    assert stored == {"1": None, "2": None, "3": "1", "4": "1", "5": "2", "6": None}


def test_followers_of_errored_or_expired_leaders_are_resubmitted_with_them(tmp_path: Path) -> None:
    """A leader's errored or expired result is every follower's; the next run sends the leader again, once."""
    job = dupes_job(tmp_path, temperature=0.0)
    failing = SandboxConfig(batch_processing_s=0.1, batch_errored_rate=0.5, batch_expired_rate=0.5, seed=3)
    with running_sandbox(failing) as broken:
        assert run(job, broken).exit_code == 0
        collected = invoke(["batch", "collect", str(tmp_path / "out"), "--wait"])
        assert collected.exit_code == 1  # every row is an error for now
    failed = results(tmp_path)
    assert set(failed["status"]) == {"error"}
    assert set(failed["error_type"]) <= {"api_error", "expired"}
    assert dict(zip(failed["row_id"], failed["shared_request_with"], strict=True)) == SHARED
    by_row = {row["row_id"]: row for row in failed.iter_rows(named=True)}
    for follower, leader in (("3", "1"), ("4", "1"), ("5", "2")):
        assert by_row[follower]["error_type"] == by_row[leader]["error_type"]
        assert by_row[follower]["error_message"] == by_row[leader]["error_message"]
        assert by_row[follower]["attempts"] == 0
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as healthy:
        rerun = run(job, healthy, "--wait")
        assert rerun.exit_code == 0, rerun.output
        assert sent_ids(healthy) == dict.fromkeys(LEADERS, 1)
    frame = results(tmp_path)
    assert set(frame["status"]) == {"ok"}
    assert dict(zip(frame["row_id"], frame["shared_request_with"], strict=True)) == SHARED
    assert frame.filter(pl.col("shared_request_with").is_null())["attempts"].to_list() == [2, 2, 2]
    assert frame.filter(pl.col("shared_request_with").is_not_null())["attempts"].to_list() == [0, 0, 0]
    assert summary(rerun)["rows_shared"] == 3


def test_followers_stop_with_their_leader_at_max_attempts(tmp_path: Path) -> None:
    """When a leader used its [batch] max_attempts, its followers are not submitted on their own either."""
    job = dupes_job(tmp_path, batch={"max_attempts": 1}, temperature=0.0)
    failing = SandboxConfig(batch_processing_s=0.1, batch_errored_rate=1.0)
    with running_sandbox(failing) as sandbox:
        result = run(job, sandbox, "--wait")
        stats = sandbox.stats()["batches"]
    assert result.exit_code == 1
    assert stats["created"] == 1
    assert set(stats["submitted_by_custom_id"]) == LEADERS
    assert summary(result)["batch"]["max_attempts_reached"] == 6
    assert set(results(tmp_path)["error_type"]) == {"api_error"}


@pytest.mark.parametrize(
    ("request_settings", "requests"),
    [({}, 6), ({"temperature": 0.0, "dedupe": False}, 6), ({"temperature": 0.7, "dedupe": True}, 3)],
)
def test_dedupe_setting_decides_what_the_batch_holds(
    tmp_path: Path, request_settings: dict[str, Any], requests: int
) -> None:
    """Without temperature 0, or with dedupe = false, all rows are sent; dedupe = true shares at any."""
    job = dupes_job(tmp_path, **request_settings)
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as sandbox:
        result = run(job, sandbox, "--wait")
        assert result.exit_code == 0, result.output
        assert sandbox.stats()["batches"]["requests"] == requests
    frame = results(tmp_path)
    assert set(frame["status"]) == {"ok"}
    assert frame["shared_request_with"].drop_nulls().len() == 6 - requests
    data = summary(result)
    assert data["rows_shared"] == 6 - requests
    assert data["requests_sent"] == requests
    assert data["batch"]["submitted_rows"] == 6


def test_a_canceled_leader_writes_no_follower_and_both_are_submitted_again(tmp_path: Path) -> None:
    """Canceling leaves a leader and its followers undone; the next run submits them together again."""
    job = dupes_job(tmp_path, temperature=0.0)
    with running_sandbox(SandboxConfig(batch_processing_s=60.0)) as sandbox:
        assert run(job, sandbox).exit_code == 0
        assert invoke(["batch", "cancel", str(tmp_path / "out")]).exit_code == 0
        assert sandbox.finish_batches() == 1  # the cancel takes effect now, on a machine of any speed
        collected = invoke(["batch", "collect", str(tmp_path / "out")])
        assert collected.exit_code == 0, collected.output
        assert not (tmp_path / "out" / "results.parquet").exists() or results(tmp_path).height == 0
        rerun = run(job, sandbox)
        assert "1 submitted (6 rows, 3 requests)" in rerun.stderr
        assert sent_ids(sandbox) == dict.fromkeys(LEADERS, 2)


def test_a_rows_file_written_before_followers_existed_still_collects(tmp_path: Path) -> None:
    """A rows file without the leader column (an older version's) is collected with every row as sent."""
    job = dupes_job(tmp_path)
    with running_sandbox(SandboxConfig(batch_processing_s=0.2)) as sandbox:
        assert run(job, sandbox).exit_code == 0
        batch_log = BatchLog(tmp_path / "out")
        [sub] = batch_log.submissions()
        path = batch_log.rows_path(sub.key)
        old = read_rows(path).drop_columns(["leader"])
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, old.schema) as writer:
            writer.write_table(old)
        collected = invoke(["batch", "collect", str(tmp_path / "out"), "--wait"])
        assert collected.exit_code == 0, collected.output
    frame = results(tmp_path)
    assert frame.height == 6
    assert set(frame["status"]) == {"ok"}
    assert frame["shared_request_with"].null_count() == 6
