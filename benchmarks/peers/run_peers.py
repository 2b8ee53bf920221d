"""Side by side with peers: pipeline and three peer libraries on the same workloads, one table.

    .venv/bin/python benchmarks/peers/run_peers.py --nice -10       # everything, 3 runs each (~50 min)
    .venv/bin/python benchmarks/peers/run_peers.py --quick          # smoke: small inputs, 1 run (~8 min)
    .venv/bin/python benchmarks/peers/run_peers.py --only W1,W3 --tools pipeline,litellm --runs 1
    .venv/bin/python benchmarks/peers/run_peers.py --json /tmp/peers.json --keep /tmp/peers-work

The peers are installed into their own venvs under ``~/.cache/pipeline-peers`` (``--cache``), made
once and reused (``--reinstall`` makes them again); pipeline runs from the project venv that runs this
script. Every tool runs alone against a sandbox of its own (``pipeline sandbox`` in its own process on
127.0.0.1), one run at a time, each bounded in time; the median of ``--runs`` runs goes in the table.
The table goes to stdout, progress to stderr. Exit status 0 whatever the figures say; 1 when a
benchmark itself broke.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _inputs import write_image_csv, write_pictures, write_text_csv
from _peers import PEERS, Venv, default_cache, ensure_venv, installed_versions
from _processes import CpuWatch, log
from _workloads import Metric, RunRecord, Tool, Workload, median_figures, run_once, workloads

ATTEMPTS = 8
CONCURRENCY = 64
PICTURE_SIZE = (2400, 1800)
PIPELINE = "pipeline"
PIPELINE_C16 = "pipeline (concurrency 16)"
# async-batch-llm's documented cooldown (30 s after every 429, a server's retry-after as a floor) decides
# its W2 figure; this variant, shown under the table, lets the retry-after decide instead
ABL_TUNED = "async-batch-llm-cooldown-1s"
VARIANTS = {ABL_TUNED: ("async-batch-llm", ("cooldown_seconds=1",), ("W2",))}


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.0f} GB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def pipeline_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "pipeline"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"commit {commit}" + (" + uncommitted changes in pipeline/" if dirty else "")


# --------------------------------------------------------------------------- the table


def ratio(pipeline: float | None, best: float | None, metric: Metric) -> str:
    """Pipeline against the best peer, oriented so that above 1 means pipeline is better."""
    if pipeline is None or best is None:
        return "-"
    if not metric.higher_is_better:
        pipeline, best = best, pipeline
    if best == 0:
        return "equal (both 0)" if pipeline == 0 else "∞"
    return f"{pipeline / best:.2f}x"


def best_peer(values: dict[str, float | None], metric: Metric) -> tuple[str, float] | None:
    present = [(name, v) for name, v in values.items() if v is not None]
    if not present:
        return None
    pick = max if metric.higher_is_better else min
    return pick(present, key=lambda item: item[1])


def table(
    plan: Sequence[Workload], records: Sequence[RunRecord], peers: Sequence[str], tools: Sequence[str]
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table (medians) and the same as JSON rows."""
    columns = [t for t in (PIPELINE, *peers) if t in tools]
    header = ["workload", "metric", *columns, "best peer", "pipeline / best peer"]
    lines: list[list[str]] = []
    rows_json: list[dict[str, Any]] = []
    for workload in plan:
        by_tool = {t: [r for r in records if r.workload == workload.key and r.tool == t] for t in tools}
        variants = [(PIPELINE, f"{workload.key} ({workload.note})" if workload.note else workload.key)]
        if by_tool.get(PIPELINE_C16):
            variants.append((PIPELINE_C16, f"{workload.key}, pipeline at concurrency 16 (peers at 64)"))
        for pipeline_tool, label in variants:
            for metric in workload.metrics:
                medians = {t: median_figures(by_tool.get(t, []), metric) for t in columns}
                medians[PIPELINE] = median_figures(by_tool.get(pipeline_tool, []), metric)
                best = best_peer({p: medians.get(p) for p in peers if p in tools}, metric)
                cells = [
                    label,
                    metric.label,
                    *(("-" if (v := medians.get(t)) is None else metric.fmt(v)) for t in columns),
                    f"{best[0]} ({metric.fmt(best[1])})" if best else "-",
                    ratio(medians.get(PIPELINE), best[1] if best else None, metric),
                ]
                lines.append(cells)
                rows_json.append(
                    {
                        "workload": label,
                        "metric": metric.key,
                        "label": metric.label,
                        "higher_is_better": metric.higher_is_better,
                        "medians": medians,
                        "best_peer": best[0] if best else None,
                        "ratio": cells[-1],
                    }
                )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def render(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |"

    out = [render(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(render, lines)]
    return "\n".join(out), rows_json


def variant_lines(plan: Sequence[Workload], records: Sequence[RunRecord], names: Sequence[str]) -> list[str]:
    """One line per variant and workload: its medians, for beside the table."""
    lines = []
    for name in names:
        peer, knobs, _ = VARIANTS[name]
        for workload in plan:
            mine = [r for r in records if r.tool == name and r.workload == workload.key]
            if not mine:
                continue
            shown = []
            for metric in workload.metrics:
                value = median_figures(mine, metric)
                shown.append(f"{metric.label} {'-' if value is None else metric.fmt(value)}")
            lines.append(f"{workload.key}, {peer} with {', '.join(knobs)}: " + "; ".join(shown))
    return lines


# --------------------------------------------------------------------------- running


@contextmanager
def work_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-peers-") as tmp:
        yield Path(tmp)


def pipeline_command() -> tuple[str, ...]:
    """The project venv's ``pipeline`` console script (``python -m pipeline`` if it has none)."""
    script = Path(sys.executable).with_name("pipeline")
    # its bytecode written once, as for the peers' venvs (a source tree run with PYTHONDONTWRITEBYTECODE
    # set would compile every module in every measured run)
    spec = importlib.util.find_spec("pipeline")
    if spec is not None and spec.origin is not None:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)
    return (str(script),) if script.exists() else (sys.executable, "-m", "pipeline")


def write_input(workload: Workload, directory: Path, cache: Path) -> Path:
    if not workload.images:
        return write_text_csv(directory / workload.key / "in.csv", workload.rows)
    log(f"{workload.key}: {workload.rows} pictures {PICTURE_SIZE[0]}x{PICTURE_SIZE[1]} (cached in {cache})")
    pictures = write_pictures(
        cache / f"pictures-{PICTURE_SIZE[0]}x{PICTURE_SIZE[1]}", workload.rows, PICTURE_SIZE
    )
    # the CSV sits beside the pictures so its relative paths resolve for every tool
    return write_image_csv(
        cache / f"pictures-{PICTURE_SIZE[0]}x{PICTURE_SIZE[1]}" / f"in-{workload.rows}.csv", pictures
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs and short runs, 1 run each")
    parser.add_argument(
        "--runs", type=int, help="runs per tool and workload (median shown; default 3, --quick 1)"
    )
    parser.add_argument("--only", help="workloads to run, e.g. W1,W3 (default: all)")
    parser.add_argument(
        "--tools", help=f"tools to run, e.g. pipeline,litellm (default: all; '{PIPELINE_C16}' too)"
    )
    parser.add_argument("--reinstall", action="store_true", help="make the peers' venvs again")
    parser.add_argument(
        "--cache", type=Path, default=default_cache(), help="peer venvs and pictures live here"
    )
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary directory)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run this and every child at this niceness (negative needs root; -10 gives the benchmark "
        "the CPU before other work on the machine)",
    )
    parser.add_argument(
        "--json", type=Path, help="also write the table, every run and the machine as JSON here"
    )
    return parser.parse_args(argv)


def interrupted(signum: int, _frame: object) -> None:
    """SIGTERM (and SIGINT, even where a shell ignored it) unwind as KeyboardInterrupt, so every
    sandbox and tool started here is stopped on the way out."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # children inherit it
    runs = args.runs or (1 if args.quick else 3)
    plan = workloads(quick=args.quick)
    if args.only:
        wanted = {w.strip().upper() for w in args.only.split(",")}
        plan = [w for w in plan if w.key in wanted]
    peer_names = [p.name for p in PEERS]
    all_tools = [PIPELINE, PIPELINE_C16, *peer_names, *VARIANTS]
    chosen = all_tools if not args.tools else [t.strip() for t in args.tools.split(",")]
    unknown = set(chosen) - set(all_tools)
    if unknown or not plan:
        print(f"unknown tools {sorted(unknown)} or no workload chosen; tools: {all_tools}", file=sys.stderr)
        return 2

    broke = False
    tools: list[Tool] = []
    versions: dict[str, dict[str, str]] = {}
    venvs: dict[str, Venv] = {}
    for name in chosen:
        if name in VARIANTS:
            peer_name, knobs, only = VARIANTS[name]
            peer = next(p for p in PEERS if p.name == peer_name)
            try:
                venv = venvs.get(peer_name) or ensure_venv(peer, args.cache, reinstall=False)
            except RuntimeError as exc:
                log(f"{name}: could not be installed, left out: {exc}")
                broke = True
                continue
            tools.append(Tool(name, CONCURRENCY, ATTEMPTS, venv=venv, knobs=knobs, only=only))
        elif name == PIPELINE:
            tools.append(Tool(PIPELINE, CONCURRENCY, ATTEMPTS, pipeline_cmd=pipeline_command()))
        elif name == PIPELINE_C16:
            tools.append(Tool(PIPELINE_C16, 16, ATTEMPTS, pipeline_cmd=pipeline_command(), only=("W1",)))
        else:
            peer = next(p for p in PEERS if p.name == name)
            try:
                venv = ensure_venv(peer, args.cache, reinstall=args.reinstall)
                venvs[name] = venv
                versions[name] = installed_versions(venv)
            except RuntimeError as exc:
                log(f"{name}: could not be installed, left out: {exc}")
                broke = True
                continue
            tools.append(Tool(name, CONCURRENCY, ATTEMPTS, venv=venv))
    versions[PIPELINE] = {"pipeline": pipeline_version()}

    records: list[RunRecord] = []
    foreign: dict[str, tuple[float, float]] = {}
    started = time.monotonic()
    with work_directory(args.keep) as work:
        for workload in plan:
            log(f"{workload.key}: {workload.title}")
            csv = write_input(workload, work, args.cache)
            watch = CpuWatch()
            for run in range(1, runs + 1):
                for tool in tools:
                    if tool.only and workload.key not in tool.only:
                        continue
                    run_dir = work / workload.key / f"{tool.name.replace(' ', '_')}-run{run}"
                    if run_dir.exists():
                        shutil.rmtree(run_dir)
                    try:
                        records.append(
                            run_once(tool, workload, csv, run_dir, run, project_python=sys.executable)
                        )
                    except (RuntimeError, OSError, ValueError) as exc:
                        log(f"  {tool.name} {workload.key} run {run}: broke: {exc}")
                        broke = True
            foreign[workload.key] = watch.foreign()
    elapsed = time.monotonic() - started

    text, rows_json = table(plan, records, peer_names, [t.name for t in tools])
    variants = variant_lines(plan, records, [t.name for t in tools if t.name in VARIANTS])
    host = machine()
    print(text)
    print()
    for line in variants:
        print(f"Variant: {line}")
    print(
        f"Medians of {runs} run(s). Ratio = pipeline / best peer for higher-is-better figures and best peer"
        " / pipeline for lower-is-better ones: above 1 means pipeline is better."
    )
    print(f"Machine: {host['nproc']} cores ({host['cpu']}), {host['memory']}, {host['os']}, {host['date']}.")
    if args.nice:
        print(f"Every process of the benchmark ran at niceness {args.nice}.")
    print(
        "Versions: "
        + "; ".join(f"{t}: {', '.join(f'{k} {v}' for k, v in vs.items())}" for t, vs in versions.items())
    )
    for key, (cpu, wall) in foreign.items():
        share = 100 * cpu / max(wall, 1)
        print(f"Other processes used {cpu:.1f} CPU-s during {key} ({wall:.0f} s, {share:.0f} % of one core).")
    problems = [p for r in records for p in r.problems()]
    for problem in problems:
        print(f"Note: {problem}")
    print(f"Total time: {elapsed / 60:.1f} min.")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": host,
                    "versions": versions,
                    "runs": runs,
                    "nice": args.nice,
                    "quick": args.quick,
                    "table": rows_json,
                    "variants": variants,
                    "records": [r.as_json() for r in records],
                    "foreign_cpu_s": {k: v[0] for k, v in foreign.items()},
                    "problems": problems,
                },
                indent=2,
                default=str,
            )
        )
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
