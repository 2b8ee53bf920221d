"""Processes this benchmark starts: the sandbox, and one tool run at a time; each bounded, each stopped.

Both run in their own process group (``start_new_session``), so stopping one stops whatever it started;
they are stopped by their group id, never by name. A tool's CPU time and peak RSS come from
``os.wait4`` on its pid (user + system time of the process and the children it waited for).
``CpuWatch`` tells how much CPU the rest of the machine used meanwhile. Nothing here talks to anything
but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_KEY = "sk-bench-not-a-real-key"
SANDBOX_START_S = 60.0
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def log(message: str) -> None:
    """Progress on stderr; stdout is kept for the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every tool run: a fake key, no base URL of the user's, no proxy."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARIABLES}
    env.pop("ANTHROPIC_BASE_URL", None)
    env.pop("VIRTUAL_ENV", None)
    env["ANTHROPIC_API_KEY"] = API_KEY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def stop_group(proc: subprocess.Popen[Any], *, grace_s: float = 10.0) -> None:
    """SIGTERM the process's group, then SIGKILL it after ``grace_s``; reap the leader."""
    if proc.poll() is not None:
        # the leader is gone; anything it left in its group goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class Sandbox:
    """``pipeline sandbox --port 0 ARGS`` in its own process and group, its log in a file.

    :param python: the project venv's python (the sandbox is the project's own CLI).
    """

    def __init__(self, python: str, args: Sequence[str], log_path: Path) -> None:
        self.cmd = [python, "-m", "pipeline", "sandbox", "--host", "127.0.0.1", "--port", "0", *args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> Sandbox:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + SANDBOX_START_S
        while time.monotonic() < deadline:
            match = re.search(r"http://127\.0\.0\.1:\d+", self.log_path.read_text(errors="replace"))
            if match:
                self.base_url = match.group(0)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sandbox did not start: {self.log_path.read_text(errors='replace')[-500:]!r}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        """``GET /_sandbox/stats``: counters, and the arrival and 429 times (seconds since its start)."""
        with urllib.request.urlopen(f"{self.base_url}/_sandbox/stats", timeout=30) as reply:
            data: dict[str, Any] = json.loads(reply.read())
        return data

    def cpu_s(self) -> float:
        """User + system CPU seconds the sandbox has used so far (from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)


@dataclass(slots=True)
class Finished:
    """How one tool run ended.

    :param wall_s: from spawn to exit (or to the kill, for a run stopped on purpose or on timeout).
    :param cpu_s: user + system seconds from ``os.wait4``.
    """

    returncode: int
    wall_s: float
    cpu_s: float
    rss_mb: float
    timed_out: bool
    stopped: bool
    stdout_tail: str
    stderr_tail: str

    def summary(self) -> dict[str, Any] | None:
        """The last JSON object the tool printed on stdout, if any."""
        for line in reversed(self.stdout_tail.strip().splitlines()):
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict):
                    return data
        return None


class ToolRun:
    """One tool process in its own group; stdout and stderr go to files in ``directory``."""

    def __init__(self, cmd: Sequence[str], directory: Path, env: Mapping[str, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._out = (directory / "tool.stdout").open("w+")
        self._err = (directory / "tool.stderr").open("w+")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            list(cmd),
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=directory,
            start_new_session=True,
        )
        self._usage: Any = None
        self._ended = 0.0
        self._stopped = False

    def poll(self) -> bool:
        """Whether the tool has exited (reaping it, with its rusage, if so)."""
        if self._usage is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self._ended = time.monotonic()
                self._usage = usage
                self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self._usage is not None

    def wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM its group, then SIGKILL; reaps it (once reaped, only what is left of its group goes)."""
        if self.poll():
            self._kill_group()
            return
        self._stopped = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        if not self.wait(grace_s):
            self._kill_group()
            self.wait(30)
        self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def finish(self, *, timed_out: bool = False) -> Finished:
        if not self.poll():
            self.stop()
        usage = self._usage
        self._out.seek(0)
        self._err.seek(0)
        stdout, stderr = self._out.read(), self._err.read()
        self._out.close()
        self._err.close()
        return Finished(
            returncode=int(self.proc.returncode),
            wall_s=self._ended - self.started,
            cpu_s=float(usage.ru_utime + usage.ru_stime) if usage is not None else 0.0,
            rss_mb=float(usage.ru_maxrss) / 1024 if usage is not None else 0.0,
            timed_out=timed_out,
            stopped=self._stopped,
            stdout_tail=stdout[-4000:],
            stderr_tail=stderr[-3000:],
        )


def run_bounded(cmd: Sequence[str], directory: Path, env: Mapping[str, str], *, timeout_s: float) -> Finished:
    """Run a tool to its end, or stop it (SIGTERM, SIGKILL) past ``timeout_s``."""
    run = ToolRun(cmd, directory, env)
    try:
        if run.wait(timeout_s):
            return run.finish()
        log(f"  {directory.name}: still running after {timeout_s:.0f} s; stopping it")
        run.stop()
        return run.finish(timed_out=True)
    finally:
        run.stop()  # a no-op once it has been reaped; stops it when this is interrupted


class CpuWatch:
    """CPU other processes used meanwhile: the machine's busy time (/proc/stat) minus this process's
    and its reaped children's (every child here is reaped before its figures are read)."""

    def __init__(self) -> None:
        self.busy0, self.own0, self.wall0 = self._busy(), self._own(), time.monotonic()

    @staticmethod
    def _busy() -> float:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def foreign(self) -> tuple[float, float]:
        """(CPU seconds other processes used, wall seconds) since the watch started."""
        return max(
            0.0, (self._busy() - self.busy0) - (self._own() - self.own0)
        ), time.monotonic() - self.wall0
