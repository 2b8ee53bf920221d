"""Target 3, client overhead: limits off, zero latency, text only, 20,000 rows, end to end.

    .venv/bin/python benchmarks/bench_overhead.py [--quick] [--rows N] [--concurrency C]...
    .venv/bin/python benchmarks/bench_overhead.py --profile /tmp/overhead.txt [--concurrency 64]
    .venv/bin/python benchmarks/bench_overhead.py --rows 3000 --latency-ms 50 20   # the side-by-side W1

One ``pipeline run`` against a sandbox in its own process on the same 2-core machine. Rows/s is the
rows divided by the wall time of the whole process (start, read, build, send, parse, journal,
compact, exit); client CPU per request is the child's user+system time (``os.wait4``) divided by
the requests it sent. The sandbox's CPU time over the run is reported too: it shares the 2 cores.
Run at concurrency 16 (the job default) and 64. ``--profile`` runs the child under py-spy instead
and prints the hottest frames.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from _harness import (
    PYTHON,
    ROOT,
    Figure,
    Run,
    Sandbox,
    bench_parser,
    finish,
    log,
    ok_rows,
    run_to_end,
    work_directory,
    write_job,
    write_text_rows,
)

TARGET_ROWS_S = 500.0
# the job default, and the 64 that core.py and the README's "Measured" table use
CONCURRENCIES = (16, 64)


def one_run(
    workdir: Path,
    rows: int,
    concurrency: int,
    profile: Path | None = None,
    *,
    latency: tuple[float, float] = (0.0, 0.0),
) -> tuple[Run, float]:
    """One run; (its outcome, the sandbox's CPU seconds meanwhile). ``profile``: py-spy raw output.

    :param latency: the sandbox's (latency, jitter) in ms; (0, 0) for target 3 itself.
    """
    directory = workdir / f"overhead-{rows}-c{concurrency}-l{latency[0]:g}"
    directory.mkdir(parents=True, exist_ok=True)
    write_text_rows(directory / "in.csv", rows)
    job = write_job(directory, concurrency=concurrency, max_attempts=3)
    log(
        f"target 3: {rows:,} text rows, no limits, latency {latency[0]:g} ± {latency[1]:g} ms, "
        f"concurrency {concurrency}"
    )
    with Sandbox(["--latency-ms", f"{latency[0]:g}", "--jitter-ms", f"{latency[1]:g}"]) as box:
        box_cpu = box.cpu_s()
        if profile is None:
            result = run_to_end(job, box.base_url, timeout_s=600)
        else:
            spy = [
                str(Path(PYTHON).with_name("py-spy")),
                "record",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(profile),
            ]
            result = run_to_end(job, box.base_url, timeout_s=600, prefix=[*spy, "--"])
        box_cpu = box.cpu_s() - box_cpu
    log(f"  {ok_rows(result):,} ok, exit {result.returncode}, wall {result.wall_s:.1f} s")
    return result, box_cpu


def run(
    workdir: Path,
    *,
    quick: bool,
    rows: int | None = None,
    concurrencies: Sequence[int] = CONCURRENCIES,
    latency: tuple[float, float] = (0.0, 0.0),
) -> list[Figure]:
    rows = rows or (5_000 if quick else 20_000)
    figures: list[Figure] = []
    where = "zero latency" if latency == (0.0, 0.0) else f"{latency[0]:g} ± {latency[1]:g} ms"
    for n, concurrency in enumerate(concurrencies):
        result, box_cpu = one_run(workdir, rows, concurrency, latency=latency)
        ok = ok_rows(result)
        sent = int((result.summary or {}).get("requests_sent", ok) or 1)
        rate = rows / result.wall_s
        cpu_ms = 1000 * result.cpu_s / max(1, sent)
        suffix = "'" * n
        figures += [
            Figure(
                f"3a{suffix}",
                f"{rows:,} text rows end to end, no limits, {where}, concurrency {concurrency}",
                "≥ 500 rows/s",
                f"{rate:.0f} rows/s ({result.wall_s:.1f} s wall; {ok:,} ok)",
                rate >= TARGET_ROWS_S and ok == rows and result.returncode == 0,
                {"rows_s": rate, "wall_s": result.wall_s, "ok": ok, "concurrency": concurrency},
            ),
            Figure(
                f"3b{suffix}",
                f"client CPU per request, concurrency {concurrency}",
                "report",
                f"{cpu_ms:.2f} ms ({result.cpu_s:.1f} s client, {box_cpu:.1f} s sandbox CPU)",
                None,
                {"client_cpu_ms_per_request": cpu_ms, "client_cpu_s": result.cpu_s, "sandbox_cpu_s": box_cpu},
            ),
        ]
    return figures


def summarise_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive shares of the hottest frames in py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";")]
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples; self:"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in own.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def _frame(raw: str) -> str:
    match = re.match(r"(.*) \((.*?):\d+\)", raw)
    if not match:
        return raw
    where = match.group(2).split("site-packages/")[-1].split(str(ROOT) + "/")[-1]
    return f"{match.group(1)} ({where})"


def main() -> None:
    parser = bench_parser(__doc__, "5,000 rows instead of 20,000")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--concurrency", type=int, action="append", help="repeatable (default: 16 and 64)")
    parser.add_argument("--profile", type=Path, help="run once under py-spy (pip install py-spy), write here")
    parser.add_argument(
        "--latency-ms",
        type=float,
        nargs=2,
        default=(0.0, 0.0),
        metavar=("MS", "JITTER"),
        help="the sandbox's latency and jitter (the side-by-side W1 uses 50 20); default 0 0",
    )
    args = parser.parse_args()
    concurrencies = args.concurrency or CONCURRENCIES
    latency = (args.latency_ms[0], args.latency_ms[1])
    with work_directory(args.workdir) as workdir:
        if args.profile:
            rows = args.rows or (5_000 if args.quick else 20_000)
            one_run(workdir, rows, concurrencies[0], profile=args.profile, latency=latency)
            print(summarise_profile(args.profile))
            return
        figures = run(workdir, quick=args.quick, rows=args.rows, concurrencies=concurrencies, latency=latency)
        finish(figures, args.json_out)


if __name__ == "__main__":
    main()
