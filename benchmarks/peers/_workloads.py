"""The four workloads, the tools that run them, one run of one tool, and the figures read from it.

A run: a fresh sandbox in its own process (same seed for every tool within a run, so the faults fall
on the same arrivals), the tool in its own process group, bounded in time; then the sandbox's
``/_sandbox/stats`` and the tool's own count of rows that ended ok.

- W1 text rows, no rate limit, 50 +- 20 ms: rows/s (ok rows / wall of the whole tool process, from
  start to exit, imports included) and client CPU per row (``os.wait4`` user + system / rows).
- W2 600 requests/min enforced by the sandbox, 150 +- 50 ms, each tool told the same limit: the run is
  stopped a fixed time after its first real request (the sandbox's second arrival: curator sends one
  probe request at start-up, seconds before its batch). *Share of the limit* = requests the sandbox
  accepted (arrivals minus 429s) from 10 s to the end of that time, per minute, over 600; *429s* per
  1,000 requests over the whole run.
- W3 15 % injected faults (529, 500, an HTML 503 and a dropped connection, in equal shares),
  50 +- 20 ms: wall time and rows that ended ok.
- W4 one distinct 2400x1800 photo-like JPEG per row, 50 +- 20 ms: rows/s and client CPU per row. The
  peers send each file as base64 as read; pipeline shrinks it to its default 1568 px edge first.
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _inputs import write_job
from _peers import Venv
from _processes import API_KEY, CpuWatch, Finished, Sandbox, ToolRun, child_env, log, run_bounded

FIRST_REQUEST_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0  # one request's time limit, the same for every tool


# --------------------------------------------------------------------------- what a run leaves


@dataclass(slots=True)
class RunRecord:
    """One tool's run of one workload: the process, the sandbox's view, the rows that ended ok."""

    tool: str
    workload: str
    run: int
    finished: Finished
    stats: dict[str, Any]
    rows: int
    ok_rows: int
    sandbox_cpu_s: float
    timed_s: float | None = None  # W2: how long the run was let send, from its first request
    ended_early: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    foreign_cpu_s: float = 0.0  # CPU other processes on the machine used during this run
    figures: dict[str, float | None] = field(default_factory=dict)

    def arrivals(self) -> list[float]:
        return sorted(float(t) for t in self.stats.get("arrivals", []))

    def throttles(self) -> list[float]:
        return sorted(float(t) for t, _ in self.stats.get("throttles", []))

    def problems(self) -> list[str]:
        """What makes this run's figures suspect (shown in the notes)."""
        out = []
        where = f"{self.tool} {self.workload} run {self.run}"
        if self.finished.timed_out:
            out.append(f"{where}: stopped at its time limit")
        if self.ended_early:
            out.append(f"{where}: ran out of rows before the window ended")
        if self.summary.get("blocked"):
            out.append(f"{where}: loopback guard refused {self.summary['blocked']}")
        if self.timed_s is None and self.ok_rows == 0:
            out.append(
                f"{where}: no row ok (exit {self.finished.returncode}): {self.finished.stderr_tail[-300:]!r}"
            )
        return out

    def as_json(self) -> dict[str, Any]:
        stats = {
            k: v
            for k, v in self.stats.items()
            if k not in ("arrivals", "throttles", "ok_by_request", "batches")
        }
        return {
            "tool": self.tool,
            "workload": self.workload,
            "run": self.run,
            "rows": self.rows,
            "ok_rows": self.ok_rows,
            "wall_s": round(self.finished.wall_s, 3),
            "cpu_s": round(self.finished.cpu_s, 3),
            "rss_mb": round(self.finished.rss_mb, 1),
            "returncode": self.finished.returncode,
            "timed_out": self.finished.timed_out,
            "timed_s": self.timed_s,
            "ended_early": self.ended_early,
            "sandbox_cpu_s": round(self.sandbox_cpu_s, 3),
            "foreign_cpu_s": round(self.foreign_cpu_s, 1),
            "sandbox": stats,
            "tool_summary": self.summary,
            "figures": self.figures,
        }


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class Metric:
    """One line of the table: how to read it from a run, which way is better, how to print it."""

    key: str
    label: str
    higher_is_better: bool
    read: Callable[[RunRecord], float | None]
    fmt: Callable[[float], str]


def rows_per_s(record: RunRecord) -> float | None:
    return record.ok_rows / record.finished.wall_s if record.finished.wall_s > 0 else None


def cpu_ms_per_row(record: RunRecord) -> float | None:
    return 1000.0 * record.finished.cpu_s / record.rows if record.rows else None


def wall_s(record: RunRecord) -> float | None:
    return record.finished.wall_s


def ok_rows(record: RunRecord) -> float | None:
    return float(record.ok_rows)


STEADY_FROM_S = 10.0


def steady_share(limit_per_min: float, start_s: float) -> Callable[[RunRecord], float | None]:
    """Accepted requests/min from ``start_s`` after the first real request to the end, over the limit."""

    def read(record: RunRecord) -> float | None:
        arrivals = record.arrivals()
        if len(arrivals) < 2 or record.timed_s is None:
            return None
        t0 = arrivals[1]
        a, b = t0 + start_s, t0 + record.timed_s
        throttles = record.throttles()
        arrived = bisect.bisect_left(arrivals, b) - bisect.bisect_left(arrivals, a)
        refused = bisect.bisect_left(throttles, b) - bisect.bisect_left(throttles, a)
        per_min = 60.0 * (arrived - refused) / (b - a)
        return 100.0 * per_min / limit_per_min

    return read


def per_thousand_429(record: RunRecord) -> float | None:
    total = int(record.stats.get("requests_total", 0))
    return 1000.0 * int(record.stats.get("rate_limited", 0)) / total if total else None


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True, slots=True)
class Workload:
    """What the sandbox does, what the input is, what each tool is told, and which figures count.

    :param timed_s: when set, the run is stopped this long after its first request (W2).
    :param note: said beside the workload's key in the table.
    """

    key: str
    title: str
    sandbox_args: tuple[str, ...]
    rows: int
    metrics: tuple[Metric, ...]
    timeout_s: float
    images: bool = False
    rpm: float | None = None
    timed_s: float | None = None
    seed_base: int = 0
    note: str = ""


LIMIT_RPM = 600.0
FAULT_KINDS = "529,500,html503,drop"  # kinds every client can retry ('slow' is left out)


def workloads(*, quick: bool) -> list[Workload]:
    text_rows = 300 if quick else 3000
    w2_s = 25.0 if quick else 70.0
    w2_from = 5.0 if quick else STEADY_FROM_S
    return [
        Workload(
            "W1",
            f"{text_rows:,} text rows, 50 ± 20 ms, no rate limit",
            ("--latency-ms", "50", "--jitter-ms", "20"),
            rows=text_rows,
            metrics=(
                Metric("rows_per_s", "rows/s (whole process)", True, rows_per_s, _rate),
                Metric("cpu_ms_per_row", "client CPU ms/row", False, cpu_ms_per_row, lambda v: f"{v:.2f}"),
            ),
            timeout_s=300.0 if quick else 900.0,
        ),
        Workload(
            "W2",
            f"600 RPM enforced, 150 ± 50 ms, {w2_s:.0f} s from the first request",
            ("--latency-ms", "150", "--jitter-ms", "50", "--rpm", f"{LIMIT_RPM:g}"),
            rows=int(w2_s * LIMIT_RPM / 60 * 2),  # twice what the limit lets through: pacing decides
            metrics=(
                Metric(
                    "limit_share",
                    f"share of 600/min accepted, {w2_from:.0f}-{w2_s:.0f} s",
                    True,
                    steady_share(LIMIT_RPM, w2_from),
                    lambda v: f"{v:.1f} %",
                ),
                Metric(
                    "per_1000_429", "429s per 1,000 requests", False, per_thousand_429, lambda v: f"{v:.1f}"
                ),
            ),
            timeout_s=w2_s + FIRST_REQUEST_TIMEOUT_S + 60,
            rpm=LIMIT_RPM,
            timed_s=w2_s,
        ),
        Workload(
            "W3",
            f"{200 if quick else 1000:,} text rows, 15 % faults ({FAULT_KINDS}), 50 ± 20 ms",
            ("--latency-ms", "50", "--jitter-ms", "20", "--fault-rate", "0.15", "--faults", FAULT_KINDS),
            rows=200 if quick else 1000,
            metrics=(
                Metric("wall_s", "wall time, s", False, wall_s, lambda v: f"{v:.1f}"),
                Metric("ok_rows", "rows ok", True, ok_rows, lambda v: f"{v:,.0f}"),
            ),
            timeout_s=600.0 if quick else 1200.0,
        ),
        Workload(
            "W4",
            f"{30 if quick else 300} distinct 2400x1800 JPEGs, one a request, 50 ± 20 ms",
            ("--latency-ms", "50", "--jitter-ms", "20"),
            rows=30 if quick else 300,
            metrics=(
                Metric("rows_per_s", "rows/s (whole process)", True, rows_per_s, _rate),
                Metric("cpu_ms_per_row", "client CPU ms/row", False, cpu_ms_per_row, lambda v: f"{v:.1f}"),
            ),
            timeout_s=600.0 if quick else 1200.0,
            images=True,
            note="pipeline resizes to 1568 px, peers send the file as is",
        ),
    ]


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True)
class Tool:
    """A column of the table: ``pipeline`` (the project venv's ``pipeline run``) or a peer's driver.

    :param only: workloads this tool runs (empty: all).
    :param knobs: peer settings passed to the driver (``--knob NAME=VALUE``) beyond its documented ones.
    """

    name: str
    concurrency: int
    attempts: int
    venv: Venv | None = None
    pipeline_cmd: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    knobs: tuple[str, ...] = ()

    def command(self, workload: Workload, csv: Path, run_dir: Path, base_url: str) -> list[str]:
        if self.venv is None:
            job = write_job(
                run_dir,
                csv,
                concurrency=self.concurrency,
                max_attempts=self.attempts,
                timeout_s=REQUEST_TIMEOUT_S,
                rpm=workload.rpm,
                images=workload.images,
            )
            return [*self.pipeline_cmd, "run", str(job), "--base-url", base_url, "--json", "--grace-s", "5"]
        cmd = [
            str(self.venv.python),
            str(self.venv.driver),
            "--input",
            str(csv),
            "--results",
            str(run_dir / "results.jsonl"),
            "--base-url",
            base_url,
            "--api-key",
            API_KEY,
            "--concurrency",
            str(self.concurrency),
            "--attempts",
            str(self.attempts),
            "--timeout-s",
            f"{REQUEST_TIMEOUT_S:g}",
            "--workdir",
            str(run_dir),
            "--started-at",
            f"{time.time():.6f}",
        ]
        if workload.rpm is not None:
            cmd += ["--rpm", f"{workload.rpm:g}"]
        for knob in self.knobs:
            cmd += ["--knob", knob]
        return cmd

    def ok_rows(self, summary: dict[str, Any] | None) -> int:
        if not summary:
            return 0
        if self.venv is None:
            rows = summary.get("rows", {})
            return int(rows.get("ok", 0)) if isinstance(rows, dict) else 0
        return int(summary.get("ok", 0))


# --------------------------------------------------------------------------- one run


def run_once(
    tool: Tool, workload: Workload, csv: Path, run_dir: Path, run: int, *, project_python: str
) -> RunRecord:
    """One run: a fresh sandbox, the tool against it (to its end, or for ``timed_s``), the figures."""
    sandbox_args = [*workload.sandbox_args, "--seed", str(workload.seed_base + run)]
    watch = CpuWatch()
    with Sandbox(project_python, sandbox_args, run_dir / "sandbox.log") as box:
        cmd = tool.command(workload, csv, run_dir, box.base_url)
        env = child_env()
        if workload.timed_s is None:
            finished = run_bounded(cmd, run_dir, env, timeout_s=workload.timeout_s)
            ended_early = False
        else:
            finished, ended_early = _timed(cmd, run_dir, env, box, workload)
        stats = box.stats()
        sandbox_cpu = box.cpu_s()
    summary = finished.summary() or {}
    foreign_cpu_s, _ = watch.foreign()
    record = RunRecord(
        tool=tool.name,
        workload=workload.key,
        run=run,
        finished=finished,
        stats=stats,
        rows=workload.rows,
        ok_rows=tool.ok_rows(summary),
        sandbox_cpu_s=sandbox_cpu,
        timed_s=workload.timed_s,
        ended_early=ended_early,
        summary=summary,
        foreign_cpu_s=foreign_cpu_s,
    )
    record.figures = {m.key: m.read(record) for m in workload.metrics}
    shown = ", ".join(
        f"{m.key}={m.fmt(v)}" for m in workload.metrics if (v := record.figures[m.key]) is not None
    )
    log(
        f"  {tool.name} {workload.key} run {run}: {shown}; {stats.get('requests_total')} requests, "
        f"{stats.get('rate_limited')} 429s, {record.ok_rows} ok, {finished.wall_s:.1f} s wall, "
        f"{finished.cpu_s:.1f} s CPU, exit {finished.returncode}; others used {foreign_cpu_s:.0f} CPU-s"
    )
    return record


def _timed(
    cmd: Sequence[str], run_dir: Path, env: dict[str, str], box: Sandbox, workload: Workload
) -> tuple[Finished, bool]:
    """Let the tool send for ``timed_s`` from its first real request (the sandbox's 2nd arrival);
    then stop it. Returns how it ended and whether it ran out of rows first."""
    assert workload.timed_s is not None
    tool = ToolRun(cmd, run_dir, env)
    try:
        return _let_send(tool, run_dir, box, workload.timed_s)
    finally:
        tool.stop()  # a no-op once it has been reaped; stops it when this is interrupted


def _let_send(tool: ToolRun, run_dir: Path, box: Sandbox, timed_s: float) -> tuple[Finished, bool]:
    deadline = time.monotonic() + FIRST_REQUEST_TIMEOUT_S
    while int(box.stats()["requests_total"]) < 2:
        if tool.poll() or time.monotonic() > deadline:
            log(f"  {run_dir.name}: no requests reached the sandbox")
            gave_up = not tool.poll()
            tool.stop()
            return tool.finish(timed_out=gave_up), False
        time.sleep(0.25)
    # the 2nd arrival was at most one poll ago, so stopping this long from now covers the window
    stop_at = time.monotonic() + timed_s + 0.5
    ended_early = False
    while time.monotonic() < stop_at:
        if tool.poll():
            ended_early = True
            break
        time.sleep(0.2)
    tool.stop()
    return tool.finish(), ended_early


def median_figures(records: Sequence[RunRecord], metric: Metric) -> float | None:
    values = [v for r in records if (v := r.figures.get(metric.key)) is not None]
    return statistics.median(values) if values else None
