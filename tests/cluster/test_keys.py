"""Where a cluster's workers find the API key: their own environment; the key never rides with the work."""

from __future__ import annotations

import pickle

import pytest

from pipeline.catalog.providers import SANDBOX_KEY
from pipeline.cluster.engine import _pipeline_error
from pipeline.cluster.sender import KeySource, key_source
from pipeline.errors import ConfigError, InputError, PipelineError

SECRET = "sk-ant-api03-SECRET-cluster-0123456789"


def test_a_key_in_the_environment_stays_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's key is in its environment: workers are told only the variable's name."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    source, extra = key_source("ANTHROPIC_API_KEY", SECRET, local=False)
    assert extra == {}
    assert SECRET.encode() not in pickle.dumps(source)
    assert SECRET not in repr(source)
    assert source.read() == SECRET  # a worker with the variable set reads it from its own environment


def test_a_key_held_only_in_memory_reaches_a_local_instance_through_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key passed in RunOptions, not in the environment: a local instance's processes start with it;
    a running cluster cannot get it, and the message says where it must be, without the key."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    source, extra = key_source("ANTHROPIC_API_KEY", SECRET, local=True)
    assert extra == {"ANTHROPIC_API_KEY": SECRET}
    assert SECRET.encode() not in pickle.dumps(source)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY") as refused:
        key_source("ANTHROPIC_API_KEY", SECRET, local=False)
    assert SECRET not in str(refused.value)


def test_the_sandbox_placeholder_may_travel_and_a_node_without_a_key_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sandbox's placeholder is no secret; a worker with no key and no placeholder stops the run."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    source, _ = key_source("ANTHROPIC_API_KEY", SANDBOX_KEY, local=False)
    assert source.read() == SANDBOX_KEY
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set on the Ray node"):
        KeySource("ANTHROPIC_API_KEY").read()


class _TaskError(Exception):
    """What Ray raises on the driver for an exception in a task: the original rides in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"ray.exceptions.RayTaskError: {cause}")
        self.cause = cause


def test_a_workers_pipeline_error_reaches_the_driver_as_itself() -> None:
    """A read task's InputError (or a worker's ConfigError) is reported as that error, in one line."""
    original = InputError("data.csv line 7 has 3 fields, but the header has 2")
    assert _pipeline_error(_TaskError(original)) is original
    other = _pipeline_error(RuntimeError("boom\nTraceback ...\nValueError: deep down"))
    assert isinstance(other, PipelineError)
    assert str(other) == "the Ray run failed: ValueError: deep down"
