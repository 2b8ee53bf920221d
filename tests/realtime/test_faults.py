"""Faults end to end: every fault kind is retried to success, 429 storms pause, kills lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from jobkit import FAKE_KEY, invoke, run_subprocess, text_job
from pipeline.results.store import ResultStore
from pipeline.sandbox import SandboxConfig, running_sandbox


@pytest.mark.parametrize("kind", ["529", "500", "html503", "drop", "slow", "stream_error"])
def test_each_fault_kind_is_retried_to_success(tmp_path: Path, kind: str) -> None:
    """With 30 % faults of one kind, every row still ends ok and the retries match the faults served."""
    job = text_job(tmp_path, rows=20, stream=kind == "stream_error")
    # which row draws which fault can follow arrival order: 12 attempts, so that no row runs out
    # (with 6, a row faulting six times in a row came to about 1.5 % of runs: 0.3**6 x 20 rows)
    text = job.read_text().replace("timeout_s = 5", "timeout_s = 1")
    job.write_text(text.replace("max_attempts = 6", "max_attempts = 12"))
    config = SandboxConfig(fault_rate=0.3, faults=(kind,), seed=7, slow_s=3.0)
    with running_sandbox(config) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        stats = sandbox.stats()
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["status"]) == {"ok"}
    faults = stats["faults"].get(kind, 0)
    assert faults > 0
    assert int((frame["attempts"] - 1).sum()) == faults
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["retries"] == faults


def test_429_storm_is_ridden_out(tmp_path: Path) -> None:
    """An unstated server limit far below the job's pace yields 429s, all retried; every row ends ok."""
    job = text_job(tmp_path, rows=16)
    # stated limits would be followed from the first answer on, with no 429 to ride out
    with running_sandbox(SandboxConfig(requests_per_minute=240, ratelimit_headers=False)) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        stats = sandbox.stats()
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["status"]) == {"ok"}
    assert stats["rate_limited"] > 0
    assert int((frame["attempts"] - 1).sum()) == stats["rate_limited"]


def test_a_429_pauses_every_worker_until_retry_after(tmp_path: Path) -> None:
    """After a 429 asking for N seconds, no worker sends anything new until those seconds pass."""
    job = text_job(tmp_path, rows=8)
    job.write_text(job.read_text().replace("concurrency = 4", "concurrency = 8"))
    with running_sandbox(SandboxConfig(requests_per_minute=60)) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert result.exit_code == 0, result.output
    throttles = stats["throttles"]
    assert throttles, "the sandbox never throttled: the test proves nothing"
    slack = 0.05  # requests already on the wire when the 429 left may still land just after it
    for at, wait in throttles:
        inside = [t for t in stats["arrivals"] if at + slack < t < at + wait - slack]
        assert not inside, f"requests arrived {inside} during the {wait}s pause that began at {at}"


def test_spend_limit_stops_the_run_with_exit_2(tmp_path: Path) -> None:
    """The spend-cap 429 is never retried: the run stops, exit 2, and answers so far are kept."""
    job = text_job(tmp_path, rows=30)
    with running_sandbox(SandboxConfig(spend_limit_after=5)) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
    assert result.exit_code == 2
    assert "spend" in result.output.lower()
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame.filter(pl.col("status") == "ok").height == 5


def _wait_for_answers(sandbox: object, count: int, deadline_s: float = 30.0) -> None:
    stop = time.monotonic() + deadline_s
    while sandbox.stats()["answers_ok"] < count:  # type: ignore[attr-defined]
        assert time.monotonic() < stop, "the run made no progress"
        time.sleep(0.02)


@pytest.mark.parametrize("kill_after", random.Random(2026).sample(range(3, 70), 3))
def test_kill_9_then_rerun_loses_nothing_and_resends_no_ok_row(tmp_path: Path, kill_after: int) -> None:
    """kill -9 at a random point, rerun: every row once, nothing ok resent, only in-flight paid twice."""
    job = text_job(tmp_path, rows=80)
    job.write_text(job.read_text().replace("concurrency = 4", "concurrency = 16"))
    config = SandboxConfig(latency_ms=120, jitter_ms=60, seed=kill_after)
    with running_sandbox(config) as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        env["ANTHROPIC_API_KEY"] = FAKE_KEY
        child = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", sandbox.base_url],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for_answers(sandbox, kill_after)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        store = ResultStore(tmp_path / "out")
        store.compact()
        saved = pl.read_parquet(store.results_path)
        saved_ok = set(saved.filter(pl.col("status") == "ok")["row_id"])
        sent_before = sandbox.stats()["requests_total"]
        rerun = run_subprocess(["run", str(job), "--base-url", sandbox.base_url])
        assert rerun.returncode == 0, rerun.stderr
        stats = sandbox.stats()
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(frame["id"].to_list(), key=int) == [str(i) for i in range(80)]
    assert set(frame["status"]) == {"ok"}
    assert stats["requests_total"] - sent_before == 80 - len(saved_ok)  # no ok row was sent again
    paid = stats["ok_by_request"]
    assert len(paid) == 80
    paid_twice = sum(1 for count in paid.values() if count > 1)
    assert max(paid.values()) <= 2
    assert paid_twice <= 16  # only requests in flight at the kill (concurrency 16) were paid twice
