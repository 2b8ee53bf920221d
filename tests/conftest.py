"""Settings and fixtures every test shares.

The suite runs on a 2-core machine shared with other work (CI, benchmarks), so no test may depend
on speed: Hypothesis gets no deadline and no "too slow" health check here, for every test at once,
rather than one test at a time. Set ``HYPOTHESIS_PROFILE=dev`` for Hypothesis's own defaults.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from scripted import ScriptedApi

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
