"""Timed runs against a rate-limited sandbox, and the rates read back from what the sandbox saw.

A run lasts a fixed time measured from the sandbox's first arrival, then gets SIGTERM; the input holds
more rows than the limit allows in that time, so the pacing, not the input, decides the rate.

- Requests: ``arrivals`` (seconds since the sandbox started, one per ``/v1/messages`` request) minus
  ``throttles`` (one per 429) in a window give the requests the sandbox accepted.
- Tokens: the usage the sandbox reported, summed from ``results.parquet`` (``ok`` rows, by
  ``finished_at``) over the same window relative to the first answer.
"""

from __future__ import annotations

import bisect
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from _harness import Run, Sandbox, log, started

FIRST_REQUEST_TIMEOUT_S = 180.0  # a cluster run starts its workers before the first request
GRACE_S = 5.0


@dataclass(slots=True)
class RateRun:
    """What a timed run left behind: the sandbox's stats, the child's outcome, its ok rows."""

    duration_s: float
    stats: dict[str, Any]
    run: Run
    results: pl.DataFrame  # ok rows: t (seconds since the first answer), input_tokens, output_tokens
    ended_early: bool

    @property
    def arrivals(self) -> list[float]:
        return sorted(self.stats["arrivals"])

    @property
    def throttles(self) -> list[float]:
        return sorted(t for t, _ in self.stats["throttles"])

    @property
    def t0(self) -> float:
        return self.arrivals[0]

    def accepted(self, start: float, end: float) -> int:
        """Requests the sandbox accepted (arrived and not 429'd) in ``[t0+start, t0+end)``."""
        a, b = self.t0 + start, self.t0 + end
        arrived = bisect.bisect_left(self.arrivals, b) - bisect.bisect_left(self.arrivals, a)
        throttled = bisect.bisect_left(self.throttles, b) - bisect.bisect_left(self.throttles, a)
        return arrived - throttled

    def request_rate_per_min(self, start: float, end: float) -> float:
        return 60.0 * self.accepted(start, end) / (end - start)

    def token_rate_per_min(self, column: str, start: float, end: float) -> float:
        window = self.results.filter((pl.col("t") >= start) & (pl.col("t") < end))
        return 60.0 * float(window[column].sum() or 0) / (end - start)

    @property
    def requests_total(self) -> int:
        return int(self.stats["requests_total"])

    @property
    def rate_limited(self) -> int:
        return int(self.stats["rate_limited"])

    def per_thousand_429(self) -> float:
        return 1000.0 * self.rate_limited / max(1, self.requests_total)

    def time_to_reach(self, share: float, limit_per_min: float, window_s: float = 5.0) -> float | None:
        """First time (s after the first request) at which the trailing ``window_s`` accepted rate
        reaches ``share`` of ``limit_per_min``; ``None`` if it never does."""
        t = window_s
        while t <= self.duration_s:
            if self.request_rate_per_min(t - window_s, t) >= share * limit_per_min:
                return t
            t += 0.5
        return None


def timed_run(
    directory: Path,
    *,
    sandbox_args: Sequence[str],
    write_inputs: Callable[[Path], Path],
    duration_s: float,
    run_args: Sequence[str] = (),
) -> RateRun:
    """Start a sandbox and ``pipeline run``, let it send for ``duration_s`` from its first request,
    stop it with SIGTERM, and collect what both sides saw.

    :param write_inputs: writes the job and its input into ``directory``; returns the job path.
    :param run_args: more ``pipeline run`` options (``--engine ray ...``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    job = write_inputs(directory)
    with (
        Sandbox(sandbox_args) as box,
        started(job, box.base_url, "--grace-s", str(GRACE_S), *run_args) as child,
    ):
        deadline = time.monotonic() + FIRST_REQUEST_TIMEOUT_S
        while box.requests_total() == 0:
            if child.poll() or time.monotonic() > deadline:
                raise RuntimeError(f"no request reached the sandbox: {child.finish().stderr_tail}")
            time.sleep(0.05)
        stop_at = time.monotonic() + duration_s
        ended_early = False
        while time.monotonic() < stop_at:
            if child.poll():
                ended_early = True  # it ran out of rows: the input was too small for the rate
                break
            time.sleep(0.2)
        child.signal(signal.SIGTERM)
        child.wait(GRACE_S + 20)
        run = child.finish()
        stats = box.stats()
    results = _ok_rows(directory / "out" / "results.parquet")
    log(
        f"  {directory.name}: {stats['requests_total']} requests, {stats['rate_limited']} 429s, "
        f"{results.height} ok rows, exit {run.returncode}"
    )
    return RateRun(duration_s, stats, run, results, ended_early)


def _ok_rows(path: Path) -> pl.DataFrame:
    if not path.exists():
        return pl.DataFrame({"t": [], "input_tokens": [], "output_tokens": []})
    frame = pl.read_parquet(path, columns=["status", "finished_at", "input_tokens", "output_tokens"])
    frame = frame.filter(pl.col("status") == "ok")
    seconds = pl.col("finished_at").dt.epoch("us") / 1e6
    return frame.select((seconds - seconds.min()).alias("t"), "input_tokens", "output_tokens")
