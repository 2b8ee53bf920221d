"""The README stays true: it shows every command's real --help, and its quickstart names real paths."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from jobkit import ROOT
from pipeline.cli import cli

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_readme_shows_current_help(command: str) -> None:
    """Each command's --help output appears verbatim in the README."""
    result = CliRunner().invoke(cli, [command, "--help"], prog_name="pipeline")
    assert result.exit_code == 0
    shown = f"$ pipeline {command} --help\n{result.output.rstrip()}\n"
    assert shown in README, f"update the README's help for {command}"


def test_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command is the last command .ci/run executes."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "**the test command is `.venv/bin/python -m pytest`**" in README
    assert ci.strip().splitlines()[-1] == ".venv/bin/python -m pytest"


def test_readme_jobs_exist() -> None:
    """Every jobs/*.toml the README names exists."""
    for name in set(re.findall(r"jobs/[a-z_]+\.toml", README)):
        assert (ROOT / name).exists(), name
