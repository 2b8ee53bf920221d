"""Rows paid twice per kill -9, at concurrency 16, against a sandbox with 150 ± 50 ms latency.

    .venv/bin/python benchmarks/kill_resume.py [--kills 5] [--rows 400]

Each trial starts `pipeline run`, kills it with SIGKILL after a random number of answers, reruns
it to the end, and counts from the sandbox's own per-request tally how many requests were answered
twice. Prints one line per trial and the mean.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.sandbox import SandboxConfig, running_sandbox

JOB = """name = "kill"
input = "in.csv"
output = "out"
id_column = "id"
[request]
model = "claude-haiku-4-5"
max_tokens = 32
prompt = "Say something about {topic}."
[limits]
concurrency = 16
"""


def trial(rows: int, kill_after: int, seed: int) -> tuple[int, int, int]:
    """(answers when killed, rows saved ok at the kill, requests answered twice)."""
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_sandbox(SandboxConfig(latency_ms=150, jitter_ms=50, seed=seed)) as box,
    ):
        directory = Path(tmp)
        (directory / "in.csv").write_text("id,topic\n" + "".join(f"{i},topic {i}\n" for i in range(rows)))
        (directory / "job.toml").write_text(JOB)
        cmd = [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(directory / "job.toml"),
            "--base-url",
            box.base_url,
        ]
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while box.stats()["answers_ok"] < kill_after:
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        answered = box.stats()["answers_ok"]
        status = subprocess.run(
            [*cmd[:3], "status", str(directory / "out"), "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        saved = int(status.stdout.split('"ok": ')[1].split(",")[0]) if status.stdout else 0
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        twice = sum(1 for n in box.stats()["ok_by_request"].values() if n > 1)
    return answered, saved, twice


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rows", type=int, default=400)
    args = parser.parse_args()
    rng = random.Random(7)
    paid_twice = []
    for k in range(args.kills):
        kill_after = rng.randrange(10, args.rows - 50)
        answered, saved, twice = trial(args.rows, kill_after, seed=k)
        paid_twice.append(twice)
        lost = answered - saved
        print(f"kill after {answered} answers: {saved} saved ok, {lost} answered, not saved, {twice} twice")
    mean = sum(paid_twice) / len(paid_twice)
    print(f"mean rows paid twice per kill at concurrency 16: {mean:.1f} (max {max(paid_twice)})")


if __name__ == "__main__":
    main()
