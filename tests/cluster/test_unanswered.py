"""The driver's last check on a cluster run: rows it had to send that came back without a result.

No known bug leaves such a gap today (a sender on a lost node once did); the check is what turns any
future one into a non-zero exit with one line, instead of a run that says it succeeded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import pipeline.cluster.engine as engine
from jobkit import invoke, text_job
from pipeline.cluster.ending import unanswered
from pipeline.realtime.run import RunOutcome
from pipeline.records import Summary
from pipeline.results.summary import ResultTally


def tally(ok: int, error: int) -> ResultTally:
    counted = ResultTally()
    for _ in range(ok):
        counted.add_outcome("ok", None)
    for _ in range(error):
        counted.add_outcome("error", "overloaded_error")
    return counted


def test_rows_without_a_result_are_counted_only_when_nothing_stopped_the_run() -> None:
    assert unanswered(90, tally(85, 3), stopped=False) == 2
    assert unanswered(90, tally(87, 3), stopped=False) == 0
    assert unanswered(90, tally(85, 3), stopped=True) == 0  # a stop leaves rows for a rerun by design
    assert unanswered(0, tally(0, 0), stopped=False) == 0  # nothing to do


def test_a_cluster_run_with_rows_unanswered_exits_1_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's end of the check: exit 1 (not 0), one line with the count, the summary's exit code too."""
    job = text_job(tmp_path, rows=10)
    summary = Summary(rows_total=8, rows_ok=8, rows_error=0)

    async def short_run(*_: Any, **__: Any) -> RunOutcome:
        return RunOutcome(summary=summary, output=tmp_path / "out", results_rows=8, unanswered=2)

    monkeypatch.setattr(engine, "run_on_ray", short_run)
    result = invoke(["run", str(job), "--engine", "ray", "--sandbox", "--json"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert [json.loads(line)["exit_code"] for line in lines if line.startswith("{")] == [1]
    assert any(
        line.startswith("pipeline: error: 2 rows came back from the cluster without a result;")
        and line.endswith("rerun to send the rest")
        for line in lines
    ), lines
