"""The benchmark suite: the targets of the performance issues, one table.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only 1,3] [--json PATH] [--keep DIR]

Runs, in order, each in its own process (see each module's docstring for what it measures):

1. ``bench_known_limits``: job limits equal the sandbox's; steady rate and 429s (RPM, ITPM, OTPM).
2. ``bench_unknown_limits``: job limits 5x the sandbox's; convergence and 429s, with and without headers.
3. ``bench_overhead``: 20,000 text rows, no limits, zero latency; rows/s and client CPU per request.
4. ``bench_images``: 12 MP JPEGs to 1568 px, ``prepare_image`` against plain Pillow, 1 and 2 threads.
5. ``bench_memory``: peak RSS for 10,000 and 100,000 text rows, 1,000 and 10,000 image rows.
6. ``bench_start_resume``: first request on a 1,000,000-row CSV; rerun of the finished 100,000-row job.
7. ``bench_cluster``: the Ray engine on a two-node loopback cluster: one shared 1,200/min limit over 2
   and 4 workers, and 12 MP image preparation with 1, 2 and 4 workers, each beside the local engine.

Own processes keep the targets apart: a forked child's ``ru_maxrss`` starts at its parent's RSS, so
the process that forks ``pipeline run`` must stay small (target 4 alone grows to ~400 MB).

Figures are reported, never asserted: the exit status is 0 however they come out (1 only when a
benchmark itself broke). Everything talks to sandboxes on 127.0.0.1 in their own processes; each
module stops what it started, and a module past its time budget is interrupted (SIGINT, so it
cleans up), then its process group is killed. The full suite takes about 30 minutes, ``--quick``
about 8. Progress goes to stderr, the table to stdout, followed by the CPU time other processes used
meanwhile (the machine has 2 cores, so a test run elsewhere skews the figures).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import PYTHON, CpuWatch, Figure, figures_from_json, figures_json, log, machine, table

HERE = Path(__file__).resolve().parent
# (target, module, time budget in seconds for the full run; a quick run gets a third)
SUITES = [
    (1, "bench_known_limits", 600),
    (2, "bench_unknown_limits", 400),
    (3, "bench_overhead", 300),
    (4, "bench_images", 300),
    (5, "bench_memory", 900),
    (6, "bench_start_resume", 300),
    (7, "bench_cluster", 1500),
]


def run_module(module: str, workdir: Path, *, quick: bool, budget_s: float) -> list[Figure]:
    out = workdir / f"{module}.json"
    cmd = [PYTHON, str(HERE / f"{module}.py"), "--workdir", str(workdir), "--json-out", str(out)]
    if quick:
        cmd.append("--quick")
    # its own process group, so whatever it started can be found and stopped if it hangs
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        log(f"{module} exceeded {budget_s:.0f} s: interrupting it")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{module} exited {proc.returncode}")
    return figures_from_json(json.loads(out.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs and fewer rows, for development")
    parser.add_argument("--only", default="1,2,3,4,5,6,7", help="comma-separated target numbers to run")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = parser.parse_args()
    only = {int(n) for n in args.only.split(",") if n.strip()}

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    when = dt.datetime.now().astimezone()
    header = f"{machine()}; {when:%Y-%m-%d %H:%M %Z}; {'quick' if args.quick else 'full'} run"
    log(header)
    figures: list[Figure] = []
    contention: list[str] = []
    broken = False
    try:
        for number, module, budget in SUITES:
            if number not in only:
                continue
            watch = CpuWatch()
            try:
                figures += run_module(
                    module, workdir, quick=args.quick, budget_s=budget / (3 if args.quick else 1)
                )
            except Exception as exc:
                broken = True
                figures.append(Figure(f"{number}", f"{module} broke", "-", str(exc), False))
            foreign, wall = watch.foreign()
            contention.append(
                f"target {number}: {wall:.0f} s; other processes used {foreign:.1f} CPU-s "
                f"({100 * foreign / max(wall, 1e-9):.0f} % of one core)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    total = time.monotonic() - started
    print(f"{header}; {total / 60:.1f} min\n")
    print(table(figures))
    print()
    for line in contention:
        print(f"- {line}")
    misses = [f.key for f in figures if f.ok is False]
    print(f"\n{sum(f.ok is True for f in figures)} pass, {len(misses)} fail ({', '.join(misses) or 'none'})")
    if args.json:
        summary = {
            "machine": machine(),
            "date": when.isoformat(timespec="minutes"),
            "quick": args.quick,
            "minutes": round(total / 60, 1),
            "contention": contention,
            "figures": figures_json(figures),
        }
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
