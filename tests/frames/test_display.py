"""Progress from Python: the CLI's plain lines in a script, the application's logging when it has one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from jobkit import ROOT
from pipeline.frames.display import bundle, in_notebook
from pipeline.results.progress import Limits, Snapshot, plain_line

SCRIPT = """
import logging
import pipeline
import pipeline.results.progress

pipeline.results.progress.PLAIN_EVERY_S = 0.2  # the CLI's line every 10 s, sooner for the test
{setup}
job = pipeline.Job(
    model="claude-haiku-4-5", max_tokens=16, prompt="About {{topic}}.", limits={{"concurrency": 1}}
)
with pipeline.Sandbox(latency_ms=150):
    job.run({{"topic": [f"topic {{i}}" for i in range(6)]}})
"""
PLAIN = re.compile(r"^pipeline: \d+/\d+\+? rows done \(\d+ ok, \d+ error\), \d+ requests/min, ", re.MULTILINE)


def run_script(tmp_path: Path, setup: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT.format(setup=setup))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        | {"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )


def test_a_script_prints_the_clis_plain_progress_lines_and_summary(tmp_path: Path) -> None:
    """stderr is no terminal here: ``pipeline:`` lines as the CLI's, then its summary; no escape code."""
    done = run_script(tmp_path)
    assert done.returncode == 0, done.stderr
    assert PLAIN.search(done.stderr), done.stderr
    assert "6 rows sent: 6 ok, 0 error (0 already done, skipped)" in done.stderr
    assert f"results: {tmp_path / 'cache' / 'pipeline' / 'runs'}" in done.stderr
    assert "\x1b" not in done.stderr
    assert done.stdout == ""


def test_an_application_that_set_up_logging_gets_the_lines_in_its_own_format(tmp_path: Path) -> None:
    """With logging configured, progress goes to the application's handlers, not a second copy."""
    done = run_script(tmp_path, 'logging.basicConfig(level=logging.INFO, format="APP %(name)s %(message)s")')
    assert done.returncode == 0, done.stderr
    assert re.search(r"^APP pipeline.run \d+/\d+\+? rows done", done.stderr, re.MULTILINE), done.stderr
    assert not PLAIN.search(done.stderr)


def test_the_notebook_display_is_the_terminal_display_in_html_with_the_plain_line_as_text() -> None:
    """One bundle: rich's rendering of the live display as HTML, and the CLI's plain line as text."""
    snap = Snapshot(
        done=3, total=10, total_known=True, ok=2, error=1, requests_per_min=12, input_per_min=3400,
        output_per_min=200, cost_usd=0.0123, projected_usd=0.041, eta_s=65, elapsed_s=20,
    )  # fmt: skip
    shown = bundle(snap, Limits(requests=50))
    assert shown["text/plain"] == f"pipeline: {plain_line(snap)}"
    html = shown["text/html"]
    assert html.startswith("<pre")
    assert html.endswith("</pre>")
    for part in ("3/10", "ok 2", "error 1", "requests 12/min (limit 50)", "$0.0123 so far", "ETA 1:05"):
        assert part in html
    assert "\x1b" not in html


def test_a_plain_python_process_is_not_a_notebook() -> None:
    """Without an IPython kernel the progress is the CLI's, not a notebook output."""
    assert not in_notebook()
