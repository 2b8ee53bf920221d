"""Target 6, start and resume: time to the first request on a 1,000,000-row CSV; rerunning a finished job.

    .venv/bin/python benchmarks/bench_start_resume.py [--quick]

- First request: on a CSV of ``id,topic,note`` rows (a 100-character note the job does not use;
  about 120 MB), from starting ``pipeline run`` (a new Python process) to the sandbox's first
  ``/v1/messages`` arrival, seen by polling ``/_sandbox/stats`` every 5 ms; the run is then stopped.
- Resume: ``pipeline run`` again on a finished 100,000-row text job (the one target 5 left, or one
  made here) against a fresh sandbox: its wall time, exit code and the requests the sandbox received.
``--quick`` uses 100,000 rows for the first and 10,000 for the second.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from _harness import (
    Figure,
    Sandbox,
    bench_parser,
    finish,
    log,
    ok_rows,
    run_to_end,
    started,
    work_directory,
    write_job,
    write_text_rows,
)

FIRST_REQUEST_S = 3.0
RESUME_S = 5.0


def first_request(workdir: Path, rows: int) -> Figure:
    directory = workdir / f"start-{rows}"
    directory.mkdir(parents=True, exist_ok=True)
    csv = directory / "in.csv"
    write_text_rows(csv, rows, note_chars=100)
    job = write_job(directory)
    log(f"target 6: first request on a {rows:,}-row CSV ({csv.stat().st_size / 1e6:.0f} MB)")
    seen: float | None = None
    with Sandbox() as box, started(job, box.base_url, "--grace-s", "1") as child:
        deadline = child.started + 60
        while time.monotonic() < deadline and not child.poll():
            if box.requests_total() > 0:
                seen = time.monotonic() - child.started
                break
            time.sleep(0.005)
        child.signal(signal.SIGTERM)
        child.wait(30)
    measured = "no request within 60 s" if seen is None else f"{seen:.2f} s"
    log(f"  first request after {measured}")
    return Figure(
        "6a",
        f"first request sent, {rows:,}-row CSV (from process start)",
        f"≤ {FIRST_REQUEST_S:.0f} s",
        measured,
        seen is not None and seen <= FIRST_REQUEST_S,
        {"seconds": seen},
    )


def resume(workdir: Path, rows: int, finished_job: Path | None) -> Figure:
    if finished_job is None:
        directory = workdir / f"resume-{rows}"
        directory.mkdir(parents=True, exist_ok=True)
        write_text_rows(directory / "in.csv", rows)
        finished_job = write_job(directory, concurrency=64, max_attempts=3)
        log(f"target 6: running a {rows:,}-row job to the end first")
        with Sandbox() as box:
            first = run_to_end(finished_job, box.base_url, timeout_s=900)
        if ok_rows(first) != rows:
            raise RuntimeError(f"the job to resume did not finish: {first.stderr_tail}")
    log(f"target 6: rerunning the finished {rows:,}-row job")
    with Sandbox() as box:
        again = run_to_end(finished_job, box.base_url, timeout_s=120)
        sent = box.requests_total()
    skipped = int(((again.summary or {}).get("rows") or {}).get("skipped", 0))
    log(f"  {again.wall_s:.2f} s, {sent} requests, {skipped:,} skipped, exit {again.returncode}")
    return Figure(
        "6b",
        f"rerun of a finished {rows:,}-row job",
        f"< {RESUME_S:.0f} s, 0 requests",
        f"{again.wall_s:.2f} s, {sent} requests, {skipped:,} rows skipped, exit {again.returncode}",
        again.wall_s < RESUME_S and sent == 0 and again.returncode == 0 and skipped == rows,
        {"wall_s": again.wall_s, "requests": sent, "rss_mb": again.rss_mb},
    )


def run(workdir: Path, *, quick: bool, finished_job: Path | None = None) -> list[Figure]:
    rows = 10_000 if quick else 100_000
    if finished_job is None:
        # the job target 5 (bench_memory) ran to the end in the same work directory, if it did
        left = workdir / f"memory-text-{rows}" / "job.toml"
        finished_job = left if (left.parent / "out" / "results.parquet").exists() else None
    return [first_request(workdir, 100_000 if quick else 1_000_000), resume(workdir, rows, finished_job)]


def main() -> None:
    args = bench_parser(__doc__, "smaller tables").parse_args()
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick), args.json_out)


if __name__ == "__main__":
    main()
