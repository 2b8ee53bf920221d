"""Ctrl-C during ``Job.run``, with and without a running event loop: the CLI's graceful stop, then resume."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import pipeline
from jobkit import ROOT

ROWS = 40


def press_ctrl_c_after_first_answer(served: pipeline.Sandbox) -> threading.Thread:
    """SIGINT to this process once the sandbox has answered a row, as the notebook's interrupt button does."""

    def press() -> None:
        deadline = time.monotonic() + 120
        while served.stats()["answers_ok"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def test_ctrl_c_inside_a_running_loop_stops_gracefully_and_a_rerun_sends_only_the_rest(
    tmp_path: Path,
) -> None:
    """In a running loop run() waits in a thread; Ctrl-C there is the graceful stop, answers saved."""
    job = pipeline.Job(
        model="claude-haiku-4-5", max_tokens=16, prompt="About {topic}.", limits={"concurrency": 1}
    )
    data = pl.DataFrame({"topic": [f"topic {i}" for i in range(ROWS)]})
    output = tmp_path / "out"
    # one second per answer: the run is far from done when the key is pressed
    with pipeline.Sandbox(latency_ms=1000) as served:

        async def cell() -> None:
            # ipykernel runs a cell with Python's own SIGINT handler: KeyboardInterrupt on this thread
            signal.signal(signal.SIGINT, signal.default_int_handler)
            press_ctrl_c_after_first_answer(served)
            with pytest.raises(
                KeyboardInterrupt, match=r"stopped by SIGINT: \d+ rows answered this run are saved"
            ):
                job.run(data, output=output, progress=False)

        asyncio.run(cell())
        saved = pl.read_parquet(output / "results.parquet")
        assert 1 <= saved.height < ROWS
        assert saved["status"].to_list() == ["ok"] * saved.height  # in-flight answers were kept, not cut
        before = served.stats()["requests_total"]
        assert before == saved.height  # nothing was sent that was not saved
    with pipeline.Sandbox() as served:
        out = job.run(data, output=output, progress=False)
        assert served.stats()["requests_total"] == ROWS - saved.height
    assert out["topic"].to_list() == data["topic"].to_list()


SCRIPT = """
import os, signal, threading, time
import polars as pl
import pipeline

job = pipeline.Job(
    model="claude-haiku-4-5", max_tokens=16, prompt="About {{topic}}.", limits={{"concurrency": 1}}
)
data = pl.DataFrame({{"topic": [f"topic {{i}}" for i in range({rows})]}})
with pipeline.Sandbox(latency_ms=1000) as served:
    def press():
        while served.stats()["answers_ok"] < 1:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=press, daemon=True).start()
    try:
        job.run(data, output={output!r}, progress=False)
    except KeyboardInterrupt as exc:
        print("interrupted:", exc)
    print("saved:", pl.read_parquet({output!r} + "/results.parquet").height)
    print("sent:", served.stats()["requests_total"])
"""


def test_ctrl_c_in_a_plain_script_is_the_clis_graceful_stop(tmp_path: Path) -> None:
    """On the main thread without a loop, run() takes SIGINT as the CLI does: stop, save, then raise."""
    script = SCRIPT.format(rows=ROWS, output=str(tmp_path / "out"))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        | {"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["interrupted"].startswith("stopped by SIGINT: ")
    assert 1 <= int(lines["saved"]) < ROWS
    assert int(lines["sent"]) == int(lines["saved"])
    assert "SIGINT: sending nothing new; waiting up to 30s" in done.stderr


def test_run_works_from_a_thread_that_is_not_the_main_one(tmp_path: Path) -> None:
    """A run in a worker thread of the caller (a thread pool, Ray) installs no signal handlers and ends."""
    job = pipeline.Job(model="claude-haiku-4-5", max_tokens=16, prompt="About {topic}.")
    results: list[pl.DataFrame] = []
    handler = signal.getsignal(signal.SIGINT)
    with pipeline.Sandbox():
        thread = threading.Thread(
            target=lambda: results.append(job.run({"topic": ["a", "b"]}, progress=False))
        )
        thread.start()
        thread.join()
    assert results[0]["status"].to_list() == ["ok", "ok"]
    assert signal.getsignal(signal.SIGINT) is handler
