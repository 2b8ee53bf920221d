"""The model rules a job is checked against: each refusal names the setting, the model and the fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.catalog.capabilities import facts_from_model_info
from pipeline.catalog.models import model_facts
from pipeline.errors import SpecError
from pipeline.job.rules import (
    check_job,
    job_problems,
    job_warnings,
    plan_request,
    schema_problems,
    structured_via,
)
from pipeline.job.spec import JobSpec, parse_job

TOOL = {"name": "rec", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
FORCED = {"type": "tool", "name": "rec"}
CLOSED = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}


def spec(api: dict[str, Any] | None = None, **request: Any) -> JobSpec:
    """A job for ``request`` (model, max_tokens and prompt filled in)."""
    table = {"model": "claude-haiku-4-5", "max_tokens": 100, "prompt": "hi", **request}
    raw = {"name": "t", "input": "in.csv", "output": "out", "request": table, "api": api or {}}
    return parse_job(raw, Path("job.toml"))


def problems(api: dict[str, Any] | None = None, **request: Any) -> list[str]:
    job = spec(api, **request)
    return job_problems(job, model_facts(job.request.model))


@pytest.mark.parametrize(
    ("request_settings", "expected"),
    [
        (
            {"model": "claude-opus-5", "temperature": 0.0},
            "claude-opus-5 does not accept request.temperature; remove it",
        ),
        (
            {"model": "claude-opus-4-7", "top_k": 5},
            "claude-opus-4-7 does not accept request.top_k; remove it",
        ),
        (
            {"temperature": 0.2, "top_p": 0.9},
            "claude-haiku-4-5 takes request.temperature or request.top_p, not both; remove one",
        ),
        (
            {"model": "claude-fable-5-1", "tools": [TOOL], "tool_choice": FORCED},
            "claude-fable-5-1 cannot force a tool (request.tool_choice); use request.output_config.format"
            " (or request.output_schema)",
        ),
        (
            {
                "model": "claude-fable-5-1",
                "thinking": {"type": "enabled", "budget_tokens": 2048},
                "max_tokens": 4000,
            },
            'claude-fable-5-1 does not accept request.thinking.type = "enabled"; remove request.thinking:'
            " thinking is always on there (request.output_config.effort sets how much)",
        ),
        (
            {"model": "claude-sonnet-5-5", "thinking": {"type": "disabled"}},
            'claude-sonnet-5-5 does not accept request.thinking.type = "disabled"; use type = "between_tools"'
            " to turn thinking off",
        ),
        (
            {
                "model": "claude-opus-5",
                "thinking": {"type": "enabled", "budget_tokens": 2048},
                "max_tokens": 4000,
            },
            'claude-opus-5 does not accept request.thinking.type = "enabled"; use type = "adaptive"'
            " (request.output_config.effort sets how much it thinks)",
        ),
        (
            {"model": "claude-opus-5", "thinking": {"type": "disabled"}, "output_config": {"effort": "max"}},
            'claude-opus-5 turns thinking off only at request.output_config.effort "high" or lower,'
            ' not "max";'
            " lower the effort or remove request.thinking",
        ),
        (
            {"model": "claude-sonnet-5", "tools": [TOOL], "tool_choice": {"type": "any"}},
            "claude-sonnet-5 thinks by default, and thinking cannot be combined with a forced tool"
            ' (request.tool_choice); set request.thinking = {type = "disabled"}, or use'
            " request.output_config.format",
        ),
        (
            {
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "max_tokens": 2000,
                "tools": [TOOL],
                "tool_choice": FORCED,
            },
            "claude-haiku-4-5 thinks (request.thinking), and thinking cannot be combined with a forced tool",
        ),
        (
            {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2000, "temperature": 0.0},
            "claude-haiku-4-5 does not take request.temperature while thinking; remove it or turn"
            " thinking off",
        ),
        (
            {"output_config": {"effort": "low"}},
            "claude-haiku-4-5 does not accept request.output_config.effort; remove it",
        ),
        (
            {"model": "claude-opus-4-6", "output_config": {"effort": "xhigh"}},
            'claude-opus-4-6 does not accept request.output_config.effort = "xhigh"; use one of low,'
            " medium, high, max",
        ),
        (
            {
                "model": "claude-3-5-haiku",
                "output_config": {"format": {"type": "json_schema", "schema": CLOSED}},
            },
            "claude-3-5-haiku does not support request.output_config.format (structured outputs); use"
            " request.output_schema, which falls back to a forced tool",
        ),
        (
            {"model": "claude-3-5-haiku", "tools": [{**TOOL, "strict": True}]},
            "claude-3-5-haiku does not support strict tools (request.tools.0.strict); remove it",
        ),
        (
            {"model": "claude-opus-5-5", "output_schema": CLOSED, "output_via": "tool"},
            'claude-opus-5-5 cannot force a tool (request.output_schema with output_via = "tool");'
            ' use output_via = "auto"',
        ),
        (
            {"max_tokens": 64_001},
            "request.max_tokens = 64,001 is over the 64,000 output tokens claude-haiku-4-5 allows",
        ),
        (
            {"extra": {"inference_geo": "us"}},
            "claude-haiku-4-5 does not accept request.extra.inference_geo (Claude Opus 4.6 and later"
            " models do)",
        ),
    ],
)
def test_each_rule_names_the_setting_the_model_and_the_fix(
    request_settings: dict[str, Any], expected: str
) -> None:
    """The first problem of a job that breaks a rule is the line the issue asks for."""
    found = problems(**request_settings)
    assert found, request_settings
    assert found[0].startswith(expected), found[0]


def test_sampling_is_refused_on_every_model_from_api_version_2026_10_21() -> None:
    """Under anthropic-version 2026-10-21 no model gets temperature; the fix names the older version."""
    (line,) = problems({"anthropic_version": "2026-10-21"}, temperature=0.0)
    assert line == (
        "anthropic-version 2026-10-21 does not accept request.temperature (sampling parameters are"
        " removed from"
        ' 2026-10-21 on, on every model); remove it, or set [api] anthropic_version = "2023-06-01"'
    )
    assert problems({"anthropic_version": "2023-06-01"}, temperature=0.0) == []
    # another provider decides for itself what the header means
    assert problems({"provider": "vllm", "anthropic_version": "2026-10-21"}, temperature=0.0) == []


def test_a_job_that_keeps_the_rules_has_no_problem_and_an_unknown_model_is_not_checked() -> None:
    """Valid settings pass on each model; a model the facts do not know gets no rule at all."""
    assert (
        problems(model="claude-opus-5", thinking={"type": "adaptive"}, output_config={"effort": "xhigh"})
        == []
    )
    assert (
        problems(model="claude-opus-5", thinking={"type": "disabled"}, tools=[TOOL], tool_choice=FORCED) == []
    )
    assert problems(model="claude-sonnet-5-5", output_schema=CLOSED) == []
    assert (
        problems(model="my-local-model", temperature=0.5, top_p=0.5, tools=[TOOL], tool_choice=FORCED) == []
    )


def test_check_job_raises_the_first_problem_as_one_line_naming_the_file() -> None:
    """check_job is the one SpecError with a count of the other problems."""
    job = spec(model="claude-opus-5", temperature=0.0, top_p=0.5)
    with pytest.raises(SpecError) as caught:
        check_job(job, model_facts("claude-opus-5"))
    assert (
        str(caught.value)
        == "job.toml: claude-opus-5 does not accept request.temperature; remove it (and 1 more)"
    )


def test_the_answer_mechanism_follows_the_model_and_can_be_chosen() -> None:
    """output_schema goes as output_config.format where structured outputs exist, else as a forced tool."""
    sonnet, old = model_facts("claude-sonnet-5-5"), model_facts("claude-3-5-haiku")
    unknown = model_facts("my-local-model")
    request = spec(output_schema=CLOSED).request
    assert (structured_via(request, sonnet), structured_via(request, old)) == ("format", "tool")
    assert structured_via(request, unknown) == "tool"  # a self-hosted model: the mechanism every server has
    assert plan_request(request, sonnet).output_via == "format"
    assert plan_request(request, sonnet).fingerprint() == request.fingerprint()
    chosen = spec(output_schema=CLOSED, output_via="tool").request
    assert structured_via(chosen, sonnet) == "tool"
    assert structured_via(spec().request, sonnet) is None


def test_what_v1_models_says_overrides_the_table_and_can_refuse_a_retired_model() -> None:
    """/v1/models capabilities decide thinking types; retired there is a refusal, in the table a note."""
    info = {
        "id": "claude-haiku-4-5-20251001",
        "lifecycle": "retired",
        "capabilities": {
            "thinking": {
                "supported": True,
                "types": {
                    k: {"supported": k == "adaptive"}
                    for k in ("adaptive", "enabled", "disabled", "between_tools")
                },
            }
        },
    }
    live = facts_from_model_info(info, "GET /v1/models/claude-haiku-4-5 at http://x")
    found = job_problems(spec(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=2000), live)
    assert found[0].startswith("claude-haiku-4-5 is retired (GET /v1/models/claude-haiku-4-5 at http://x)")
    assert any('does not accept request.thinking.type = "enabled"' in line for line in found)
    table = replace(model_facts("claude-opus-4-1"), source="the shipped model table")
    job = spec(model="claude-opus-4-1")
    assert job_problems(job, table) == []
    assert job_warnings(job, table) == [
        "claude-opus-4-1 is retired on the Claude API (the shipped model table); requests to it fail there"
        " (some cloud platforms still serve it)"
    ]


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            {"type": "object", "properties": {}},
            "at $: an object without additionalProperties = false; add it",
        ),
        (
            {**CLOSED, "properties": {"n": {"type": "integer", "minimum": 1}}},
            "at $.n: minimum is not supported",
        ),
        (
            {**CLOSED, "properties": {"s": {"type": "string", "format": "color"}}},
            "at $.s: format 'color' is not supported",
        ),
        (
            {**CLOSED, "properties": {"l": {"type": "array", "minItems": 2}}},
            "at $.l: minItems above 1 is not supported",
        ),
        (
            {**CLOSED, "properties": {"o": {"type": "object", "properties": {"x": {"type": "string"}}}}},
            "at $.o: an object without additionalProperties",
        ),
    ],
)
def test_structured_schemas_are_held_to_the_subset_the_api_takes(
    schema: dict[str, Any], problem: str
) -> None:
    """Open objects, numeric and length constraints, big minItems and unknown formats are named by path."""
    assert schema_problems(schema)[0].startswith(problem)
    assert schema_problems(CLOSED) == []
