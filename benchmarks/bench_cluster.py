"""Target 7, the Ray engine: one shared rate limit over several workers, and image preparation per worker.

    .venv/bin/python benchmarks/bench_cluster.py [--quick] [--only rates|images]

Needs the ``ray`` extra. Starts a two-node Ray cluster on this machine (loopback only, token auth,
one logical CPU per node, as many as the cores; ``tests/raykit.py``), then runs ``pipeline run`` as
a child process, once with the local engine and once per worker count with ``--engine ray
--ray-address ... --workers N``, each against a sandbox of its own:

- Rate: the sandbox enforces 1,200 requests/min with 150 ± 50 ms latency, the job states the same
  limit (concurrency 16); 2 and 4 workers. Each run lasts 2 min from the sandbox's first arrival
  (30 s with ``--quick``), then gets SIGTERM. *Steady rate*: requests the sandbox accepted from 10 s
  to the end, per minute, as a share of the limit; *429s* per 1,000 requests over the run (as target 1).
- Images: 12-megapixel photo-like JPEGs (~2.7 MB, the generator of target 4), prepared for a 1568 px
  long edge on the workers, sent to a sandbox with no limits and no latency; 1, 2 and 4 workers.
  *Images/s*: requests the sandbox received per second between its first and its last arrival (the
  start-up of Ray and of the workers excluded, for both engines alike).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _harness import (
    API_KEY,
    ROOT,
    Figure,
    Sandbox,
    bench_parser,
    finish,
    log,
    run_to_end,
    work_directory,
    write_image_rows,
    write_job,
    write_pictures,
    write_text_rows,
)
from _rates import RateRun, timed_run

sys.path.insert(0, str(ROOT / "tests"))
import raykit  # the tests' loopback cluster, shared rather than copied

RPM = 1200
LATENCY = ["--latency-ms", "150", "--jitter-ms", "50"]
WARMUP_S = 10.0
RATE_WORKERS = (2, 4)
IMAGE_WORKERS = (1, 2, 4)
PHOTOS = 8
PHOTO_SIZE = (4000, 3000)
PARTS = frozenset({"rates", "images"})


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """The cluster's address, for ``--ray-address``; its nodes hold the key, as a real cluster's would."""
    with raykit.two_node_cluster({"ANTHROPIC_API_KEY": API_KEY}, cpus_per_node=1) as two_nodes:
        yield str(two_nodes.address)


def run(workdir: Path, *, quick: bool, parts: frozenset[str] = PARTS) -> list[Figure]:
    duration = 30.0 if quick else 120.0
    figures: list[Figure] = []
    log("target 7: starting a two-node Ray cluster on loopback")
    with cluster() as address:
        if "rates" in parts:
            log(f"target 7: requests-bound runs, {RPM}/min, {duration:.0f} s each")
            local = _rate_run(workdir / "rate-local", duration, ())
            figures += _rate_figures(("7a", "7b"), "local engine", local, duration)
            for n, keys in zip(RATE_WORKERS, (("7c", "7d"), ("7e", "7f")), strict=True):
                ray = _rate_run(workdir / f"rate-ray-{n}", duration, _ray(address, n))
                figures += _rate_figures(keys, f"Ray, {n} workers", ray, duration)
        if "images" not in parts:
            return figures

        rows = 40 if quick else 160
        log(f"target 7: image preparation, {rows} rows of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs")
        base, busy = _images_per_s(workdir / "images-local", rows, ())
        figures.append(
            Figure(
                "7g",
                "12 MP JPEGs prepared and sent, local engine",
                "report",
                f"{base:.1f} images/s (load average {busy:.1f})",
                None,
                {"images_per_s": base, "load_average": busy},
            )
        )
        one = None
        cores = os.cpu_count() or 1
        for n, key in zip(IMAGE_WORKERS, ("7h", "7i", "7j"), strict=True):
            rate, busy = _images_per_s(workdir / f"images-ray-{n}", rows, _ray(address, n))
            one = one or rate
            scaling = rate / one if one else 0.0
            figures.append(
                Figure(
                    key,
                    f"12 MP JPEGs prepared and sent, Ray, {n} worker{'s' if n > 1 else ''}",
                    f"near-linear up to the cores ({cores} here)",
                    f"{rate:.1f} images/s ({scaling:.2f}x 1 worker, {rate / base:.2f}x the local engine; "
                    f"load average {busy:.1f})",
                    None if n == 1 else scaling >= 0.8 * min(n, cores),
                    {
                        "images_per_s": rate,
                        "scaling": scaling,
                        "vs_local": rate / base,
                        "foreign_cores": busy,
                    },
                )
            )
    return figures


def _ray(address: str, workers: int) -> tuple[str, ...]:
    return ("--engine", "ray", "--ray-address", address, "--workers", str(workers))


def _rate_run(directory: Path, duration: float, run_args: tuple[str, ...]) -> RateRun:
    def write(folder: Path) -> Path:
        write_text_rows(folder / "in.csv", int(RPM * (duration + 60) / 60 * 1.5))
        return write_job(folder, rpm=RPM)

    return timed_run(
        directory,
        sandbox_args=["--rpm", RPM, *LATENCY],
        write_inputs=write,
        duration_s=duration,
        run_args=run_args,
    )


def _rate_figures(keys: tuple[str, str], label: str, rr: RateRun, duration: float) -> list[Figure]:
    end = duration - 1.0
    rate = rr.request_rate_per_min(WARMUP_S, end)
    share = rate / RPM
    per_k = rr.per_thousand_429()
    note = " (ran out of rows)" if rr.ended_early else ""
    return [
        Figure(
            keys[0],
            f"{label}: steady requests/min, {WARMUP_S:.0f}–{end:.0f} s",
            "≥ 97 % of the limit",
            f"{100 * share:.1f} % ({rate:,.0f} of {RPM:,}/min){note}",
            share >= 0.97 and not rr.ended_early,
            {"rate_per_min": rate, "share": share},
        ),
        Figure(
            keys[1],
            f"{label}: 429s over the run",
            "≤ 1 per 1,000 requests",
            f"{per_k:.1f} per 1,000 ({rr.rate_limited} of {rr.requests_total})",
            per_k <= 1.0,
            {"rate_limited": rr.rate_limited, "requests_total": rr.requests_total},
        ),
    ]


def _images_per_s(directory: Path, rows: int, run_args: tuple[str, ...]) -> tuple[float, float]:
    """Images/s between the sandbox's first and last arrival, and the machine's load average meanwhile.

    The load average (runnable processes, 1 minute; this machine has 2 cores) says how contended a
    CPU-bound figure was: the cluster's own workers are not this process's children, so their CPU
    time cannot be told apart from other processes' the way ``CpuWatch`` does for target 4.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pictures = write_pictures(directory.parent / "photos", PHOTOS, PHOTO_SIZE)
    write_image_rows(directory / "in.csv", rows, [f"../photos/{name}" for name in pictures])
    # the default max_tokens: 16 would cut the sandbox's caption, a max_tokens error row
    job = write_job(directory, images=True)
    with Sandbox() as box:
        done = run_to_end(job, box.base_url, *run_args, timeout_s=900)
        load = os.getloadavg()[0]
        stats: dict[str, Any] = box.stats()
    arrivals = sorted(stats["arrivals"])
    log(f"  {directory.name}: {len(arrivals)} requests, exit {done.returncode}")
    if done.returncode != 0 or len(arrivals) < 2:
        raise RuntimeError(f"{directory.name} failed: {done.stderr_tail}")
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), load


def main() -> None:
    parser = bench_parser(__doc__, "30 s rate runs and 40 image rows")
    parser.add_argument("--only", choices=sorted(PARTS), help="run only the rate or only the image part")
    args = parser.parse_args()
    parts = frozenset({args.only}) if args.only else PARTS
    with work_directory(args.workdir) as workdir:
        finish(run(workdir, quick=args.quick, parts=parts), args.json_out)


if __name__ == "__main__":
    main()
