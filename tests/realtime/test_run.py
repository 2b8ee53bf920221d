"""The realtime engine through its seam, ``run_job(..., transport=...)``, against a scripted fake API.

No sandbox and no thread: every request goes to a ``ScriptedApi`` in the test's own event loop, and
the results are read back from the real ``results.parquet`` the run leaves.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from jobkit import FAKE_KEY, text_job
from pipeline.job.spec import JobSpec, load_job
from pipeline.realtime.run import RunOptions, RunOutcome, run_job
from scripted import ScriptedApi, api_error, message, reply, sse_lines

BASE = "http://api.test"


def job(tmp_path: Path, rows: int, **request: Any) -> JobSpec:
    """A text job over ``rows`` generated rows, one request at a time (so the script's order holds)."""
    spec = load_job(text_job(tmp_path, rows=rows, **request))
    return spec.model_copy(update={"limits": spec.limits.model_copy(update={"concurrency": 1})})


def options(spec: JobSpec) -> RunOptions:
    return RunOptions(
        base_url=BASE, api_key=FAKE_KEY, input=spec.input, output=Path(spec.output), progress=False
    )


def results(spec: JobSpec) -> pl.DataFrame:
    return pl.read_parquet(Path(spec.output) / "results.parquet").sort("row_index")


def prompts(api: ScriptedApi) -> list[str]:
    """The prompt text of every request the fake received."""
    return [body["messages"][0]["content"][-1]["text"] for body in api.bodies()]


async def test_a_429_is_retried_after_its_retry_after_and_the_row_ends_ok(tmp_path: Path) -> None:
    """429 then 200: one row, two requests, one retry, the row ok with attempts 2."""
    spec = job(tmp_path, rows=1)
    api = ScriptedApi(api_error(429, "rate_limit_error", retry_after_ms="20"), reply())
    outcome = await run_job(spec, options(spec), transport=api.transport)
    assert outcome.fatal is None
    assert (outcome.summary.rows_ok, outcome.summary.requests_sent, outcome.summary.retries) == (1, 2, 1)
    row = results(spec).row(0, named=True)
    assert (row["status"], row["attempts"], row["response_text"]) == ("ok", 2, "ok")
    assert [r.headers["x-api-key"] for r in api.requests] == [FAKE_KEY, FAKE_KEY]


async def test_a_401_stops_the_run_after_one_request_and_sends_nothing_more(tmp_path: Path) -> None:
    """A bad key is fatal: the run stops with the error, no row is recorded, and the key is not echoed."""
    spec = job(tmp_path, rows=5)
    api = ScriptedApi(api_error(401, "authentication_error", f"invalid x-api-key {FAKE_KEY}"))
    outcome: RunOutcome = await run_job(spec, options(spec), transport=api.transport)
    assert outcome.fatal is not None
    assert (outcome.fatal.status, outcome.fatal.error_type) == (401, "authentication_error")
    assert FAKE_KEY not in str(outcome.fatal)
    # no limits are stated and nothing answered yet: the slow start let exactly one request out
    assert len(api.requests) == 1
    assert results(spec).height == 0


async def test_a_stream_torn_before_message_stop_is_sent_again(tmp_path: Path) -> None:
    """A streamed reply that ends before message_stop is a retryable connection error, not an answer."""
    spec = job(tmp_path, rows=1, stream=True)
    start = {"type": "message_start", "message": {**message(), "content": [], "usage": {"input_tokens": 9}}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "whole"}}
    end = [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    head = [("message_start", start), ("content_block_start", block), ("content_block_delta", delta)]
    sse = {"content-type": "text/event-stream"}
    torn = httpx.Response(200, text=sse_lines(*head), headers=sse)
    whole = httpx.Response(200, text=sse_lines(*head, *end), headers=sse)
    api = ScriptedApi(torn, whole)
    outcome = await run_job(spec, options(spec), transport=api.transport)
    assert [body.get("stream") for body in api.bodies()] == [True, True]
    assert outcome.summary.retries == 1
    row = results(spec).row(0, named=True)
    assert (row["status"], row["response_text"], row["attempts"], row["output_tokens"]) == (
        "ok",
        "whole",
        2,
        2,
    )


# The child run: the job against a fake that kills the process when request KILL_ON arrives. A fresh
# interpreter, not a fork: a fork of the test process could inherit locks held by its other threads.
CHILD = """
import asyncio, json, os, signal, sys
from pathlib import Path
import httpx
from pipeline.job.spec import load_job
from pipeline.realtime.run import RunOptions, run_job
from scripted import ScriptedApi, message

job_file, kill_on, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = load_job(Path(job_file))
spec = spec.model_copy(update={"limits": spec.limits.model_copy(update={"concurrency": 1})})

async def answer(request):
    # a little latency: the run's loop turns over, so what it recorded reaches the journal
    await asyncio.sleep(0.02)
    if len(api.requests) == kill_on:
        os.kill(os.getpid(), signal.SIGKILL)  # this request is in flight: answered, never journalled
    prompt = json.loads(request.content)["messages"][0]["content"][0]["text"]
    return httpx.Response(200, json=message(prompt))

api = ScriptedApi(answer)
options = RunOptions(base_url="http://api.test", api_key=key, input=spec.input, output=Path(spec.output),
                     progress=False)
asyncio.run(run_job(spec, options, transport=api.transport))
"""


def test_a_kill_between_journal_writes_loses_only_the_request_in_flight(tmp_path: Path) -> None:
    """kill -9 mid-run keeps every answer journalled before it; the rerun sends only the other rows."""
    job_file = text_job(tmp_path, rows=8)
    tests = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(job_file), "4", FAKE_KEY], env=env, timeout=120, check=False
    )
    assert child.returncode == -signal.SIGKILL
    spec = load_job(job_file)
    rerun = ScriptedApi(reply(200, message("again")))
    outcome = asyncio.run(run_job(spec, options(spec), transport=rerun.transport))
    assert outcome.fatal is None
    frame = results(spec)
    assert frame["row_id"].to_list() == [str(i) for i in range(8)]  # every row exactly once
    assert frame["status"].unique().to_list() == ["ok"]
    before = frame.filter(pl.col("response_text") != "again")
    # the three answered before the kill were journalled and are not sent again; the fourth was in flight
    assert before["response_text"].to_list() == [f"Say something about topic number {i}." for i in range(3)]
    assert sorted(prompts(rerun)) == sorted(f"Say something about topic number {i}." for i in range(3, 8))


async def test_answers_the_sandbox_gave_are_not_reused_by_a_run_to_a_real_server(tmp_path: Path) -> None:
    """A job tried on the sandbox, then run for real, sends every row for real; a local rerun does not."""
    spec = job(tmp_path, rows=3)
    sandbox = ScriptedApi(reply(200, {**message("fake"), "model": "sandbox:claude-haiku-4-5"}))
    local = options(spec)
    await run_job(spec, replace(local, base_url="http://127.0.0.1:8080"), transport=sandbox.transport)
    assert len(sandbox.requests) == 3
    again = ScriptedApi(reply())
    await run_job(spec, replace(local, base_url="http://127.0.0.1:8080"), transport=again.transport)
    assert again.requests == []  # on this machine again: the sandbox's answers stand
    real = ScriptedApi(reply(200, message("real")))
    outcome = await run_job(
        spec, replace(local, base_url="https://api.example.com"), transport=real.transport
    )
    assert len(real.requests) == 3
    assert outcome.summary.rows_skipped == 0
    assert results(spec)["response_text"].to_list() == ["real"] * 3
