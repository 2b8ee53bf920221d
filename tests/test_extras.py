"""A missing optional dependency is one line naming the extra to install, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobkit import text_job

# Runs the real CLI in a child whose import system cannot find a module (as after `pip install .`).
WITHOUT = """
import sys
BLOCKED = sys.argv.pop(1)
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
from pipeline.cli import main
sys.argv = ["pipeline", *sys.argv[1:]]
main()
"""


def run_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT, module, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def run_without_aiohttp(*args: str) -> subprocess.CompletedProcess[str]:
    return run_without("aiohttp", *args)


def test_sandbox_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    """`run --sandbox` and `pipeline sandbox` without aiohttp exit 2 with the pip command to run."""
    job = text_job(tmp_path, rows=2)
    for args in (["run", str(job), "--sandbox"], ["sandbox", "--port", "0"]):
        done = run_without_aiohttp(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"pipeline: error: {'--sandbox' if args[0] == 'run' else 'pipeline sandbox'} needs aiohttp,"
            " which is not installed: pip install 'pipeline[sandbox]'"
        ]
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_the_ray_engine_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    """`run --engine ray` (or `[run] engine = "ray"`) without Ray exits 2 with the pip command to run."""
    job = text_job(tmp_path, rows=2)
    (tmp_path / "in_file").mkdir()
    in_file = text_job(tmp_path / "in_file", rows=2)
    in_file.write_text(in_file.read_text() + '\n[run]\nengine = "ray"\n')
    for args in (["run", str(job), "--engine", "ray", "--sandbox"], ["run", str(in_file), "--sandbox"]):
        done = run_without("ray", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            "pipeline: error: --engine ray needs ray, which is not installed: pip install 'pipeline[ray]'"
        ]
    assert not (tmp_path / "out" / "results.parquet").exists()
