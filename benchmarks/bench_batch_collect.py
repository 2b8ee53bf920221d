"""Batch mode memory: peak RSS of ``pipeline batch collect`` while it collects a 100,000-result file.

    .venv/bin/python benchmarks/bench_batch_collect.py [--quick] [--workdir DIR]

A sandbox runs in its own process (``pipeline sandbox --port 0 --batch-processing-s 0``). First
``pipeline run JOB --mode batch`` (no ``--wait``) submits 100,000 text rows as one batch (its peak
RSS is reported too); then ``pipeline batch collect OUTPUT`` downloads the 100,000 result lines as a
stream and journals them into ``results.parquet``. Each child's peak RSS is ``ru_maxrss`` from
``os.wait4``; the collector's RSS is also sampled every 0.2 s to show whether it climbs with the
file. The results file's size is measured afterwards by streaming it once more. ``--quick`` collects
10,000 results.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from _harness import (
    API_KEY,
    PYTHON,
    Child,
    Figure,
    Run,
    Sandbox,
    bench_parser,
    finish,
    log,
    work_directory,
    write_job,
    write_text_rows,
)

LIMIT_MB = 300.0


def results_bytes(base_url: str, batch_id: str) -> int:
    """Size of the batch's results file, read in chunks."""
    request = urllib.request.Request(
        f"{base_url}/v1/messages/batches/{batch_id}/results",
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )
    total = 0
    with urllib.request.urlopen(request, timeout=600) as reply:
        while chunk := reply.read(1 << 20):
            total += len(chunk)
    return total


def child(cmd: list[str], directory: Path, timeout_s: float, sample_s: float | None = None) -> Run:
    """Run one pipeline child to its end and read its rusage."""
    proc = Child(cmd, directory, sample_rss_s=sample_s)
    if not proc.wait(timeout_s):
        log(f"{cmd[3]} exceeded {timeout_s:.0f} s; stopping it")
    return proc.finish(timed_out=proc.proc.returncode is None)


def run(workdir: Path, *, quick: bool) -> list[Figure]:
    rows = 10_000 if quick else 100_000
    directory = workdir / f"batch-collect-{rows}"
    directory.mkdir(parents=True, exist_ok=True)
    write_text_rows(directory / "in.csv", rows)
    job = write_job(directory)
    out = directory / "out"
    with Sandbox(["--batch-processing-s", "0"]) as box:
        log(f"submitting {rows:,} rows in batch mode")
        submit = child(
            [
                PYTHON,
                "-m",
                "pipeline",
                "run",
                str(job),
                "--mode",
                "batch",
                "--base-url",
                box.base_url,
                "--json",
            ],
            directory,
            timeout_s=900,
        )
        log(f"  exit {submit.returncode}, {submit.wall_s:.1f} s, peak RSS {submit.rss_mb:.0f} MB")
        log("collecting")
        collect = child(
            [PYTHON, "-m", "pipeline", "batch", "collect", str(out), "--json"],
            directory,
            timeout_s=900,
            sample_s=0.2,
        )
        summary = collect.summary or {}
        ok = int((summary.get("rows") or {}).get("ok", 0))
        batch_ids = box.stats()["batches"]["ids"]
        size = results_bytes(box.base_url, batch_ids[0]) if batch_ids else 0
    log(
        f"  exit {collect.returncode}, {ok:,} ok, {collect.wall_s:.1f} s, peak RSS {collect.rss_mb:.0f} MB,"
        f" results file {size / 1e6:.1f} MB"
    )
    if collect.returncode != 0:
        log(collect.stderr_tail)
    shape = "/".join(f"{collect.rss_at(share):.0f}" for share in (0.1, 0.25, 0.5, 0.75, 0.95))
    complete = ok == rows and collect.returncode == 0 and len(batch_ids) == 1
    return [
        Figure(
            "b1",
            f"peak RSS, batch collect of {rows:,} results",
            f"< {LIMIT_MB:.0f} MB",
            f"{collect.rss_mb:.0f} MB ({size / 1e6:.1f} MB results file,"
            f" {rows / collect.wall_s:,.0f} results/s; RSS at 10/25/50/75/95 %: {shape} MB)"
            + ("" if complete else f" (only {ok:,} ok)"),
            collect.rss_mb < LIMIT_MB and complete,
            {"rss_mb": collect.rss_mb, "wall_s": collect.wall_s, "results_bytes": size},
        ),
        Figure(
            "b2",
            f"peak RSS, batch submit of {rows:,} rows",
            "report",
            f"{submit.rss_mb:.0f} MB ({submit.wall_s:.1f} s)",
            None,
            {"rss_mb": submit.rss_mb, "wall_s": submit.wall_s},
        ),
    ]


def main() -> None:
    args = bench_parser(__doc__, "10,000 results instead of 100,000").parse_args()
    with work_directory(args.workdir) as workdir:
        figures = run(workdir, quick=args.quick)
    finish(figures, args.json_out)
    if args.json_out is None:
        json.dump([f.measured for f in figures], sys.stderr)
        print(file=sys.stderr)


if __name__ == "__main__":
    main()
