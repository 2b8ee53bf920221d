"""Core throughput and memory figures, each run against a sandbox in its own process on loopback.

    .venv/bin/python benchmarks/core.py [--text-rows 20000] [--image-rows 10000]

Prints rows/s end to end (read, build, send, parse, journal, compact) for a text job with zero
latency and no limits, and peak RSS of the `pipeline run` process for a 10,000-row image job.
Reports figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def start_sandbox() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox", "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"http://[\d.]+:\d+", line)
    if not match:
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, match.group(0)


def write_job(directory: Path, *, images: bool) -> Path:
    image_line = 'images = ["img"]\n' if images else ""
    job = directory / "job.toml"
    job.write_text(
        f"""name = "bench"
input = "in.csv"
output = "out"
id_column = "id"
[request]
model = "claude-haiku-4-5"
max_tokens = 64
prompt = "Say something short about {{topic}}."
{image_line}[limits]
concurrency = 64
max_attempts = 3
timeout_s = 30
"""
    )
    return job


def run_pipeline(job: Path, base_url: str) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS (MB) of that one child (os.wait4), and its JSON summary."""
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench"}
    cmd = [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", base_url, "--json"]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"run failed ({child.returncode}): {stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["client_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    return wall, usage.ru_maxrss / 1024, summary


def bench_text(rows: int, base_url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        lines = "".join(f"{i},topic {i}\n" for i in range(rows))
        (directory / "in.csv").write_text("id,topic\n" + lines)
        wall, rss, summary = run_pipeline(write_job(directory, images=False), base_url)
        ok = summary["rows"]["ok"]  # type: ignore[index]
        print(f"text rows: {rows}, ok {ok}, wall {wall:.1f}s, {rows / wall:.0f} rows/s end to end, "
              f"client CPU {summary['client_cpu_s']}s ({1000 * summary['client_cpu_s'] / rows:.2f} ms/row), "
              f"peak RSS {rss:.0f} MB")  # fmt: skip


def bench_images(rows: int, base_url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        pics = directory / "pics"
        pics.mkdir()
        for k in range(50):  # 50 distinct 1024x768 JPEGs, reused across rows
            buffer = io.BytesIO()
            Image.new("RGB", (1024, 768), (k * 5 % 255, 100, 150)).save(buffer, "JPEG", quality=90)
            (pics / f"{k}.jpg").write_bytes(buffer.getvalue())
        lines = "".join(f"{i},topic {i},pics/{i % 50}.jpg\n" for i in range(rows))
        (directory / "in.csv").write_text("id,topic,img\n" + lines)
        wall, rss, summary = run_pipeline(write_job(directory, images=True), base_url)
        ok = summary["rows"]["ok"]  # type: ignore[index]
        print(
            f"image rows: {rows}, ok {ok}, wall {wall:.1f}s, {rows / wall:.0f} rows/s, peak RSS {rss:.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text-rows", type=int, default=20_000)
    parser.add_argument("--image-rows", type=int, default=10_000)
    args = parser.parse_args()
    sandbox, base_url = start_sandbox()
    try:
        print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
        if args.text_rows:
            bench_text(args.text_rows, base_url)
        if args.image_rows:
            bench_images(args.image_rows, base_url)
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


if __name__ == "__main__":
    main()
