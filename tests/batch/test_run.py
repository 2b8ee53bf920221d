"""Batch mode through the real CLI against the loopback sandbox: submit, split, resume, orphans, cancel."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from jobkit import FAKE_KEY, image_bytes, invoke, write_job
from pipeline.batch.options import BatchOptions
from pipeline.batch.run import run_batch
from pipeline.batch.state import BatchLog, custom_id_for, read_rows
from pipeline.catalog.prices import price_for
from pipeline.errors import SpecError
from pipeline.job.spec import load_job
from pipeline.records import Usage
from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
FAST_POLL = {"poll_interval_s": 0.1, "max_poll_interval_s": 0.2}


def batch_job(
    directory: Path,
    rows: int = 10,
    *,
    ids: list[str] | None = None,
    texts: list[str] | None = None,
    batch: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
) -> Path:
    """A text job over a generated CSV, writing to directory/out, with a [batch] table polling fast."""
    ids = ids if ids is not None else [str(i) for i in range(rows)]
    texts = texts if texts is not None else [f"topic number {i}" for i in range(len(ids))]
    frame = pl.DataFrame({"id": ids, "topic": texts})
    frame.write_csv(directory / "input.csv")
    sections: dict[str, Any] = {
        "input": "input.csv",
        "output": "out",
        "id_column": "id",
        "batch": {**FAST_POLL, **(batch or {})},
        "request": {"model": "claude-haiku-4-5", "max_tokens": 64, "prompt": "Say something about {topic}."},
        "limits": {"max_attempts": 3, "timeout_s": 10},
    }
    if api is not None:
        sections["api"] = api
    return write_job(directory, name="batchjob", **sections)


def results(directory: Path) -> pl.DataFrame:
    """The output's results.parquet."""
    return pl.read_parquet(directory / "out" / "results.parquet")


def batch_stats(sandbox: SandboxHandle) -> dict[str, Any]:
    """The sandbox's batch statistics."""
    stats: dict[str, Any] = sandbox.stats()["batches"]
    return stats


def run(job: Path, sandbox: SandboxHandle, *extra: str) -> Any:
    """``pipeline run JOB --mode batch`` against the sandbox, in-process."""
    return invoke(["run", str(job), "--mode", "batch", "--base-url", sandbox.base_url, *extra])


def wait_until(predicate: Callable[[], bool], deadline_s: float = 30.0) -> None:
    """Poll ``predicate`` until it holds."""
    stop = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < stop, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture
def sandbox() -> Iterator[SandboxHandle]:
    """A sandbox whose batches end after 0.3 s."""
    with running_sandbox(SandboxConfig(batch_processing_s=0.3)) as handle:
        yield handle


def test_full_batch_run_writes_the_realtime_schema_with_reported_usage(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    """--wait submits a batch, collects it, and writes every row ok with the usage its result line reports."""
    job = batch_job(tmp_path, rows=12)
    result = run(job, sandbox, "--wait", "--json")
    assert result.exit_code == 0, result.output
    frame = results(tmp_path)
    assert frame.height == 12
    assert set(frame["status"]) == {"ok"}
    assert frame["response_text"].str.starts_with("[sandbox] reply").all()
    assert frame["request_id"].str.starts_with("msgbatch_").all()  # the batch id, for support
    assert frame["attempts"].to_list() == [1] * 12
    stats = batch_stats(sandbox)
    assert stats["created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1
    # the same schema as a realtime run of the same job
    realtime = invoke(["run", str(job), "--base-url", sandbox.base_url, "--output", str(tmp_path / "rt")])
    assert realtime.exit_code == 0
    assert pl.read_parquet(tmp_path / "rt" / "results.parquet").schema == frame.schema
    # cost at batch prices from exactly the reported usage
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    usage = Usage(int(frame["input_tokens"].sum()), int(frame["output_tokens"].sum()))
    assert summary["tokens"]["input"] == usage.input_tokens
    price = price_for("claude-haiku-4-5")
    assert price is not None
    assert summary["cost_usd"] == pytest.approx(price.cost_usd(usage, batch=True), abs=1e-6)
    assert "batch prices" in summary["priced_as"]
    assert summary["batch"]["pending_batches"] == []


def test_mode_from_the_job_file(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """`mode = "batch"` in [api] makes a plain `pipeline run` use the Batches API."""
    job = batch_job(tmp_path, rows=3, api={"mode": "batch"})
    result = invoke(["run", str(job), "--base-url", sandbox.base_url, "--wait"])
    assert result.exit_code == 0, result.output
    assert batch_stats(sandbox)["created"] == 1
    assert sandbox.stats()["answers_ok"] == 0  # nothing went to /v1/messages
    assert results(tmp_path).height == 3


def test_lowered_limits_split_the_rows_into_several_batches(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """max_requests and max_bytes split the rows; each body is measured, and within the byte limit."""
    job = batch_job(tmp_path, rows=10, batch={"max_requests": 4})
    assert run(job, sandbox, "--wait").exit_code == 0
    assert batch_stats(sandbox)["created"] == 3  # 4 + 4 + 2
    assert results(tmp_path).height == 10

    other = tmp_path / "bytes"
    other.mkdir()
    texts = [f"topic number {i} " + "x" * 3000 for i in range(10)]  # about 3.1 kB an item: 3 per batch
    job = batch_job(other, rows=10, texts=texts, batch={"max_bytes": 10_000})
    before = batch_stats(sandbox)["created"]
    assert run(job, sandbox, "--wait").exit_code == 0
    stats = batch_stats(sandbox)
    sizes = stats["body_sizes"][before:]
    assert len(sizes) == 4  # 3 + 3 + 3 + 1
    assert all(size <= 10_000 for size in sizes)
    log = [json.loads(line) for line in (other / "out" / ".batches" / "log.jsonl").read_text().splitlines()]
    assert [r["bytes"] for r in log if r["event"] == "intent"] == sizes  # measured, not guessed
    assert pl.read_parquet(other / "out" / "results.parquet").height == 10


def test_without_wait_submits_exits_zero_and_the_next_invocation_collects(tmp_path: Path) -> None:
    """No --wait: submit and exit 0 saying what is pending; reruns never resubmit it; collect picks it up."""
    job = batch_job(tmp_path, rows=8)
    # processing outlasts any slow machine; the test ends the batch itself when it is ready
    with running_sandbox(SandboxConfig(batch_processing_s=3600.0)) as sandbox:
        first = run(job, sandbox)
        assert first.exit_code == 0, first.output
        assert "pending: 1 batches (8 rows)" in first.stderr
        again = run(job, sandbox)  # still processing: nothing new is submitted
        assert again.exit_code == 0
        assert "pending: 1 batches (8 rows)" in again.stderr
        assert batch_stats(sandbox)["created"] == 1
        status = invoke(["batch", "status", str(tmp_path / "out"), "--json"])
        assert status.exit_code == 0
        [entry] = json.loads(status.stdout)["batches"]
        assert entry["processing_status"] == "in_progress"
        assert entry["request_counts"]["processing"] == 8
        assert sandbox.finish_batches() == 1
        collected = invoke(["batch", "collect", str(tmp_path / "out")])
        assert collected.exit_code == 0, collected.output
        assert "1 collected; nothing pending" in collected.stderr
        assert results(tmp_path).height == 8
        rerun = run(job, sandbox)
        assert rerun.exit_code == 0
        assert "0 submitted (0 rows)" in rerun.stderr
        assert batch_stats(sandbox)["created"] == 1
        assert batch_stats(sandbox)["max_submissions_per_custom_id"] == 1
    log_text = (tmp_path / "out" / ".batches" / "log.jsonl").read_text()
    assert FAKE_KEY not in log_text + first.output + collected.output


def test_kill_between_submit_and_collect_then_rerun_collects_without_resubmitting(tmp_path: Path) -> None:
    """kill -9 while waiting on a batch; the rerun collects that batch and submits nothing again."""
    job = batch_job(tmp_path, rows=20)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    with running_sandbox(SandboxConfig(batch_processing_s=2.0)) as sandbox:
        args = [sys.executable, "-m", "pipeline", "run", str(job), "--mode", "batch", "--wait"]
        log = (tmp_path / "child.log").open("w")
        child = subprocess.Popen(
            [*args, "--base-url", sandbox.base_url], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            wait_until(lambda: batch_stats(sandbox)["created"] >= 1 or child.poll() is not None)
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            time.sleep(0.2)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            log.close()
        assert not (tmp_path / "out" / "results.parquet").exists() or results(tmp_path).height == 0
        rerun = run(job, sandbox, "--wait")
        assert rerun.exit_code == 0, rerun.output
        stats = batch_stats(sandbox)
    assert stats["created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1
    assert results(tmp_path).height == 20
    assert set(results(tmp_path)["status"]) == {"ok"}


def _forget_batch_ids(output: Path) -> None:
    """Drop the `submitted` events, as if the run died between the create POST and saving its answer."""
    path = output / ".batches" / "log.jsonl"
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["event"] != "submitted"]
    path.write_text("\n".join(kept) + "\n")


def test_orphan_batch_is_found_by_listing_and_adopted(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """A batch whose id was never saved is adopted by listing (same request count, made after its intent)."""
    job = batch_job(tmp_path, rows=6)
    assert run(job, sandbox).exit_code == 0
    _forget_batch_ids(tmp_path / "out")
    status = invoke(["batch", "status", str(tmp_path / "out"), "--offline"])
    assert "unconfirmed" in status.stdout
    rerun = run(job, sandbox, "--wait")
    assert rerun.exit_code == 0, rerun.output
    assert "adopted msgbatch_" in rerun.stderr
    stats = batch_stats(sandbox)
    assert stats["created"] == 1
    assert results(tmp_path).height == 6
    [sub] = BatchLog(tmp_path / "out").submissions()
    assert sub.adopted
    assert sub.batch_id == stats["ids"][0]


@pytest.mark.parametrize(("grace", "resubmitted"), [(0.0, True), (3600.0, False)])
def test_unconfirmed_intent_with_no_batch_waits_for_the_grace_period(
    tmp_path: Path, grace: float, resubmitted: bool
) -> None:
    """An intent no listed batch matches keeps its rows pending until orphan_grace_s, then resends them."""
    job = batch_job(tmp_path, rows=5, batch={"orphan_grace_s": grace})
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as first:
        assert run(job, first).exit_code == 0
    _forget_batch_ids(tmp_path / "out")
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as second:  # knows no batch at all
        rerun = run(job, second, *(["--wait"] if resubmitted else []))
        assert rerun.exit_code == 0, rerun.output
        created = batch_stats(second)["created"]
    if resubmitted:
        assert "made no batch" in rerun.stderr
        assert created == 1
        assert results(tmp_path).height == 5
    else:
        assert "unconfirmed" in rerun.stderr
        assert created == 0


def test_errored_and_expired_results_are_resubmitted_once_and_invalid_ones_are_not(tmp_path: Path) -> None:
    """Retryable errored and expired rows go out again on the next invocation, bounded by max_attempts."""
    texts = [f"topic number {i}" for i in range(30)]
    texts[3] = "REJECT-ME please"
    job = batch_job(tmp_path, texts=texts, ids=[f"r{i}" for i in range(30)], batch={"max_attempts": 2})
    config = SandboxConfig(
        batch_processing_s=0.1,
        batch_errored_rate=0.2,
        batch_expired_rate=0.2,
        seed=7,
        reject_marker="REJECT-ME",
    )
    with running_sandbox(config) as sandbox:
        assert run(job, sandbox).exit_code == 0
        time.sleep(0.3)
        second = run(job, sandbox)  # collects the first batch and resubmits what may be retried
        first_pass = results(tmp_path)
        failed = first_pass.filter(pl.col("status") == "error")
        retryable = set(failed.filter(pl.col("error_type") != "invalid_request_error")["row_id"])
        assert {"api_error", "expired"} <= set(failed["error_type"])
        assert set(failed.filter(pl.col("error_type") == "invalid_request_error")["row_id"]) == {"r3"}
        assert "in batch msgbatch_" in failed["error_message"][0]
        assert set(failed["attempts"]) == {1}
        assert "pending: 1 batches" in second.stderr
        time.sleep(0.3)
        third = run(job, sandbox)
        stats = batch_stats(sandbox)
        fourth = run(job, sandbox)  # nothing left to send: the rest used their two attempts
        assert batch_stats(sandbox)["created"] == 2
    submitted = stats["submitted_by_custom_id"]
    assert {cid for cid, n in submitted.items() if n == 2} == retryable
    assert max(submitted.values()) == 2
    final = results(tmp_path)
    assert final.height == 30
    again = final.filter(pl.col("row_id").is_in(list(retryable)))
    assert set(again["attempts"]) == {2}
    assert final.filter(pl.col("row_id") == "r3")["error_type"].item() == "invalid_request_error"
    assert third.exit_code == 1  # error rows that will not be sent again
    assert fourth.exit_code == 0  # nothing was collected or sent this time


def test_cancel_stops_pending_batches_and_canceled_rows_are_submitted_again(tmp_path: Path) -> None:
    """batch cancel stops a pending batch; collect writes no canceled row; a rerun submits those again."""
    job = batch_job(tmp_path, rows=6)
    with running_sandbox(SandboxConfig(batch_processing_s=60.0)) as sandbox:
        assert run(job, sandbox).exit_code == 0
        canceled = invoke(["batch", "cancel", str(tmp_path / "out")])
        assert canceled.exit_code == 0, canceled.output
        assert "canceling (6 requests)" in canceled.stderr
        time.sleep(0.3)
        collected = invoke(["batch", "collect", str(tmp_path / "out"), "--json"])
        assert collected.exit_code == 0, collected.output
        assert json.loads(collected.stdout)["batch"]["pending_batches"] == []
        assert not (tmp_path / "out" / "results.parquet").exists() or results(tmp_path).height == 0
        rerun = run(job, sandbox)
        assert "1 submitted (6 rows)" in rerun.stderr
        assert batch_stats(sandbox)["created"] == 2
        assert batch_stats(sandbox)["cancels"] == 1


def test_row_ids_that_do_not_fit_custom_id_are_mapped_and_the_mapping_is_stored(
    tmp_path: Path, sandbox: SandboxHandle
) -> None:
    """Ids with spaces, slashes, unicode or over 64 characters map to valid custom_ids and back to rows."""
    ids = ["plain_id", "with space", "doi:10.1000/xyz", "é-unicode", "x" * 80, "h_clash", "7"]
    job = batch_job(tmp_path, ids=ids)
    assert run(job, sandbox, "--wait").exit_code == 0
    frame = results(tmp_path)
    assert sorted(frame["row_id"]) == sorted(ids)
    assert set(frame["status"]) == {"ok"}
    sent = batch_stats(sandbox)["submitted_by_custom_id"]
    assert all(CUSTOM_ID.match(cid) for cid in sent)
    assert {"plain_id", "h_clash", "7"} <= set(sent)  # ids that fit are kept as they are
    [sub] = BatchLog(tmp_path / "out").submissions()
    mapping = read_rows(BatchLog(tmp_path / "out").rows_path(sub.key), ["custom_id", "row_id"]).to_pylist()
    assert {m["row_id"] for m in mapping} == set(ids)
    assert {m["custom_id"] for m in mapping} == set(sent)


def test_custom_id_mapping_is_unique_even_when_an_id_looks_like_a_hash() -> None:
    """custom_id_for keeps fitting ids, hashes the rest, and never hands out one id twice in a batch."""
    used: set[str] = set()
    first = custom_id_for("a b", 0, used)
    used.add(first)
    assert first.startswith("h_")
    assert CUSTOM_ID.match(first)
    clash = custom_id_for(first, 1, used)  # a natural id equal to another row's hash
    assert clash != first
    assert CUSTOM_ID.match(clash)
    assert custom_id_for("ok-id_1", 2, used) == "ok-id_1"
    assert CUSTOM_ID.match(custom_id_for("y" * 200, 3, used))


def test_provider_without_message_batches_is_refused_up_front(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """--mode batch with AI/ML API stops with one line naming the provider, before any request."""
    job = batch_job(tmp_path, rows=2, api={"provider": "aimlapi"})
    result = invoke(
        ["run", str(job), "--mode", "batch", "--base-url", sandbox.base_url], env={"AIMLAPI_API_KEY": "k"}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("pipeline: error: --mode batch: provider 'aimlapi'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert batch_stats(sandbox)["created"] == 0
    assert sandbox.stats()["requests_total"] == 0


def test_wait_without_batch_mode_is_an_error(tmp_path: Path) -> None:
    """--wait on a realtime run is a one-line usage error."""
    job = batch_job(tmp_path, rows=2)
    result = invoke(["run", str(job), "--wait", "--sandbox"])
    assert result.exit_code == 2
    assert "--wait applies to --mode batch" in result.stderr


def test_sandbox_flag_waits_for_the_in_process_sandbox(tmp_path: Path) -> None:
    """--sandbox --mode batch waits by itself, since the built-in sandbox ends with the command."""
    job = batch_job(tmp_path, rows=4)
    result = invoke(["run", str(job), "--mode", "batch", "--sandbox"])
    assert result.exit_code == 0, result.output
    assert results(tmp_path).height == 4
    assert "nothing pending" in result.stderr


def test_realtime_run_is_refused_while_batches_are_pending(tmp_path: Path) -> None:
    """A realtime run over an output with pending batches stops with one line instead of paying twice."""
    job = batch_job(tmp_path, rows=3)
    with running_sandbox(SandboxConfig(batch_processing_s=60.0)) as sandbox:
        assert run(job, sandbox).exit_code == 0
        realtime = invoke(["run", str(job), "--base-url", sandbox.base_url])
        assert realtime.exit_code == 2
        assert "has 1 pending batches" in realtime.stderr
        assert sandbox.stats()["requests_total"] == 0


def test_sigterm_while_waiting_exits_143_and_keeps_the_batch_pending(tmp_path: Path) -> None:
    """SIGTERM during --wait stops waiting at once (exit 143); the batch stays recorded to collect later."""
    job = batch_job(tmp_path, rows=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["ANTHROPIC_API_KEY"] = FAKE_KEY
    # the batch never ends on its own (the test ends it), so a slow machine cannot let it finish first
    with running_sandbox(SandboxConfig(batch_processing_s=3600)) as sandbox:
        args = [sys.executable, "-m", "pipeline", "run", str(job), "--mode", "batch", "--wait"]
        child = subprocess.Popen(
            [*args, "--base-url", sandbox.base_url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: batch_stats(sandbox)["created"] >= 1, deadline_s=120)
            time.sleep(0.3)
            child.send_signal(signal.SIGTERM)
            _, stderr = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 143
        assert "stopped by SIGTERM" in stderr
        assert "Traceback" not in stderr
        assert sandbox.finish_batches() == 1  # still pending after the signal: nothing collected it
        collected = invoke(["batch", "collect", str(tmp_path / "out")])
        assert collected.exit_code == 0, collected.output
        assert batch_stats(sandbox)["created"] == 1
    assert results(tmp_path).height == 4


def test_forced_tool_job_gets_the_same_typed_columns_as_realtime(tmp_path: Path) -> None:
    """The shipped annotation job (images, structured output) writes the realtime schema in batch mode too."""
    job = Path(__file__).resolve().parents[2] / "jobs" / "annotate_products.toml"
    batch = invoke(
        ["run", str(job), "--sandbox", "--mode", "batch", "--limit", "4", "--output", str(tmp_path / "b")]
    )
    assert batch.exit_code == 0, batch.output
    realtime = invoke(["run", str(job), "--sandbox", "--limit", "4", "--output", str(tmp_path / "r")])
    assert realtime.exit_code == 0, realtime.output
    in_batch = pl.read_parquet(tmp_path / "b" / "results.parquet")
    in_realtime = pl.read_parquet(tmp_path / "r" / "results.parquet")
    assert in_batch.schema == in_realtime.schema
    assert any(name.startswith("out_") for name in in_batch.columns)
    assert in_batch.height == in_realtime.height
    assert set(in_batch["status"]) == {"ok"}
    # the same request gets the same structured answer from the sandbox, whichever way it was sent
    typed = [name for name in in_batch.columns if name.startswith("out_")]
    assert typed == ["out_category", "out_has_text", "out_dominant_colour"]
    assert in_batch.sort("row_id").select(typed).equals(in_realtime.sort("row_id").select(typed))
    assert in_batch["out_category"].null_count() == 0


def test_rows_that_cannot_be_built_are_errors_without_a_request_and_stay_out_of_later_passes(
    tmp_path: Path,
) -> None:
    """A missing image is an image_error row (attempts 0) that no batch holds, even across --wait passes."""
    (tmp_path / "a.png").write_bytes(image_bytes("PNG"))
    frame = pl.DataFrame({"id": ["1", "2", "3", "4"], "topic": ["a", "b", "c", "d"]})
    frame = frame.with_columns(img=pl.Series(["a.png", "a.png", "missing.png", "a.png"]))
    frame.write_csv(tmp_path / "input.csv")
    job = write_job(
        tmp_path,
        name="images",
        input="input.csv",
        output="out",
        id_column="id",
        batch={**FAST_POLL, "max_attempts": 4},
        request={
            "model": "claude-haiku-4-5",
            "max_tokens": 32,
            "prompt": "Describe {topic}.",
            "images": ["img"],
        },
    )
    with running_sandbox(SandboxConfig(batch_processing_s=0.1, batch_errored_rate=0.5, seed=5)) as sandbox:
        result = run(job, sandbox, "--wait")
        stats = batch_stats(sandbox)
    assert result.exit_code == 1  # the image row stays an error
    assert stats["created"] >= 2  # errored results made a second pass
    assert "3" not in stats["submitted_by_custom_id"]
    out = results(tmp_path)
    assert out.height == 4
    bad = out.filter(pl.col("row_id") == "3")
    assert bad["error_type"].item() == "image_error"
    assert bad["attempts"].item() == 0
    assert set(out.filter(pl.col("row_id") != "3")["status"]) == {"ok"}
    assert len(list((tmp_path / "out" / ".journal").glob("*.arrows"))) == 0


def test_batch_table_is_checked_and_never_changes_the_fingerprint(tmp_path: Path) -> None:
    """[batch] rejects unknown keys and values over the API's caps, and leaves the fingerprint alone."""
    plain = load_job(batch_job(tmp_path, rows=1))
    tuned = load_job(
        batch_job(tmp_path, rows=1, batch={"max_requests": 7, "max_attempts": 5}, api={"mode": "batch"})
    )
    assert tuned.batch.max_requests == 7
    assert tuned.api.mode == "batch"
    assert tuned.request.fingerprint() == plain.request.fingerprint()
    for bad, fragment in (
        ({"max_requests": 100_001}, "batch.max_requests"),
        ({"max_bytes": 300_000_000}, "batch.max_bytes"),
        ({"max_attempt": 2}, "unknown key 'batch.max_attempt'"),
    ):
        with pytest.raises(SpecError, match=re.escape(fragment)):
            load_job(batch_job(tmp_path, rows=1, batch=bad))


class _LoseCreateAnswer(httpx.AsyncBaseTransport):
    """Passes requests on, but loses the answer to the first create after the server made the batch."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/messages/batches" and not self.lost:
            await response.aclose()
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_create_whose_answer_is_lost_is_not_resent_and_is_adopted_next_time(tmp_path: Path) -> None:
    """A create that timed out after the server made the batch is never sent again; the next run adopts it."""
    job = batch_job(tmp_path, rows=5)
    spec = load_job(job)
    with running_sandbox(SandboxConfig(batch_processing_s=0.1)) as sandbox:
        options = BatchOptions(sandbox.base_url, FAKE_KEY, tmp_path / "out", input=spec.input, wait=True)
        outcome = await run_batch(spec, options, transport=_LoseCreateAnswer())
        assert any("a batch may have been created" in note for note in outcome.notes)
        assert batch_stats(sandbox)["created"] == 1
        [sub] = BatchLog(tmp_path / "out").submissions()
        assert sub.phase == "unconfirmed"
        rerun = await run_batch(spec, options)
        assert any(note.startswith("adopted msgbatch_") for note in rerun.notes)
        assert batch_stats(sandbox)["created"] == 1
        assert batch_stats(sandbox)["max_submissions_per_custom_id"] == 1
    assert rerun.summary.rows_ok == 5
    assert results(tmp_path).height == 5


def test_report_of_a_batch_output_finds_the_image_columns(tmp_path: Path, sandbox: SandboxHandle) -> None:
    """A batch run records its job like a realtime run, so `pipeline report` shows its images."""
    (tmp_path / "photos").mkdir()
    for i in range(3):
        (tmp_path / "photos" / f"p{i}.png").write_bytes(image_bytes("PNG", size=(64 + i, 48)))
    pl.DataFrame({"id": ["a", "b", "c"], "pic": [f"photos/p{i}.png" for i in range(3)]}).write_csv(
        tmp_path / "input.csv"
    )
    job = write_job(
        tmp_path,
        name="batchpics",
        input="input.csv",
        output="out",
        id_column="id",
        batch=FAST_POLL,
        request={"model": "claude-haiku-4-5", "max_tokens": 32, "prompt": "Describe.", "images": ["pic"]},
    )
    assert run(job, sandbox, "--wait").exit_code == 0
    shown = invoke(["report", str(tmp_path / "out")])
    assert shown.exit_code == 0, shown.output
    assert "3 thumbnails" in shown.output
