"""Building a ``pipeline.Job``: the job file's keys and checks, from keywords or from a job file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pipeline
from jobkit import write_job
from pipeline.errors import SpecError
from pipeline.frames.job import TOP_LEVEL
from pipeline.job.request import RequestSpec
from pipeline.job.spec import load_job

BASE = {"model": "claude-haiku-4-5", "max_tokens": 64, "prompt": "Say something about {topic}."}


def toml_error(tmp_path: Path, request: dict[str, Any], **top: Any) -> str:
    """The SpecError message of the same job written as a job file, without the file's name."""
    path = write_job(tmp_path, input="in.csv", output="out", request=request, **top)
    with pytest.raises(SpecError) as caught:
        load_job(path)
    return str(caught.value).removeprefix(f"{path}: ")


def job_error(request: dict[str, Any], **top: Any) -> str:
    with pytest.raises(SpecError) as caught:
        pipeline.Job(**top, **request)
    message = str(caught.value)
    assert message.startswith("pipeline.Job: ")
    return message.removeprefix("pipeline.Job: ")


@pytest.mark.parametrize(
    ("request_keys", "top"),
    [
        ({**BASE, "max_tokens": 0}, {}),
        ({**BASE, "promt": "typo"}, {}),
        ({"model": "claude-haiku-4-5", "prompt": "x"}, {}),
        ({**BASE, "prompt": "Unclosed {topic"}, {}),
        ({**BASE, "tool_choice": {"type": "tool", "name": "nope"}}, {}),
        ({**BASE, "temperature": 3}, {}),
        (BASE, {"limits": {"concurency": 4}}),
        (BASE, {"api": {"base_url": "ftp://example"}}),
    ],
)
def test_a_bad_job_gets_the_job_files_one_line_message(
    tmp_path: Path, request_keys: dict[str, Any], top: dict[str, Any]
) -> None:
    """Every problem is the SpecError a job file with the same keys gets, after the source's name."""
    expected = toml_error(tmp_path, request_keys, **top)
    assert job_error(request_keys, **top) == expected
    assert "\n" not in expected


def test_every_request_key_is_a_keyword_and_none_is_taken_by_the_tables() -> None:
    """Keywords other than name, id_column and the tables go to [request] as they are; none collide."""
    assert not set(RequestSpec.model_fields) & set(TOP_LEVEL)
    settings: dict[str, Any] = {
        "system": "Be brief.",
        "temperature": 0.0,
        "top_k": 5,
        "stop_sequences": ["END"],
        "images": ["photo"],
        "image_max_edge": 800,
        "image_max_pixels": 500_000,
        "max_input_tokens": 9000,
        "schema_attempts": 2,
        "dedupe": False,
        "stream": True,
    }
    job = pipeline.Job(**BASE, **settings)
    request = job.spec.request
    for key, value in settings.items():
        assert getattr(request, key) == value, key


def test_tables_take_dicts_with_the_job_files_keys() -> None:
    """limits=, api=, batch= and prices= are the [limits], [api], [batch] and [prices] tables."""
    job = pipeline.Job(
        **BASE,
        name="tables",
        id_column="sku",
        limits={"concurrency": 3, "requests_per_minute": 50},
        api={"provider": "anthropic", "mode": "batch"},
        batch={"poll_interval_s": 2},
        prices={"input": 1.5, "output": 7.5},
    )
    spec = job.spec
    assert (spec.name, spec.id_column) == ("tables", "sku")
    assert (spec.limits.concurrency, spec.limits.requests_per_minute) == (3, 50)
    assert spec.api.mode == "batch"
    assert spec.batch.poll_interval_s == 2
    assert spec.prices is not None
    assert spec.prices.output == 7.5
    assert (spec.input, spec.output, spec.source) == ("", "", "pipeline.Job")


def test_the_same_keys_give_the_same_fingerprint_as_the_job_file(tmp_path: Path) -> None:
    """A Job and the job file with the same [request] ask the same thing: one fingerprint, one output."""
    path = write_job(tmp_path, input="in.csv", output="out", request={**BASE, "temperature": 0.0})
    from_file = pipeline.Job.from_toml(path)
    built = pipeline.Job(**BASE, temperature=0.0)
    assert built.spec.request.fingerprint() == from_file.spec.request.fingerprint()
    assert from_file.spec.output == str(tmp_path / "out")  # a job file's paths resolve against it


def test_image_root_is_checked_against_the_current_directory_and_kept_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative image_root resolves against the current directory once, when the Job is built."""
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    job = pipeline.Job(**BASE, image_root="photos")
    assert job.spec.request.image_root == str(tmp_path / "photos")
    with pytest.raises(SpecError, match=r"^pipeline.Job: request.image_root: 'nowhere' is not a directory$"):
        pipeline.Job(**BASE, image_root="nowhere")


def test_from_toml_names_the_file_in_its_errors(tmp_path: Path) -> None:
    """Job.from_toml reads a job file with load_job: a missing file is its one-line SpecError."""
    with pytest.raises(SpecError, match="job file not found"):
        pipeline.Job.from_toml(tmp_path / "missing.toml")


def test_repr_names_the_job() -> None:
    """A Job shows its name, model and prompt."""
    assert repr(pipeline.Job(**BASE)) == (
        "Job(name='job', model='claude-haiku-4-5', prompt='Say something about {topic}.')"
    )
