"""Unattended runs through the real CLI: signals, disk full, the output lock, cron reruns, status, outages."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from jobkit import FAKE_KEY, invoke, run_subprocess, text_job
from pipeline.sandbox import SandboxConfig, running_sandbox


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    return env


def _start(args: list[str], **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _wait_until(predicate: Callable[[], bool], deadline_s: float = 30.0) -> None:
    stop = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < stop, "timed out waiting"
        time.sleep(0.02)


def _results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_lets_requests_in_flight_finish_and_saves_every_paid_answer(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """SIGINT/SIGTERM stop sending, in-flight requests finish, and every answer the server gave is saved."""
    job = text_job(tmp_path, rows=200)
    with running_sandbox(SandboxConfig(latency_ms=800)) as sandbox:
        child = _start(["run", str(job), "--base-url", sandbox.base_url])
        _wait_until(lambda: sandbox.stats()["answers_ok"] >= 4)
        child.send_signal(sig)
        _, stderr = child.communicate(timeout=30)
        answered = sandbox.stats()["answers_ok"]
    assert child.returncode == code
    assert f"stopped by {sig.name}" in stderr
    assert "Traceback" not in stderr
    frame = _results(tmp_path)
    assert frame.height == answered  # nothing paid for was dropped
    assert answered < 200


def test_second_sigint_stops_at_once_without_corrupting_results(tmp_path: Path) -> None:
    """A second Ctrl-C abandons slow requests at once; results.parquet stays whole."""
    job = text_job(tmp_path, rows=30)
    with running_sandbox() as fast:
        assert invoke(["run", str(job), "--base-url", fast.base_url, "--limit", "5"]).exit_code == 0
    with running_sandbox(SandboxConfig(latency_ms=20_000)) as slow:
        child = _start(["run", str(job), "--base-url", slow.base_url])
        _wait_until(lambda: slow.stats()["requests_total"] >= 4)
        child.send_signal(signal.SIGINT)
        time.sleep(0.5)
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=15)
        took = time.monotonic() - started
    assert child.returncode == 130
    assert took < 10  # far inside the 20 s the requests would have taken
    assert "Traceback" not in stderr
    assert _results(tmp_path)["id"].to_list() == [str(i) for i in range(5)]


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_mid_run_is_exit_2_and_earlier_results_survive(tmp_path: Path) -> None:
    """Writes failing mid-run stop it with exit 2; earlier results stay intact and a rerun finishes."""
    job = text_job(tmp_path, rows=300)
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url, "--limit", "10"]).exit_code == 0
        before = _results(tmp_path)
        child = _start(["run", str(job), "--base-url", sandbox.base_url], preexec_fn=_limit_file_size(60_000))
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 2
        assert "pipeline: error: cannot write" in stderr
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) <= 3
        after = _results(tmp_path)  # whole and readable; rows journalled before the failure are in it too
        assert after.filter(pl.col("id").is_in(before["id"].to_list())).equals(before)
        rerun = run_subprocess(["run", str(job), "--base-url", sandbox.base_url])
        assert rerun.returncode == 0, rerun.stderr
    assert sorted(_results(tmp_path)["id"].to_list(), key=int) == [str(i) for i in range(300)]


def test_unwritable_output_directory_is_exit_2(tmp_path: Path) -> None:
    """An output path that cannot be created exits 2 before any request is sent."""
    job = text_job(tmp_path, rows=3)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with running_sandbox() as sandbox:
        result = run_subprocess(
            ["run", str(job), "--base-url", sandbox.base_url, "--output", str(tmp_path / "blocker" / "o")]
        )
        assert sandbox.stats()["requests_total"] == 0
    assert result.returncode == 2
    assert "cannot write to output directory" in result.stderr


def test_second_run_on_same_output_is_refused_then_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    """While a run holds the output another exits 2 naming its pid; after kill -9 the lock is free."""
    job = text_job(tmp_path, rows=100)
    with running_sandbox(SandboxConfig(latency_ms=500)) as sandbox:
        holder = _start(["run", str(job), "--base-url", sandbox.base_url])
        try:
            _wait_until(lambda: sandbox.stats()["requests_total"] >= 1)
            second = run_subprocess(["run", str(job), "--base-url", sandbox.base_url])
            assert second.returncode == 2
            assert f"in use by another run (pid {holder.pid}, started " in second.stderr
        finally:
            holder.kill()
            holder.communicate(timeout=10)
        third = run_subprocess(["run", str(job), "--base-url", sandbox.base_url, "--grace-s", "5"])
        assert third.returncode == 0, third.stderr
    assert _results(tmp_path).height == 100


def test_rerun_after_input_grows_sends_only_new_rows(tmp_path: Path) -> None:
    """A cron rerun over an input that gained rows sends just the new ones."""
    job = text_job(tmp_path, rows=5)
    csv = tmp_path / "input.csv"
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
        with csv.open("a") as handle:
            handle.write("5,topic number 5\n6,topic number 6\n7,topic number 7\n")
        result = invoke(["run", str(job), "--base-url", sandbox.base_url, "--json"])
        assert sandbox.stats()["requests_total"] == 8
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == {"total": 8, "ok": 3, "error": 0, "skipped": 5}
    assert _results(tmp_path).height == 8


REJECT = "REJECT-ME"
REJECTING = SandboxConfig(reject_marker=REJECT)


def _job_with_bad_rows(tmp_path: Path) -> Path:
    """Ten rows, one of which the (REJECTING) sandbox refuses with a 400."""
    job = text_job(tmp_path, rows=10)
    rows = "".join(f"{i},{REJECT if i == 3 else f'topic {i}'}\n" for i in range(10))
    (tmp_path / "input.csv").write_text("id,topic\n" + rows)
    return job


def test_max_error_rate_decides_the_exit_code(tmp_path: Path) -> None:
    """One bad row in ten exits 1 by default and at 5 %, and 0 when 20 % errors are tolerated."""
    job = _job_with_bad_rows(tmp_path)
    with running_sandbox(REJECTING) as sandbox:
        url = ["--base-url", sandbox.base_url]
        assert invoke(["run", str(job), *url]).exit_code == 1
        assert invoke(["run", str(job), *url, "--fresh", "--max-error-rate", "0.05"]).exit_code == 1
        assert invoke(["run", str(job), *url, "--fresh", "--max-error-rate", "0.2"]).exit_code == 0


def test_invalid_requests_are_not_resent_unless_asked(tmp_path: Path) -> None:
    """Rows the API rejected as invalid stay errors on rerun; --retry-errors all sends them again."""
    job = _job_with_bad_rows(tmp_path)
    with running_sandbox(REJECTING) as sandbox:
        url = ["--base-url", sandbox.base_url]
        assert invoke(["run", str(job), *url]).exit_code == 1
        assert invoke(["run", str(job), *url]).exit_code == 0
        assert sandbox.stats()["requests_total"] == 10
        assert invoke(["run", str(job), *url, "--retry-errors", "all"]).exit_code == 1
        assert sandbox.stats()["requests_total"] == 11


def test_status_summarises_an_output_offline(tmp_path: Path) -> None:
    """`pipeline status` reports counts, errors by type with an example, and tokens, offline."""
    job = _job_with_bad_rows(tmp_path)
    with running_sandbox(REJECTING) as sandbox:
        invoke(["run", str(job), "--base-url", sandbox.base_url])
    result = run_subprocess(["status", str(tmp_path / "out"), "--json"], key=None)
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["rows"] == {"total": 10, "ok": 9, "error": 1}
    assert status["errors_by_type"]["invalid_request_error"]["rows"] == 1
    assert "reject_marker" in status["errors_by_type"]["invalid_request_error"]["example"]
    assert status["tokens"]["input_tokens"] > 0
    assert status["running"] is None
    human = run_subprocess(["status", str(tmp_path / "out")], key=None)
    assert "10 rows, 9 ok, 1 error" in human.stdout
    missing = run_subprocess(["status", str(tmp_path / "nothing")], key=None)
    assert missing.returncode == 2


def test_provider_down_makes_bounded_errors_and_rerun_recovers(tmp_path: Path) -> None:
    """A provider failing every request: each row spends its attempts and errors; the rerun finishes them."""
    job = text_job(tmp_path, rows=8)
    job.write_text(job.read_text().replace("max_attempts = 6", "max_attempts = 3"))
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=("529",))) as down:
        result = invoke(["run", str(job), "--base-url", down.base_url])
        sent = down.stats()["requests_total"]
    assert result.exit_code == 1
    frame = _results(tmp_path)
    assert set(frame["error_type"]) == {"overloaded_error"}
    assert set(frame["attempts"]) == {3}
    assert sent == 8 * 3  # bounded: no busy loop
    with running_sandbox() as healthy:
        assert invoke(["run", str(job), "--base-url", healthy.base_url]).exit_code == 0
        assert healthy.stats()["requests_total"] == 8
    assert set(_results(tmp_path)["status"]) == {"ok"}


def test_2000_rows_through_20_percent_faults_and_a_tight_limit(tmp_path: Path) -> None:
    """Through 20 % faults of every kind and a tight limit, 2,000 rows end ok; retries match the server."""
    job = text_job(tmp_path, rows=2000)
    text = job.read_text()
    text = text.replace("concurrency = 4", "concurrency = 16").replace(
        "max_attempts = 6", "max_attempts = 12"
    )
    # a 'slow' fault outlasts the client's timeout many times over, and an ordinary answer never comes
    # near it however busy the machine: each timeout is a fault the sandbox counted (the equality
    # below), never an answer it gave (which would be paid twice)
    text = text.replace("timeout_s = 5", "timeout_s = 4\nrequests_per_minute = 9000")
    job.write_text(text)
    kinds = ("529", "500", "html503", "drop", "slow")
    config = SandboxConfig(fault_rate=0.2, faults=kinds, seed=3, slow_s=60.0, requests_per_minute=9000)
    with running_sandbox(config) as sandbox:
        result = run_subprocess(["run", str(job), "--base-url", sandbox.base_url, "--json"], timeout=240)
        stats = sandbox.stats()
    assert result.returncode == 0, result.stderr[-2000:]
    frame = _results(tmp_path)
    assert frame.height == 2000
    assert set(frame["status"]) == {"ok"}
    assert set(stats["faults"]) == set(kinds)
    retries = int((frame["attempts"] - 1).sum())
    assert retries == sum(stats["faults"].values()) + stats["rate_limited"]
    assert json.loads(result.stdout)["retries"] == retries
    assert max(stats["ok_by_request"].values()) == 1  # no row paid twice


def test_fake_key_never_reaches_outputs_logs_or_errors(tmp_path: Path) -> None:
    """A failing, retrying, verbose run never prints or stores the API key anywhere."""
    job = text_job(tmp_path, rows=12)
    job.write_text(job.read_text().replace("max_attempts = 6", "max_attempts = 2"))
    config = SandboxConfig(fault_rate=0.6, faults=("529", "500", "html503", "drop"), seed=11)
    with running_sandbox(config) as sandbox:
        result = run_subprocess(["run", str(job), "--base-url", sandbox.base_url, "-vv", "--json"])
    assert result.returncode == 1  # some rows ran out of attempts: error messages were written
    seen = result.stdout + result.stderr
    assert FAKE_KEY not in seen
    assert FAKE_KEY[-12:] not in seen
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert FAKE_KEY.encode() not in path.read_bytes(), path
    status = run_subprocess(["status", str(tmp_path / "out")], key=None)
    assert FAKE_KEY not in status.stdout + status.stderr


def test_changing_only_limits_invalidates_nothing(tmp_path: Path) -> None:
    """A rerun after editing [limits] (concurrency, rates, attempts) sends nothing."""
    job = text_job(tmp_path, rows=6)
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
        text = job.read_text().replace("concurrency = 4", "concurrency = 2\nrequests_per_minute = 500")
        job.write_text(text.replace("max_attempts = 6", "max_attempts = 3"))
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
        assert sandbox.stats()["requests_total"] == 6
