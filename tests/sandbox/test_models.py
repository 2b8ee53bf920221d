"""The sandbox's Models API and model rules over loopback HTTP: ModelInfo, paging, the API's 400s and 404s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from anthropic.types import ModelCapabilities, ModelInfo

from pipeline.catalog.models import model_table
from pipeline.sandbox import SandboxConfig, running_sandbox
from pipeline.sandbox.config import preset_config

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
NEW_VERSION = {**HEADERS, "anthropic-version": "2026-10-21"}
CLOSED = {
    "type": "object",
    "properties": {"a": {"type": "string"}},
    "required": ["a"],
    "additionalProperties": False,
}
TOOL = {"name": "rec", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with (
        running_sandbox() as handle,
        httpx.Client(base_url=handle.base_url, headers=HEADERS, timeout=10) as http,
    ):
        yield http


def body(model: str = "claude-haiku-4-5", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": "Hi there."}],
        **extra,
    }


def test_every_model_of_the_table_is_listed_with_every_capability_key(client: httpx.Client) -> None:
    """GET /v1/models pages through the table's models (aliases as dated ids), each a valid ModelInfo."""
    seen: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"after_id": after} if after else {})}
        page = client.get("/v1/models", params=params).json()
        seen += page["data"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    ids = [model["id"] for model in seen]
    assert len(ids) == len(set(ids))
    assert "claude-haiku-4-5-20251001" in ids
    assert "claude-haiku-4-5" not in ids  # an alias: its snapshot stands for it
    assert "claude-opus-4-1-20250805" not in ids  # retired: listed only when asked for
    active = {i for facts in model_table().models if facts.lifecycle != "retired" for i in facts.ids}
    assert set(ids) <= active
    for model in seen:
        info = ModelInfo.model_validate(model)
        assert info.capabilities is not None
        # "Keys are always present for all known capabilities"
        assert set(model["capabilities"]) == set(ModelCapabilities.model_fields)
    retired = client.get("/v1/models", params={"lifecycle[]": "retired"}).json()["data"]
    assert {model["lifecycle"] for model in retired} == {"retired"}


def test_retrieve_resolves_an_alias_and_says_what_the_table_says(client: httpx.Client) -> None:
    """GET /v1/models/{id}: the alias's dated id, its limits and capabilities; an unknown id is a 404."""
    haiku = client.get("/v1/models/claude-haiku-4-5").json()
    assert haiku["id"] == "claude-haiku-4-5-20251001"
    assert (haiku["max_input_tokens"], haiku["max_tokens"]) == (200_000, 64_000)
    fable = client.get("/v1/models/claude-fable-5-1").json()
    types = fable["capabilities"]["thinking"]["types"]
    assert {kind: value["supported"] for kind, value in types.items()} == {
        "adaptive": True,
        "enabled": False,
        "disabled": False,
        "between_tools": False,
    }
    assert fable["capabilities"]["effort"]["xhigh"] == {"supported": True}
    missing = client.get("/v1/models/claude-opus-9")
    assert missing.status_code == 404
    assert missing.json()["error"] == {"type": "not_found_error", "message": "model: claude-opus-9"}


@pytest.mark.parametrize(
    ("headers", "payload", "message"),
    [
        (NEW_VERSION, body(temperature=0.5), "temperature: Extra inputs are not permitted"),
        (HEADERS, body("claude-opus-5", temperature=0.5), "`temperature` is deprecated for this model."),
        (HEADERS, body(temperature=0.5, top_p=0.9), "`temperature` and `top_p` cannot both be specified"),
        (
            HEADERS,
            body("claude-fable-5-1", thinking={"type": "disabled"}),
            '"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive"',
        ),
        (
            HEADERS,
            body("claude-fable-5-1", tools=[TOOL], tool_choice={"type": "any"}),
            "tool_choice: forced tool use is not supported for this model",
        ),
        (
            HEADERS,
            body("claude-sonnet-5", tools=[TOOL], tool_choice={"type": "tool", "name": "rec"}),
            "Thinking may not be enabled when tool_choice forces tool use.",
        ),
        (
            HEADERS,
            body("claude-opus-5", thinking={"type": "disabled"}, output_config={"effort": "max"}),
            '"thinking.type.disabled" is not supported with output_config.effort "max".',
        ),
        (
            HEADERS,
            body(output_config={"effort": "low"}),
            "output_config.effort: effort is not supported for this model.",
        ),
        (
            HEADERS,
            body(
                "claude-sonnet-5-5",
                output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
            ),
            "output_config.format.schema: For 'object' type, 'additionalProperties' must be explicitly set",
        ),
        (HEADERS, body(max_tokens=64_001), "max_tokens: 64001 > 64000, which is the maximum allowed number"),
        (
            HEADERS,
            body(
                "claude-opus-5",
                messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Th"}],
            ),
            "This model does not support assistant message prefill.",
        ),
        (HEADERS, body(fallbacks="default"), "fallbacks: Extra inputs are not permitted"),
    ],
)
def test_the_model_rules_are_the_api_s_400s(
    client: httpx.Client, headers: dict[str, str], payload: dict[str, Any], message: str
) -> None:
    """Each rule the pipeline checks up front is a 400 invalid_request_error here too."""
    answer = client.post("/v1/messages", json=payload, headers=headers)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message), error["message"]


def test_what_the_rules_allow_is_answered(client: httpx.Client) -> None:
    """Few-shot turns, prefill where allowed, between_tools, a beta field with its header, speed."""
    few_shot = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q2"},
    ]
    prefill = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "The answer is"}]
    beta = {**HEADERS, "anthropic-beta": "server-side-fallback-2026-07-01"}
    for headers, payload in [
        (HEADERS, body("claude-opus-5", messages=few_shot)),
        (HEADERS, body(messages=prefill)),
        (
            HEADERS,
            body("claude-sonnet-5-5", thinking={"type": "between_tools"}, output_config={"effort": "high"}),
        ),
        (beta, body("claude-opus-5", fallbacks="default", speed="standard")),
        (NEW_VERSION, body("claude-opus-5")),
    ]:
        answer = client.post("/v1/messages", json=payload, headers=headers)
        assert answer.status_code == 200, answer.text


def test_unknown_models_are_404_on_the_hosted_preset_only() -> None:
    """The Anthropic-like sandbox answers 404 for a model it lacks; a vLLM-like one serves any name."""
    with running_sandbox() as hosted, running_sandbox(preset_config("vllm")) as vllm:
        headers = {**HEADERS, "authorization": "Bearer k"}
        unknown = httpx.post(f"{hosted.base_url}/v1/messages", json=body("my-model"), headers=headers)
        local = httpx.post(f"{vllm.base_url}/v1/messages", json=body("my-model"), headers=headers)
        models = httpx.get(f"{vllm.base_url}/v1/models", headers=headers)
        assert hosted.stats()["requests_total"] == 1
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "model: my-model"
    assert local.status_code == 200
    assert models.status_code == 404


def test_structured_output_thinking_refusals_and_truncation_in_answers() -> None:
    """JSON that fits the format schema, a thinking block first, and seeded refusals and cut answers."""
    config = SandboxConfig(seed=2, refusal_rate=0.4, truncation_rate=0.4)
    fmt = {"format": {"type": "json_schema", "schema": CLOSED}}
    kinds: dict[str, int] = {}
    with running_sandbox(config) as sandbox, httpx.Client(base_url=sandbox.base_url, headers=HEADERS) as http:
        for index in range(20):
            payload = body(
                "claude-sonnet-5-5", output_config=fmt, messages=[{"role": "user", "content": f"Q{index}"}]
            )
            message = http.post("/v1/messages", json=payload).json()
            stop = message["stop_reason"]
            kinds[stop] = kinds.get(stop, 0) + 1
            assert message["content"][0]["type"] == "thinking"  # Sonnet 5.5 thinks by default
            if stop == "end_turn":
                assert json.loads(message["content"][1]["text"]).keys() == {"a"}
                assert message["stop_details"] is None
            elif stop == "refusal":
                assert message["stop_details"]["type"] == "refusal"
                assert message["stop_details"]["category"] == "cyber"
            else:
                assert stop == "max_tokens"
                assert message["usage"]["output_tokens"] == 300
    assert set(kinds) == {"end_turn", "refusal", "max_tokens"}


def test_the_sandbox_command_takes_the_refusal_and_truncation_flags() -> None:
    """`pipeline sandbox --refusal-rate 1` refuses every answer; `--truncation-rate 1` cuts each short."""
    for flag, stop in (("--refusal-rate", "refusal"), ("--truncation-rate", "max_tokens")):
        args = [sys.executable, "-m", "pipeline", "sandbox", "--port", "0", flag, "1"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env) as child:
            try:
                assert child.stderr is not None
                url = child.stderr.readline().rsplit(" ", 1)[1].strip()
                answer = httpx.post(url + "/v1/messages", json=body(), headers=HEADERS, timeout=10).json()
                assert answer["stop_reason"] == stop
                listed = httpx.get(url + "/v1/models", headers=HEADERS, timeout=10)
                assert listed.status_code == 200
                child.send_signal(signal.SIGTERM)
                assert child.wait(timeout=10) == 0
            finally:
                if child.poll() is None:
                    child.kill()
