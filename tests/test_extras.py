"""A missing optional dependency is one line naming the extra to install, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobkit import text_job

# Runs the real CLI in a child whose import system cannot find aiohttp (as after `pip install .`).
WITHOUT_AIOHTTP = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp" or name.startswith("aiohttp."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocked())
from pipeline.cli import main
sys.argv = ["pipeline", *sys.argv[1:]]
main()
"""


def run_without_aiohttp(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", WITHOUT_AIOHTTP, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


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
