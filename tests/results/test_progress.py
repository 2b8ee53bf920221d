"""The live progress display: drawn in a real pseudo-terminal, plain log lines anywhere else."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

from jobkit import run_subprocess, text_job
from pipeline.catalog.prices import price_for
from pipeline.results.progress import Limits, Progress, plain_line

ANSI_CURSOR_UP = b"\x1b[1A"


def _slow_job(tmp_path: Path, rows: int = 8) -> Path:
    """A text job paced at 240 requests a minute, so a run lasts a couple of seconds."""
    job = text_job(tmp_path, rows=rows)
    text = job.read_text(encoding="utf-8").replace("concurrency = 4", "concurrency = 2")
    job.write_text(text + "requests_per_minute = 240\n", encoding="utf-8")
    return job


def _run_in_pty(args: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run ``python -m pipeline ARGS`` with a pseudo-terminal as its stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env["TERM"] = "xterm-256color"
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    output = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(timeout=60), bytes(output)


def test_live_progress_is_drawn_in_a_terminal(tmp_path: Path) -> None:
    """On a terminal the run redraws rows, rates against limits, dollars and ETA in place."""
    job = _slow_job(tmp_path)
    code, output = _run_in_pty(["run", str(job), "--sandbox"], tmp_path)
    assert code == 0, output.decode(errors="replace")
    assert output.count(ANSI_CURSOR_UP) >= 4  # redrawn, not printed line after line
    text = output.decode("utf-8", errors="replace")
    assert "rows" in text
    assert "8/8" in text  # the final frame
    assert "ok 8" in text
    assert "(limit 240)" in text
    assert "so far" in text
    assert "projected" in text
    assert "ETA" in text
    assert "8 rows sent: 8 ok" in text  # the summary follows the display


def test_no_display_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Redirected to a file or pipe, a run writes plain lines: no escape codes, no bar."""
    job = _slow_job(tmp_path, rows=4)
    result = run_subprocess(["run", str(job), "--sandbox"], key=None)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr
    assert "━" not in result.stderr
    assert "4 rows sent: 4 ok" in result.stderr


@dataclass
class _Tally:
    to_do: int = 0
    ok: int = 0
    error: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation: int = 0
    cache_read: int = 0


def test_plain_progress_line_has_rates_cost_projection_and_eta() -> None:
    """The plain line reports rows, per-minute rates, dollars so far and projected, and time left."""
    now = [100.0]
    tally = _Tally(to_do=100)
    sent = [0]
    progress = Progress(
        tally,
        limits=Limits(requests=50),
        price=price_for("claude-haiku-4-5"),
        requests_sent=lambda: sent[0],
        reading_done=lambda: True,
        live=False,
        clock=lambda: now[0],
    )
    progress.snapshot()
    now[0] += 30.0
    tally.ok, tally.error, sent[0] = 24, 1, 26
    tally.input_tokens, tally.output_tokens = 250_000, 50_000
    snap = progress.snapshot()
    assert snap.requests_per_min == 52
    assert snap.cost_usd == 0.5  # 250k input at $1 + 50k output at $5 per million
    assert snap.projected_usd == 2.0
    assert snap.eta_s == 90.0
    line = plain_line(snap)
    assert line.startswith("25/100 rows done (24 ok, 1 error), 52 requests/min")
    assert "$0.5000 so far, ~$2.0000 projected" in line
    assert line.endswith("ETA 1:30")
