"""`pipeline status` through the real CLI: cost at the prices the run used, and pending batches, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from jobkit import invoke, run_subprocess, write_job
from pipeline.catalog.prices import Price, price_for
from pipeline.records import Usage
from pipeline.sandbox import SandboxConfig, running_sandbox

# about 4,800 sandbox tokens: over Haiku 4.5's 4,096-token minimum cacheable prefix
LONG_SYSTEM = "You are careful and brief. " * 800


def _job(directory: Path, rows: int, *, request: dict[str, Any] | None = None, **top: Any) -> Path:
    """A text job over a generated CSV writing to directory/out, polling batches fast."""
    pl.DataFrame(
        {"id": [str(i) for i in range(rows)], "topic": [f"topic {i}" for i in range(rows)]}
    ).write_csv(directory / "input.csv")
    return write_job(
        directory,
        name="statusjob",
        input="input.csv",
        output="out",
        id_column="id",
        batch={"poll_interval_s": 0.1, "max_poll_interval_s": 0.2},
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 40,
            "prompt": "About {topic}.",
            **(request or {}),
        },
        limits={"concurrency": 1, "max_attempts": 3, "timeout_s": 10},
        **top,
    )


def _status(output: Path) -> dict[str, Any]:
    """`pipeline status OUTPUT --json`, parsed."""
    result = invoke(["status", str(output), "--json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _usage(frame: pl.DataFrame) -> Usage:
    """The token columns of ``frame``, summed."""
    return Usage(
        *(
            int(frame[name].sum())
            for name in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            )
        )
    )


def test_status_prices_realtime_rows_with_the_jobs_prices_and_cache_ttl(tmp_path: Path) -> None:
    """A job's [prices] and cache_ttl = "1h" price status exactly as the run's own summary did."""
    job = _job(
        tmp_path,
        4,
        request={"system": LONG_SYSTEM, "cache": True, "cache_ttl": "1h"},
        prices={"input": 2.0, "output": 8.0},
    )
    run = invoke(["run", str(job), "--sandbox", "--json"])
    assert run.exit_code == 0, run.output
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    usage = _usage(pl.read_parquet(tmp_path / "out" / "results.parquet"))
    assert usage.cache_creation_input_tokens > 0
    expected = Price("claude-haiku-4-5", input=2.0, output=8.0).cost_usd(usage, cache_ttl="1h")
    shipped = price_for("claude-haiku-4-5")
    assert shipped is not None
    assert expected != pytest.approx(shipped.cost_usd(usage), rel=1e-3)  # the override matters here
    status = _status(tmp_path / "out")
    assert status["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert status["cost_usd"] == pytest.approx(summary["cost_usd"], abs=1e-6)
    [used] = status["prices"]
    assert used["mode"] == "realtime"
    assert used["source"] == "the job's [prices] table"
    assert (used["input_per_mtok"], used["output_per_mtok"], used["cache_ttl"]) == (2.0, 8.0, "1h")
    assert used["rows"] == 4
    text = invoke(["status", str(tmp_path / "out")]).stdout
    assert "realtime: $2/$8 per MTok in/out for claude-haiku-4-5, 1-hour cache writes" in text
    assert "the job's [prices] table" in text


def test_status_prices_batch_rows_at_batch_prices_and_realtime_rows_at_realtime_prices(
    tmp_path: Path,
) -> None:
    """Rows collected from a batch cost half; rows answered in realtime in the same output cost full price."""
    job = _job(tmp_path, 8)
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as sandbox:
        realtime = invoke(["run", str(job), "--base-url", sandbox.base_url, "--limit", "3"])
        assert realtime.exit_code == 0, realtime.output
        batch = invoke(
            ["run", str(job), "--base-url", sandbox.base_url, "--mode", "batch", "--wait", "--json"]
        )
        assert batch.exit_code == 0, batch.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    from_batch = frame.filter(pl.col("request_id").str.starts_with("msgbatch_"))
    assert from_batch.height == 5
    price = price_for("claude-haiku-4-5")
    assert price is not None
    batch_cost = price.cost_usd(_usage(from_batch), batch=True)
    realtime_cost = price.cost_usd(_usage(frame.filter(~pl.col("request_id").str.starts_with("msgbatch_"))))
    status = _status(tmp_path / "out")
    assert status["cost_usd"] == pytest.approx(batch_cost + realtime_cost, abs=1e-6)
    # the batch part is what the batch invocation's own summary charged
    assert json.loads(batch.stdout.strip().splitlines()[-1])["cost_usd"] == pytest.approx(
        batch_cost, rel=1e-6
    )
    by_mode = {use["mode"]: use for use in status["prices"]}
    assert (by_mode["batch"]["rows"], by_mode["batch"]["batch_multiplier"]) == (5, 0.5)
    assert (by_mode["realtime"]["rows"], by_mode["realtime"]["batch_multiplier"]) == (3, None)
    assert by_mode["batch"]["cost_usd"] == pytest.approx(batch_cost, abs=1e-6)
    assert "batch (x0.5): $1/$5 per MTok" in status["priced_as"]


def test_status_prices_batch_rows_with_the_prices_their_submission_recorded(tmp_path: Path) -> None:
    """A batch-only output, even without job.json, is priced with the batch_multiplier its intent logged."""
    job = _job(tmp_path, 5, prices={"input": 3.0, "output": 15.0, "batch_multiplier": 0.25})
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as sandbox:
        batch = invoke(
            ["run", str(job), "--base-url", sandbox.base_url, "--mode", "batch", "--wait", "--json"]
        )
        assert batch.exit_code == 0, batch.output
    job.unlink()  # status needs only the output directory
    (tmp_path / "out" / "job.json").unlink()  # and prices batch rows from the batch log alone
    usage = _usage(pl.read_parquet(tmp_path / "out" / "results.parquet"))
    expected = Price("claude-haiku-4-5", input=3.0, output=15.0, batch_multiplier=0.25).cost_usd(
        usage, batch=True
    )
    status = _status(tmp_path / "out")
    assert status["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert json.loads(batch.stdout.strip().splitlines()[-1])["cost_usd"] == pytest.approx(expected, abs=1e-6)
    [used] = status["prices"]
    assert (used["mode"], used["batch_multiplier"], used["source"]) == (
        "batch",
        0.25,
        "the job's [prices] table",
    )


def test_status_shows_pending_batches_without_the_network(tmp_path: Path) -> None:
    """After `run --mode batch` without --wait, status counts the pending batch and its rows, offline."""
    job = _job(tmp_path, 6)
    with running_sandbox(SandboxConfig(batch_processing_s=60.0)) as sandbox:
        submitted = invoke(["run", str(job), "--base-url", sandbox.base_url, "--mode", "batch", "--json"])
        assert submitted.exit_code == 0, submitted.output
        [batch_id] = json.loads(submitted.stdout.strip().splitlines()[-1])["batch"]["pending_batches"]
    # the sandbox is gone: status answers from OUTPUT/.batches alone, with no key
    result = run_subprocess(["status", str(tmp_path / "out"), "--json"], key=None)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["pending_batches"] == {"batches": 1, "rows": 6, "ids": [batch_id]}
    assert status["rows"] == {"total": 0, "ok": 0, "error": 0}
    text = run_subprocess(["status", str(tmp_path / "out")], key=None)
    assert f"pending: 1 batches (6 rows): {batch_id}" in text.stdout
    assert f"pipeline batch collect {tmp_path / 'out'}" in text.stdout


def test_status_of_a_finished_realtime_output_has_nothing_pending(tmp_path: Path) -> None:
    """An output never run in batch mode reports zero pending batches and no pending line."""
    job = _job(tmp_path, 2)
    assert invoke(["run", str(job), "--sandbox"]).exit_code == 0
    assert _status(tmp_path / "out")["pending_batches"] == {"batches": 0, "rows": 0, "ids": []}
    assert "pending" not in invoke(["status", str(tmp_path / "out")]).stdout


def test_status_prices_only_the_latest_realtime_runs_rows_with_its_prices(tmp_path: Path) -> None:
    """Rows of an older request fingerprint keep shipped prices; the latest run's rows get its [prices]."""
    old = _job(tmp_path, 4)
    assert invoke(["run", str(old), "--sandbox"]).exit_code == 0
    new = _job(
        tmp_path, 4, request={"prompt": "Tell me about {topic}."}, prices={"input": 4.0, "output": 20.0}
    )
    assert invoke(["run", str(new), "--sandbox", "--limit", "2"]).exit_code == 0
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet").sort("row_index")
    assert frame["request_fingerprint"].n_unique() == 2
    shipped = price_for("claude-haiku-4-5")
    assert shipped is not None
    expected = Price("claude-haiku-4-5", input=4.0, output=20.0).cost_usd(_usage(frame.head(2)))
    expected += shipped.cost_usd(_usage(frame.tail(2)))
    status = _status(tmp_path / "out")
    assert status["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert sorted((use["input_per_mtok"], use["rows"]) for use in status["prices"]) == [(1.0, 2), (4.0, 2)]
