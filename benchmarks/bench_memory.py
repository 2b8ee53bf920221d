"""Target 5, memory: peak RSS of ``pipeline run`` for 10,000 and 100,000 text rows and 10,000 image rows.

    .venv/bin/python benchmarks/bench_memory.py [--quick]

Each run is one ``pipeline run`` child against a sandbox in its own process (zero latency, no
limits, concurrency 64); its peak RSS is ``ru_maxrss`` from ``os.wait4``. Image rows cycle through
50 distinct photo-like 1024x768 JPEGs (about 180 KB each, sent as they are). A 1,000-image-row run
is reported too, to show how image memory grows with the row count. ``--quick`` divides every row
count by 10. The child's RSS is also sampled every 0.5 s (``/proc/PID/status``), so the growth
figure shows whether memory climbs through the run or peaks at the end.

The finished 100,000-row text job is left in the work directory for the resume figure (target 6).
"""

from __future__ import annotations

from pathlib import Path

from _harness import (
    Figure,
    Run,
    Sandbox,
    bench_parser,
    finish,
    log,
    ok_rows,
    run_to_end,
    work_directory,
    write_image_rows,
    write_job,
    write_pictures,
    write_text_rows,
)

LIMIT_MB = 300.0
GROWTH = 1.3
CONCURRENCY = 64


def text_job(workdir: Path, rows: int) -> Path:
    directory = workdir / f"memory-text-{rows}"
    directory.mkdir(parents=True, exist_ok=True)
    write_text_rows(directory / "in.csv", rows)
    return write_job(directory, concurrency=CONCURRENCY, max_attempts=3)


def image_job(workdir: Path, rows: int) -> Path:
    directory = workdir / f"memory-images-{rows}"
    directory.mkdir(parents=True, exist_ok=True)
    pictures = write_pictures(directory, 50, (1024, 768))
    write_image_rows(directory / "in.csv", rows, pictures)
    return write_job(directory, images=True, concurrency=CONCURRENCY, max_attempts=3)


def measure(job: Path, rows: int, what: str) -> Run:
    log(f"target 5: {rows:,} {what} rows")
    with Sandbox() as box:
        run = run_to_end(job, box.base_url, timeout_s=900, sample_rss_s=0.5)
    rate = rows / run.wall_s
    log(f"  peak RSS {run.rss_mb:.0f} MB, {ok_rows(run):,} ok, {rate:.0f} rows/s, exit {run.returncode}")
    return run


def run(workdir: Path, *, quick: bool) -> list[Figure]:
    scale = 10 if quick else 1
    small_text, big_text = 10_000 // scale, 100_000 // scale
    small_img, big_img = 1_000 // scale, 10_000 // scale
    runs: dict[str, tuple[int, Run]] = {}
    for key, rows, make, what in (
        ("text_small", small_text, text_job, "text"),
        ("text_big", big_text, text_job, "text"),
        ("img_small", small_img, image_job, "image"),
        ("img_big", big_img, image_job, "image"),
    ):
        runs[key] = (rows, measure(make(workdir, rows), rows, what))

    def fig(key: str, name: str, run_key: str) -> Figure:
        rows, result = runs[run_key]
        complete = ok_rows(result) == rows and result.returncode == 0
        note = "" if complete else f" (only {ok_rows(result):,} ok, exit {result.returncode})"
        if result.parent_rss_mb > 0.5 * result.rss_mb:
            note += f" (suspect: the harness held {result.parent_rss_mb:.0f} MB when it forked the run)"
        return Figure(
            key,
            name,
            f"< {LIMIT_MB:.0f} MB",
            f"{result.rss_mb:.0f} MB ({rows / result.wall_s:.0f} rows/s){note}",
            result.rss_mb < LIMIT_MB and complete,
            {"rss_mb": result.rss_mb, "wall_s": result.wall_s},
        )

    text_ratio = runs["text_big"][1].rss_mb / runs["text_small"][1].rss_mb
    big = runs["text_big"][1]
    shape = "/".join(f"{big.rss_at(share):.0f}" for share in (0.1, 0.25, 0.5, 0.75, 0.95))
    img_ratio = runs["img_big"][1].rss_mb / runs["img_small"][1].rss_mb
    return [
        fig("5a", f"peak RSS, {big_text:,} text rows", "text_big"),
        fig("5b", f"peak RSS, {big_img:,} image rows", "img_big"),
        Figure(
            "5c",
            f"peak RSS growth, {big_text:,} vs {small_text:,} text rows",
            f"≤ {GROWTH}x",
            f"{text_ratio:.2f}x ({big.rss_mb:.0f} / {runs['text_small'][1].rss_mb:.0f} MB); "
            f"RSS at 10/25/50/75/95 % of the {big.wall_s:.0f} s run: {shape} MB",
            text_ratio <= GROWTH,
            {"ratio": text_ratio, "timeline": big.rss_timeline},
        ),
        Figure(
            "5d",
            f"peak RSS growth, {big_img:,} vs {small_img:,} image rows",
            "report",
            f"{img_ratio:.2f}x ({runs['img_big'][1].rss_mb:.0f} / {runs['img_small'][1].rss_mb:.0f} MB)",
            None,
            {"ratio": img_ratio},
        ),
    ]


def main() -> None:
    args = bench_parser(__doc__, "a tenth of the rows").parse_args()
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick), args.json_out)


if __name__ == "__main__":
    main()
