"""Target 1, known limits: the job's limits equal the sandbox's; how close to them does a run get?

    .venv/bin/python benchmarks/bench_known_limits.py [--quick]

Three runs against a sandbox with 150 ± 50 ms latency, each bound by one limit, continuously refilled:

- requests: 600 requests/min, text rows;
- input tokens: 300,000 input tokens/min, one 1024x768 JPEG per row (1,049 image tokens plus the
  prompt, ~1,070 a request, so about 280 requests/min), no request limit;
- output tokens: 12,000 output tokens/min, text rows whose reply is ~42 tokens (about 285
  requests/min), no request limit.

Each reports the accepted rate over the run after a warm-up, as a share of the binding limit, and
429s per 1,000 requests over the whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from _harness import (
    Figure,
    bench_parser,
    finish,
    log,
    work_directory,
    write_image_rows,
    write_job,
    write_pictures,
    write_text_rows,
)
from _rates import RateRun, timed_run

LATENCY = ["--latency-ms", "150", "--jitter-ms", "50"]
RPM = 600
ITPM = 300_000
OTPM = 12_000
WARMUP_S = 10.0
# long enough that the sandbox quotes ~120 characters back: a ~42-token reply
LONG_TOPIC_PAD = 110


def run(workdir: Path, *, quick: bool) -> list[Figure]:
    duration = 20.0 if quick else 120.0
    figures: list[Figure] = []

    log(f"target 1: requests-bound run, {RPM}/min, {duration:.0f} s")
    requests = timed_run(
        workdir / "known-rpm",
        sandbox_args=["--rpm", RPM, *LATENCY],
        write_inputs=_text_job(rows=_rows(RPM, duration), rpm=RPM),
        duration_s=duration,
    )
    figures += _figures(("1a", "1b"), "RPM-bound", requests, RPM, "requests", duration)

    log(f"target 1: input-token-bound run (images), {ITPM:,}/min, {duration:.0f} s")

    def image_job(directory: Path) -> Path:
        pictures = write_pictures(directory, 50, (1024, 768))
        write_image_rows(directory / "in.csv", _rows(ITPM / 1000, duration), pictures)
        return write_job(directory, images=True, itpm=ITPM)

    itpm = timed_run(
        workdir / "known-itpm",
        sandbox_args=["--itpm", ITPM, *LATENCY],
        write_inputs=image_job,
        duration_s=duration,
    )
    figures += _figures(("1c", "1d"), "ITPM-bound (images)", itpm, ITPM, "input_tokens", duration)

    log(f"target 1: output-token-bound run, {OTPM:,}/min, {duration:.0f} s")
    otpm = timed_run(
        workdir / "known-otpm",
        sandbox_args=["--otpm", OTPM, *LATENCY],
        write_inputs=_text_job(rows=_rows(OTPM / 30, duration), otpm=OTPM, pad=LONG_TOPIC_PAD),
        duration_s=duration,
    )
    figures += _figures(("1e", "1f"), "OTPM-bound", otpm, OTPM, "output_tokens", duration)
    return figures


def _rows(per_minute: float, duration_s: float) -> int:
    """Comfortably more rows than ``per_minute`` allows in the run, so the input never runs dry."""
    return int(per_minute * (duration_s + 30) / 60 * 1.5) + 100


def _text_job(rows: int, *, pad: int = 0, **limits: float) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        write_text_rows(directory / "in.csv", rows, topic_pad=pad)
        return write_job(directory, **limits)  # type: ignore[arg-type]

    return write


def _figures(
    keys: tuple[str, str], label: str, rr: RateRun, limit: float, what: str, duration: float
) -> list[Figure]:
    end = duration - 1.0
    request_rate = rr.request_rate_per_min(WARMUP_S, end)
    rate = request_rate if what == "requests" else rr.token_rate_per_min(what, WARMUP_S, end)
    share = rate / limit
    per_k = rr.per_thousand_429()
    unit = what.replace("_", " ")
    note = " (ran out of rows)" if rr.ended_early else ""
    rate_fig = Figure(
        keys[0],
        f"{label}: steady {unit}/min, {WARMUP_S:.0f}–{end:.0f} s",
        "≥ 99 % of the limit",
        f"{100 * share:.1f} % ({rate:,.0f} of {limit:,.0f}/min; {request_rate:.0f} req/min){note}",
        share >= 0.99 and not rr.ended_early,
        {"rate_per_min": rate, "limit": limit, "share": share, "requests_per_min": request_rate},
    )
    limited_fig = Figure(
        keys[1],
        f"{label}: 429s over the run",
        "≤ 1 per 1,000 requests",
        f"{per_k:.1f} per 1,000 ({rr.rate_limited} of {rr.requests_total})",
        per_k <= 1.0,
        {"rate_limited": rr.rate_limited, "requests_total": rr.requests_total},
    )
    return [rate_fig, limited_fig]


def main() -> None:
    args = bench_parser(__doc__, "20 s runs instead of 2 min").parse_args()
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick), args.json_out)


if __name__ == "__main__":
    main()
