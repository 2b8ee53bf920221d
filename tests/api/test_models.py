"""GET /v1/models/{id}: asked once a day per output, cached whole, and the table when it cannot answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobkit import FAKE_KEY, text_job
from pipeline.api.config import ClientConfig
from pipeline.api.models import CACHE_FILE, MAX_AGE_S, offline_model_facts, run_model_facts
from pipeline.errors import FatalApiError, SpecError
from pipeline.job.spec import JobSpec, load_job
from scripted import ScriptedApi, api_error, reply

BASE = "http://api.test"
TYPES = ("adaptive", "enabled", "disabled", "between_tools")


def info(model_id: str = "claude-haiku-4-5-20251001", **capabilities: Any) -> dict[str, Any]:
    """A ModelInfo whose thinking types are all supported unless ``capabilities`` says otherwise."""
    thinking = {"supported": True, "types": {kind: {"supported": True} for kind in TYPES}}
    return {
        "type": "model",
        "id": model_id,
        "display_name": "Claude",
        "created_at": "2025-10-01T00:00:00Z",
        "lifecycle": "active",
        "max_input_tokens": 123_000,
        "max_tokens": 4_000,
        "capabilities": {"thinking": thinking, **capabilities},
    }


def job(tmp_path: Path, model: str = "claude-haiku-4-5", **api: Any) -> JobSpec:
    spec = load_job(text_job(tmp_path, rows=1, model=model))
    return spec.model_copy(update={"api": spec.api.model_copy(update=api)})


def config() -> ClientConfig:
    return ClientConfig(base_url=BASE, api_key=FAKE_KEY, max_attempts=2)


async def nosleep(_: float) -> None:
    return None


async def test_the_answer_is_asked_once_then_read_from_the_cache_until_a_day_old(tmp_path: Path) -> None:
    """The first run asks and caches; later runs within a day read the cache; a day on, it asks again."""
    spec = job(tmp_path)
    api = ScriptedApi(models=reply(200, info()))
    clock = [1_000_000.0]
    out = tmp_path / "out"
    facts = await run_model_facts(spec, config(), out, transport=api.transport, now=lambda: clock[0])
    assert (facts.context_window, facts.max_output, facts.thinking) == (123_000, 4_000, TYPES)
    assert facts.source == f"GET /v1/models/claude-haiku-4-5 at {BASE}"
    assert [r.url.path for r in api.model_requests] == ["/v1/models/claude-haiku-4-5"]
    assert api.model_requests[0].headers["x-api-key"] == FAKE_KEY
    clock[0] += MAX_AGE_S - 1
    cached = await run_model_facts(spec, config(), out, transport=api.transport, now=lambda: clock[0])
    assert cached.source.startswith(f"GET /v1/models/claude-haiku-4-5 at {BASE}, cached ")
    assert len(api.model_requests) == 1
    clock[0] += 2
    await run_model_facts(spec, config(), out, transport=api.transport, now=lambda: clock[0])
    assert len(api.model_requests) == 2
    text = (out / CACHE_FILE).read_text()
    assert FAKE_KEY not in text
    assert json.loads(text)[f"{BASE} claude-haiku-4-5"]["info"]["max_tokens"] == 4_000
    # offline commands read the same cache for the job's own base URL
    spec = spec.model_copy(update={"api": spec.api.model_copy(update={"base_url": BASE})})
    assert offline_model_facts(spec, out).max_output == 4_000


async def test_a_404_is_an_unknown_model_only_where_the_list_answers(tmp_path: Path) -> None:
    """404 for the id while /v1/models lists: refused with the near ids; no list at all: the shipped table."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(
                200, json={"data": [], "has_more": False, "first_id": None, "last_id": None}
            )
        return httpx.Response(
            404, json={"type": "error", "error": {"type": "not_found_error", "message": "model"}}
        )

    spec = job(tmp_path, model="claude-haiku-4-6")
    with pytest.raises(SpecError) as caught:
        await run_model_facts(
            spec, config(), tmp_path / "out", transport=ScriptedApi(models=answer).transport
        )
    assert "request.model: 'claude-haiku-4-6' is not a model at http://api.test" in str(caught.value)
    assert "did you mean 'claude-haiku-4-5'" in str(caught.value)
    proxy = ScriptedApi()  # 404 for every /v1/models path: a proxy that forwards only /v1/messages
    facts = await run_model_facts(spec, config(), tmp_path / "out", transport=proxy.transport)
    assert facts.source.endswith("; http://api.test has no /v1/models")
    assert [r.url.path for r in proxy.model_requests] == ["/v1/models/claude-haiku-4-6", "/v1/models"]


async def test_failures_fall_back_to_the_cache_however_old_then_the_table(tmp_path: Path) -> None:
    """A lasting 5xx falls back (saying why) to a stale cached answer, else the table; a 401 stops the run."""
    spec = job(tmp_path)
    out = tmp_path / "out"
    down = ScriptedApi(models=api_error(500, "api_error", "down"))
    facts = await run_model_facts(spec, config(), out, transport=down.transport, sleep=nosleep)
    assert facts.source.startswith("the shipped model table (read ")
    assert "GET http://api.test/v1/models/claude-haiku-4-5 failed (HTTP 500 api_error: down)" in facts.source
    assert facts.max_output == 64_000
    good = ScriptedApi(models=reply(200, info()))
    await run_model_facts(spec, config(), out, transport=good.transport, now=lambda: 0.0)
    stale = await run_model_facts(spec, config(), out, transport=down.transport, sleep=nosleep)
    assert stale.max_output == 4_000  # the cached answer, a day old or not, beats the table
    assert "failed" in stale.source
    refused = ScriptedApi(models=api_error(401, "authentication_error", f"bad key {FAKE_KEY}"))
    with pytest.raises(FatalApiError) as caught:
        await run_model_facts(spec, config(), tmp_path / "other", transport=refused.transport)
    assert FAKE_KEY not in str(caught.value)


async def test_providers_without_the_models_api_use_the_table_without_asking(tmp_path: Path) -> None:
    """A vLLM job never calls /v1/models: the shipped table stands, and the source says why."""
    spec = job(tmp_path, provider="vllm")
    api = ScriptedApi()
    facts = await run_model_facts(spec, config(), tmp_path / "out", transport=api.transport)
    assert api.model_requests == []
    assert facts.source.endswith("; provider 'vllm' has no /v1/models")


async def test_capabilities_override_what_the_table_says(tmp_path: Path) -> None:
    """Thinking types, effort and structured outputs come from the answer; sampling stays the table's."""
    types = {kind: {"supported": kind == "adaptive"} for kind in TYPES}
    effort = {
        "supported": True,
        **{level: {"supported": level != "max"} for level in ("low", "medium", "high", "max")},
    }
    answer = info(
        thinking={"supported": True, "types": types},
        effort=effort,
        structured_outputs={"supported": False},
    )
    api = ScriptedApi(models=reply(200, answer))
    facts = await run_model_facts(job(tmp_path), config(), tmp_path / "out", transport=api.transport)
    assert facts.thinking == ("adaptive",)
    assert facts.effort == ("low", "medium", "high")
    assert facts.structured_outputs is False
    assert facts.sampling == "temperature_or_top_p"  # /v1/models does not state it
