"""``pipeline.Job`` passes the CLI's up-front model check: a refused setting raises before any request."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import pipeline
from pipeline.errors import SpecError

# Opus 5 answers 400 to any sampling parameter; Fable 5.1 cannot force a tool (catalog/models.toml)
TEMPERATURE = "pipeline.Job: claude-opus-5 does not accept request.temperature; remove it"
FORCED = "pipeline.Job: claude-fable-5-1 cannot force a tool"
TOOL = {
    "name": "record",
    "description": "Record the topic's label.",
    "input_schema": {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]},
}


def _data() -> pl.DataFrame:
    return pl.DataFrame({"id": ["a", "b", "c"], "topic": ["x", "y", "z"]})


def _job(**keys: object) -> pipeline.Job:
    base = {"max_tokens": 64, "prompt": "Label {topic}.", "id_column": "id"}
    return pipeline.Job(**{**base, **keys})


@pytest.mark.parametrize("mode", ["realtime", "batch"])
def test_a_refused_sampling_setting_raises_one_error_and_sends_nothing(
    sandbox: pipeline.Sandbox, tmp_path: Path, mode: str
) -> None:
    """Job.run with temperature on Opus 5: one SpecError naming setting, model and fix; no message sent."""
    job = _job(model="claude-opus-5", temperature=0.2)
    with pytest.raises(SpecError) as caught:
        job.run(_data(), output=tmp_path / "out", mode=mode)
    assert str(caught.value) == TEMPERATURE
    stats = sandbox.stats()
    assert stats["requests_total"] == 0
    assert stats["batches"]["created"] == 0
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_a_forced_tool_on_fable_is_refused_by_run_validate_and_estimate(
    sandbox: pipeline.Sandbox, tmp_path: Path
) -> None:
    """The same check for every entry point of the Python API, as for the CLI's commands."""
    job = _job(model="claude-fable-5-1", tools=[TOOL], tool_choice={"type": "tool", "name": "record"})
    for call in (
        lambda: job.run(_data(), output=tmp_path / "out"),
        lambda: job.validate(_data()),
        lambda: job.estimate(_data()),
    ):
        with pytest.raises(SpecError) as caught:
            call()
        assert str(caught.value).startswith(FORCED), str(caught.value)
        assert "\n" not in str(caught.value)
    assert sandbox.stats()["requests_total"] == 0


def test_the_same_job_without_the_refused_setting_runs(sandbox: pipeline.Sandbox, tmp_path: Path) -> None:
    """The check refuses the setting, not the model: drop temperature and Opus 5 answers every row."""
    out = _job(model="claude-opus-5").run(_data(), output=tmp_path / "out")
    assert out["status"].to_list() == ["ok"] * 3
    assert sandbox.stats()["requests_total"] == 3
