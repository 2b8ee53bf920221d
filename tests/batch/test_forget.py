"""`pipeline batch forget` through the real CLI: unblocking an output whose batch the API no longer knows."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from jobkit import invoke, write_job
from pipeline.batch.state import BatchLog
from pipeline.sandbox import SandboxConfig, running_sandbox


def _job(directory: Path, rows: int, **batch: float) -> Path:
    """A text job over a generated CSV writing to directory/out, polling batches fast."""
    ids = [f"r{i}" for i in range(rows)]
    pl.DataFrame({"id": ids, "topic": [f"topic {i}" for i in range(rows)]}).write_csv(directory / "input.csv")
    return write_job(
        directory,
        name="forgetjob",
        input="input.csv",
        output="out",
        id_column="id",
        batch={"poll_interval_s": 0.1, "max_poll_interval_s": 0.2, **batch},
        request={"model": "claude-haiku-4-5", "max_tokens": 40, "prompt": "About {topic}."},
        limits={"max_attempts": 3, "timeout_s": 10},
    )


def _log_lines(output: Path) -> list[str]:
    """The batch log's lines."""
    return (output / ".batches" / "log.jsonl").read_text(encoding="utf-8").splitlines()


def test_forget_unblocks_a_run_whose_batch_vanished_and_the_rerun_submits_its_rows(tmp_path: Path) -> None:
    """A 404 on retrieve stops runs pointing at forget; forget --yes frees the rows; the rerun sends them."""
    job = _job(tmp_path, 6)
    out = tmp_path / "out"
    with running_sandbox(SandboxConfig(batch_processing_s=60.0)) as first:
        submitted = invoke(["run", str(job), "--mode", "batch", "--base-url", first.base_url, "--json"])
        assert submitted.exit_code == 0, submitted.output
        [batch_id] = json.loads(submitted.stdout.strip().splitlines()[-1])["batch"]["pending_batches"]
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as second:  # restarted: knows no batch
        for _ in range(2):  # stuck: every invocation stops the same way
            stuck = invoke(["run", str(job), "--mode", "batch", "--base-url", second.base_url])
            assert stuck.exit_code == 2
            [line] = stuck.stderr.strip().splitlines()
            assert line.startswith(f"pipeline: error: batch {batch_id} is not found at {second.base_url}")
            assert f"pipeline batch forget {out} {batch_id}" in line
        assert second.stats()["batches"]["created"] == 0
        listed = invoke(["batch", "status", str(out), "--base-url", second.base_url, "--json"])
        assert listed.exit_code == 0, listed.output
        [entry] = json.loads(listed.stdout)["batches"]
        assert f"pipeline batch forget {out} {batch_id}" in entry["problem"]

        before = _log_lines(out)
        refused = invoke(["batch", "forget", str(out), batch_id])  # no --yes: a warning, nothing recorded
        assert refused.exit_code == 2
        [warning] = refused.stderr.strip().splitlines()
        assert warning.startswith("pipeline: error: batch forget:")
        assert "may be paid twice" in warning
        assert "--yes" in warning
        assert _log_lines(out) == before

        unknown = invoke(["batch", "forget", str(out), "msgbatch_nope", "--yes"])
        assert unknown.exit_code == 2
        assert f"has no batch or submission key 'msgbatch_nope' (pending: {batch_id})" in unknown.stderr

        forgot = invoke(["batch", "forget", str(out), batch_id, "--yes"])
        assert forgot.exit_code == 0, forgot.output
        assert f"forgot {batch_id} (6 requests)" in forgot.stderr
        [sub] = BatchLog(out).submissions()
        assert (sub.phase, sub.batch_id) == ("abandoned", batch_id)
        again = invoke(["batch", "forget", str(out), batch_id, "--yes"])
        assert again.exit_code == 2
        assert "is not pending (it is abandoned)" in again.stderr
        assert json.loads(invoke(["status", str(out), "--json"]).stdout)["pending_batches"]["batches"] == 0

        rerun = invoke(["run", str(job), "--mode", "batch", "--base-url", second.base_url, "--wait"])
        assert rerun.exit_code == 0, rerun.output
        stats = second.stats()["batches"]
    assert stats["created"] == 1
    assert sorted(stats["submitted_by_custom_id"]) == [f"r{i}" for i in range(6)]
    frame = pl.read_parquet(out / "results.parquet")
    assert frame.height == 6
    assert set(frame["status"]) == {"ok"}
    assert set(frame["request_id"]) == set(stats["ids"])


def test_forget_takes_the_key_of_an_unconfirmed_submission(tmp_path: Path) -> None:
    """An intent whose batch id was never saved is forgotten by its key, and its rows go out again."""
    job = _job(tmp_path, 4, orphan_grace_s=3600.0)
    out = tmp_path / "out"
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as first:
        assert invoke(["run", str(job), "--mode", "batch", "--base-url", first.base_url]).exit_code == 0
    # as if the run died between the create POST and saving its answer
    kept = [line for line in _log_lines(out) if json.loads(line)["event"] != "submitted"]
    (out / ".batches" / "log.jsonl").write_text("\n".join(kept) + "\n", encoding="utf-8")
    [sub] = BatchLog(out).submissions()
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as second:
        waiting = invoke(["run", str(job), "--mode", "batch", "--base-url", second.base_url])
        assert waiting.exit_code == 0, waiting.output
        assert "unconfirmed" in waiting.stderr
        assert second.stats()["batches"]["created"] == 0  # held back by orphan_grace_s
        forgot = invoke(["batch", "forget", str(out), sub.key, "--yes"])
        assert forgot.exit_code == 0, forgot.output
        assert f"forgot {sub.key} (unconfirmed)" in forgot.stderr
        rerun = invoke(["run", str(job), "--mode", "batch", "--base-url", second.base_url, "--wait"])
        assert rerun.exit_code == 0, rerun.output
        assert second.stats()["batches"]["created"] == 1
    assert pl.read_parquet(out / "results.parquet").height == 4
