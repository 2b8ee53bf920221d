"""Settings and fixtures every test shares.

The suite runs on a 2-core machine shared with other work (CI, benchmarks), so no test may depend
on speed: Hypothesis gets no deadline and no "too slow" health check here, for every test at once,
rather than one test at a time. Set ``HYPOTHESIS_PROFILE=dev`` for Hypothesis's own defaults.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from scripted import ScriptedApi
from storagekit import Bucket, MotoServer, new_bucket, start_moto, storage_env

settings.register_profile(
    "shared-machine",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "shared-machine"))


@pytest.fixture
def scripted_api() -> ScriptedApi:
    """A scripted fake of the provider: enqueue its answers, read back the requests it got."""
    return ScriptedApi()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One S3-compatible server (moto) on loopback for the session, stopped by pid at the end."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("obstore") is None:
        pytest.skip("moto[server] and obstore are not installed: pip install -e '.[dev]'")
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh bucket, and the environment (explicit test credentials, loopback) pointed at it."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "GOOGLE_", "AZURE_")):
            monkeypatch.delenv(key)
    for key, value in storage_env(moto_server.endpoint, tmp_path / "cache").items():
        monkeypatch.setenv(key, value)
    return new_bucket(moto_server.endpoint)
