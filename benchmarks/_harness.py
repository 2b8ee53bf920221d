"""Shared machinery of the benchmark suite: the sandbox subprocess, job files, input tables, child runs.

Every benchmark talks to a sandbox in its *own* process (``python -m pipeline sandbox --port 0``), on
loopback, never to the network; every process started here is stopped here, by its pid, and every
wait is bounded. Peak RSS and CPU time of a ``pipeline run`` child come from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
API_KEY = "sk-bench-not-a-real-key"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class Figure:
    """One line of the suite's table.

    :param key: the issue's target number and a letter, e.g. ``"1a"``.
    :param ok: ``None`` when the figure is reported without a pass/fail reading.
    """

    key: str
    name: str
    target: str
    measured: str
    ok: bool | None
    detail: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "FAIL")


def table(figures: Sequence[Figure]) -> str:
    """A Markdown table: figure, target, measured, pass/fail."""
    rows = [("", "figure", "target", "measured", "result")]
    rows += [(f.key, f.name, f.target, f.measured, verdict(f.ok)) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def figures_json(figures: Sequence[Figure]) -> list[dict[str, Any]]:
    return [
        {
            "key": f.key,
            "figure": f.name,
            "target": f.target,
            "measured": f.measured,
            "ok": f.ok,
            "result": verdict(f.ok),
            "detail": f.detail,
        }
        for f in figures
    ]


def figures_from_json(data: Sequence[dict[str, Any]]) -> list[Figure]:
    return [Figure(d["key"], d["figure"], d["target"], d["measured"], d["ok"], d["detail"]) for d in data]


def bench_parser(doc: str | None, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark module takes: ``--quick``, ``--workdir``, ``--json-out``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--workdir", type=Path, help="work here and keep it (default: a temporary directory)")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    return parser


@contextlib.contextmanager
def work_directory(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        yield Path(tmp)


def finish(figures: Sequence[Figure], json_out: Path | None) -> None:
    """Print the module's table; write its figures for ``run_all`` when asked."""
    print(table(figures))
    if json_out is not None:
        json_out.write_text(json.dumps(figures_json(figures), indent=2, default=str))


def own_rss_mb() -> float:
    """This process's resident set size now (a child forked from it starts its ``ru_maxrss`` here)."""
    return _vm_rss_mb("self")


def _vm_rss_mb(pid: int | str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the sandbox


class Sandbox:
    """``python -m pipeline sandbox --port 0 ARGS`` in its own process, stopped on exit.

    :param args: extra CLI flags, e.g. ``["--rpm", "600", "--latency-ms", "150"]``.
    """

    def __init__(self, args: Sequence[str] = ()) -> None:
        self.args = [str(a) for a in args]
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Sandbox:
        cmd = [PYTHON, "-m", "pipeline", "sandbox", "--port", "0", *self.args]
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT
        )
        assert self.proc.stderr is not None
        # the one status line; a sandbox that dies instead closes stderr, so readline returns
        line = self.proc.stderr.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            self.stop()
            raise RuntimeError(f"sandbox did not start: {line!r}")
        self.base_url = match.group(0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats`` (the sandbox answers it without rate limits)."""
        with urllib.request.urlopen(f"{self.base_url}/_sandbox/stats", timeout=10) as reply:
            return json.loads(reply.read())

    def requests_total(self) -> int:
        return int(self.stats()["requests_total"])

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.base_url}/_sandbox/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def cpu_s(self) -> float:
        """User + system CPU seconds the sandbox process has used so far."""
        return proc_cpu_s(self.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# --------------------------------------------------------------------------- jobs and inputs


def write_job(
    directory: Path,
    *,
    prompt: str = "Say something short about {topic}.",
    max_tokens: int = 64,
    images: bool = False,
    concurrency: int = 16,
    rpm: float | None = None,
    itpm: float | None = None,
    otpm: float | None = None,
    max_attempts: int = 8,
    timeout_s: float = 30,
) -> Path:
    """``directory/job.toml`` reading ``in.csv`` (id, topic[, img]) and writing ``out/``."""
    limits = [f"concurrency = {concurrency}", f"max_attempts = {max_attempts}", f"timeout_s = {timeout_s}"]
    for key, value in (
        ("requests_per_minute", rpm),
        ("input_tokens_per_minute", itpm),
        ("output_tokens_per_minute", otpm),
    ):
        if value is not None:
            limits.append(f"{key} = {value:g}")
    image_line = 'images = ["img"]\n' if images else ""
    job = directory / "job.toml"
    job.write_text(
        f'name = "bench"\ninput = "in.csv"\noutput = "out"\nid_column = "id"\n'
        f'[request]\nmodel = "claude-haiku-4-5"\nmax_tokens = {max_tokens}\n'
        f"prompt = {json.dumps(prompt)}\n{image_line}"
        "[limits]\n" + "\n".join(limits) + "\n"
    )
    return job


def write_text_rows(path: Path, rows: int, *, topic_pad: int = 0, note_chars: int = 0) -> None:
    """A CSV of ``rows`` text rows: ``id,topic`` (``topic_pad`` lengthens each topic), plus a ``note``
    column of ``note_chars`` characters the job does not use (to make a wide, realistic table)."""
    pad = "x" * topic_pad
    note = "," + ("lorem ipsum dolor sit amet " * (note_chars // 27 + 1))[:note_chars] if note_chars else ""
    with path.open("w") as out:
        out.write("id,topic" + (",note" if note_chars else "") + "\n")
        chunk = 100_000
        for start in range(0, rows, chunk):
            out.write("".join(f"{i},topic {i}{pad}{note}\n" for i in range(start, min(rows, start + chunk))))


def write_image_rows(path: Path, rows: int, pictures: Sequence[str]) -> None:
    """A CSV of ``rows`` rows ``id,topic,img`` cycling through ``pictures`` (paths relative to the CSV)."""
    n = len(pictures)
    with path.open("w") as out:
        out.write("id,topic,img\n")
        out.write("".join(f"{i},topic {i},{pictures[i % n]}\n" for i in range(rows)))


def photo_jpeg(width: int, height: int, seed: int, *, quality: int = 90, grain: float = 1.0) -> bytes:
    """A photo-like JPEG (smooth gradients, structure and grain), so its size and decode cost are realistic.

    A flat colour would compress to almost nothing and decode unrealistically fast; this comes out
    about 2.7 MB at 4000x3000 and 180 KB at 1024x768, like camera and web photos. ``grain=0`` makes a
    smooth, low-detail picture (about 0.5 MB at 4000x3000).
    """
    grad = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    if seed % 2:
        grad = grad.transpose(Image.Transpose.ROTATE_180)
    rad = Image.radial_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    extent = (-2.2 + 0.05 * seed, -1.2, 0.8, 1.2)
    mandel = Image.effect_mandelbrot((max(1, width // 4), max(1, height // 4)), extent, 48)
    mandel = mandel.resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.effect_noise((max(1, width // 2), max(1, height // 2)), 40 + seed)
    noise = noise.resize((width, height), Image.Resampling.BILINEAR)
    img = Image.merge(
        "RGB",
        (
            Image.blend(grad, noise, 0.35 * grain),
            Image.blend(mandel, noise, 0.25 * grain),
            Image.blend(rad, mandel, 0.5),
        ),
    )
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_pictures(directory: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` distinct photo-like JPEGs under ``directory/pics``; their paths relative to ``directory``."""
    pics = directory / "pics"
    pics.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        path = pics / f"{k}.jpg"
        if not path.exists():
            path.write_bytes(photo_jpeg(*size, seed=k))
        names.append(f"pics/{k}.jpg")
    return names


# --------------------------------------------------------------------------- pipeline runs


@dataclass(slots=True)
class Run:
    """How one ``pipeline run`` child went."""

    returncode: int
    wall_s: float
    rss_mb: float
    cpu_s: float
    summary: dict[str, Any] | None
    stderr_tail: str
    started_mono: float
    timed_out: bool = False
    # ru_maxrss is at least what the parent held when it forked the child: keep the parent small
    parent_rss_mb: float = 0.0
    # (seconds since start, VmRSS MB) sampled while it ran, when asked for
    rss_timeline: list[tuple[float, float]] = field(default_factory=list)

    def rss_at(self, share: float) -> float:
        """Sampled RSS at ``share`` (0..1) of the wall time (the last sample before it)."""
        before = [mb for t, mb in self.rss_timeline if t <= share * self.wall_s]
        return before[-1] if before else 0.0


@functools.cache
def compile_pipeline() -> None:
    """Write the package's bytecode once, as ``pip install`` does for a user: a source tree run with
    PYTHONDONTWRITEBYTECODE set would otherwise compile every module in every measured run."""
    compileall.compile_dir(str(ROOT / "pipeline"), quiet=1)


def run_command(job: Path, base_url: str, *extra: str, prefix: Sequence[str] = ()) -> list[str]:
    compile_pipeline()
    return [*prefix, PYTHON, "-m", "pipeline", "run", str(job), "--base-url", base_url, "--json", *extra]


def child_env() -> dict[str, str]:
    env = {**os.environ, "ANTHROPIC_API_KEY": API_KEY}
    env.pop("ANTHROPIC_BASE_URL", None)
    return env


class Child:
    """A ``pipeline run`` child whose stdout and stderr go to files in the job's directory.

    :param sample_rss_s: when set, record the child's VmRSS this often while waiting for it.
    """

    def __init__(self, cmd: Sequence[str], directory: Path, *, sample_rss_s: float | None = None) -> None:
        self._out = (directory / "run.stdout").open("w+")
        self._err = (directory / "run.stderr").open("w+")
        self.parent_rss_mb = own_rss_mb()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._err, env=child_env(), cwd=directory)
        self._status: tuple[int, Any] | None = None
        self._sample_every = sample_rss_s
        self._next_sample = self.started
        self.rss_timeline: list[tuple[float, float]] = []

    def poll(self) -> bool:
        """Whether the child has exited (reaping it with its rusage)."""
        if self._status is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._status = (status, usage)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.ended = time.monotonic()
        return self._status is not None

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s``; True when it exited."""
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            now = time.monotonic()
            if now >= deadline:
                return False
            if self._sample_every is not None and now >= self._next_sample:
                self._next_sample = now + self._sample_every
                with contextlib.suppress(OSError, ValueError):
                    self.rss_timeline.append((now - self.started, _vm_rss_mb(self.proc.pid)))
            time.sleep(0.01)
        return True

    def signal(self, signum: int) -> None:
        if not self.poll():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def finish(self, *, timed_out: bool = False) -> Run:
        """Reap the child (killing it if it is still there) and read what it reported."""
        if not self.wait(0):
            self.signal(signal.SIGKILL)
            self.wait(30)
        assert self._status is not None
        _, usage = self._status
        self._out.seek(0)
        self._err.seek(0)
        stdout, stderr = self._out.read(), self._err.read()
        self._out.close()
        self._err.close()
        summary = None
        for line in reversed(stdout.strip().splitlines()):
            with contextlib.suppress(ValueError):
                summary = json.loads(line)
                break
        return Run(
            returncode=self.proc.returncode,
            wall_s=self.ended - self.started,
            rss_mb=usage.ru_maxrss / 1024,
            cpu_s=usage.ru_utime + usage.ru_stime,
            summary=summary,
            stderr_tail=stderr[-1500:],
            started_mono=self.started,
            timed_out=timed_out,
            parent_rss_mb=self.parent_rss_mb,
            rss_timeline=self.rss_timeline,
        )


def run_to_end(
    job: Path,
    base_url: str,
    *extra: str,
    timeout_s: float,
    prefix: Sequence[str] = (),
    sample_rss_s: float | None = None,
) -> Run:
    """Run ``pipeline run JOB`` to its end (SIGTERM, then SIGKILL, past ``timeout_s``).

    :param prefix: a wrapper command (a profiler) to run it under.
    :param sample_rss_s: record the child's RSS this often (``Run.rss_timeline``).
    """
    child = Child(run_command(job, base_url, *extra, prefix=prefix), job.parent, sample_rss_s=sample_rss_s)
    if child.wait(timeout_s):
        return child.finish()
    log(f"pipeline run exceeded {timeout_s:.0f} s; stopping it")
    child.signal(signal.SIGTERM)
    child.wait(15)
    return child.finish(timed_out=True)


@contextlib.contextmanager
def started(job: Path, base_url: str, *extra: str) -> Iterator[Child]:
    """A ``pipeline run`` child for the ``with`` block; killed on the way out if still running."""
    child = Child(run_command(job, base_url, *extra), job.parent)
    try:
        yield child
    finally:
        if not child.poll():
            child.signal(signal.SIGKILL)
            child.wait(30)


def ok_rows(run: Run) -> int:
    if not run.summary:
        return 0
    rows = run.summary.get("rows", {})
    return int(rows.get("ok", 0)) if isinstance(rows, dict) else 0


class CpuWatch:
    """CPU time other processes used while a benchmark ran: the machine's busy time (/proc/stat)
    minus this process's and its reaped children's (every child here is reaped before it ends)."""

    def __init__(self) -> None:
        self.wall0 = time.monotonic()
        self.busy0 = self._busy()
        self.own0 = self._own()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def foreign(self) -> tuple[float, float]:
        """(CPU seconds used by other processes, wall seconds) since this watch started."""
        busy = self._busy() - self.busy0
        own = self._own() - self.own0
        return max(0.0, busy - own), time.monotonic() - self.wall0


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {sys.platform}"
