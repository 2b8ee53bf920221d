"""The Python API's cost over the CLI's engine: a rerun with nothing to do, from a DataFrame.

    .venv/bin/python benchmarks/bench_frames.py [--rows N]

A finished text job over N rows (default 20,000) is rerun (every row already done, nothing sent)
two ways in this process, against an in-process sandbox, three times each, best time kept:

- baseline: ``run_job`` on a Parquet file of the rows (what ``pipeline run`` does after loading);
- ``Job.run(df)``: the same engine on the DataFrame, plus what the Python API adds: reading the
  input's row ids back in order and the results for them.

Reported: both times and their ratio, with and without an ``id_column`` (with one, reading the ids
back touches that column only). The machine is shared: read the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx
import polars as pl

import pipeline
from pipeline.realtime.run import RunOptions, run_job
from pipeline.rows.memory import frame_input

REQUEST = {"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "About {topic}."}


def answer(request: httpx.Request) -> httpx.Response:
    """An instant Messages reply: filling the output is not what is measured."""
    body = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": REQUEST["model"],
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 2},
    }
    return httpx.Response(200, json=body)


def best(repeat: int, call: object) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def measure(rows: int, id_column: str | None, workdir: Path) -> tuple[float, float]:
    data = pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "topic": [f"topic {i}" for i in range(rows)]})
    data.write_parquet(workdir / "in.parquet")
    job = pipeline.Job(**REQUEST, id_column=id_column, limits={"concurrency": 64})
    output = workdir / f"out-{id_column}"
    with pipeline.Sandbox() as sandbox:
        spec = job.spec
        frame_options = RunOptions(
            base_url=sandbox.base_url,
            api_key="sk-bench",
            input=frame_input(data, base_dir=workdir),
            output=output,
            progress=False,
        )
        file_options = RunOptions(
            base_url=sandbox.base_url,
            api_key="sk-bench",
            input=str(workdir / "in.parquet"),
            output=output,
            progress=False,
        )
        # the finished job both reruns find (answered in-process, instantly)
        asyncio.run(run_job(spec, frame_options, transport=httpx.MockTransport(answer)))
        baseline = best(3, lambda: asyncio.run(run_job(spec, file_options)))
        python = best(3, lambda: job.run(data, output=output, progress=False))
        assert sandbox.stats()["requests_total"] == 0  # the reruns sent nothing
    return baseline, python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-bench")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"rerun of a finished {args.rows:,}-row job, nothing sent (best of 3)")
        print("| id_column | run_job on a file | Job.run(df) | ratio |")
        print("|---|---|---|---|")
        for id_column in ("id", None):
            baseline, python = measure(args.rows, id_column, Path(tmp))
            name = id_column or "(hashed)"
            print(f"| {name} | {baseline:.2f} s | {python:.2f} s | {python / baseline:.2f}x |")


if __name__ == "__main__":
    main()
