"""Target 2, unknown or wrong limits: the job allows 5x what the sandbox enforces.

    .venv/bin/python benchmarks/bench_unknown_limits.py [--quick]

The sandbox enforces 600 requests/min (150 ± 50 ms latency); the job says 3,000. Two 75 s runs:

- with ``anthropic-ratelimit-*`` headers (the client can read the real limit from every response);
- with ``--no-ratelimit-headers`` (only 429s and their ``retry-after`` tell the client anything).

Each reports when the accepted rate (over the trailing 10 s) first reaches 90 % of the real limit and
the rate from 30 s to the end (both must be at least 90 % to pass), and the share of requests
answered 429 over the whole run.
"""

from __future__ import annotations

from pathlib import Path

from _harness import Figure, bench_parser, finish, log, work_directory, write_job, write_text_rows
from _rates import RateRun, timed_run

REAL_RPM = 600
JOB_RPM = 5 * REAL_RPM
LATENCY = ["--latency-ms", "150", "--jitter-ms", "50"]
CONVERGED_BY_S = 30.0
TRAILING_S = 10.0


def run(workdir: Path, *, quick: bool) -> list[Figure]:
    duration = 40.0 if quick else 75.0
    rows = int(JOB_RPM * duration / 60) + 500  # enough even if the client paced at the job's 5x limit

    def job(directory: Path) -> Path:
        write_text_rows(directory / "in.csv", rows)
        return write_job(directory, rpm=JOB_RPM)

    figures: list[Figure] = []
    for keys, label, extra in (
        (("2a", "2b"), "headers", []),
        (("2c", "2d"), "no headers", ["--no-ratelimit-headers"]),
    ):
        log(f"target 2: job {JOB_RPM}/min, sandbox {REAL_RPM}/min, {label}, {duration:.0f} s")
        rr = timed_run(
            workdir / f"unknown-{label.replace(' ', '-')}",
            sandbox_args=["--rpm", REAL_RPM, *LATENCY, *extra],
            write_inputs=job,
            duration_s=duration,
        )
        figures += _figures(keys, label, rr, duration)
    return figures


def _figures(keys: tuple[str, str], label: str, rr: RateRun, duration: float) -> list[Figure]:
    t90 = rr.time_to_reach(0.9, REAL_RPM, window_s=TRAILING_S)
    end = duration - 1.0
    after = rr.request_rate_per_min(CONVERGED_BY_S, end) / REAL_RPM
    share_429 = rr.rate_limited / max(1, rr.requests_total)
    reached = "never reached" if t90 is None else f"reached at {t90:.0f} s"
    return [
        Figure(
            keys[0],
            f"job 5x the real RPM, {label}: time to 90 % of the real limit",
            "≥ 90 % by 30 s, and after",
            f"{reached}; {100 * after:.1f} % of {REAL_RPM}/min from 30 to {end:.0f} s",
            t90 is not None and t90 <= CONVERGED_BY_S and after >= 0.9,
            {"t90_s": t90, "share_after_30s": after},
        ),
        Figure(
            keys[1],
            f"job 5x the real RPM, {label}: 429s over the run",
            "< 2 % of requests",
            f"{100 * share_429:.1f} % ({rr.rate_limited} of {rr.requests_total})",
            share_429 < 0.02,
            {"rate_limited": rr.rate_limited, "requests_total": rr.requests_total},
        ),
    ]


def main() -> None:
    args = bench_parser(__doc__, "40 s runs instead of 75 s").parse_args()
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick), args.json_out)


if __name__ == "__main__":
    main()
