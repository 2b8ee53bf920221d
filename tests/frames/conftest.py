"""Every Python-API test gets its own per-user cache folder and a shell without an API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import pipeline


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """XDG_CACHE_HOME in tmp_path (platformdirs reads it), no ANTHROPIC_* variables."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "xdg-cache" / "pipeline" / "runs"


@pytest.fixture
def sandbox() -> Iterator[pipeline.Sandbox]:
    """A sandbox served for the test (``with pipeline.sandbox():``): runs that name no server go there."""
    with pipeline.sandbox() as served:
        yield served
