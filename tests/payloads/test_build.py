"""Building payloads: prompt rendering, block order, optional parameters, token estimate, size limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import RowError
from pipeline.job.spec import parse_job
from pipeline.payloads.build import (
    build_payload,
    check_request_size,
    estimate_input_tokens,
    example_messages,
    render_template,
)
from pipeline.payloads.images import PreparedImage

IMAGE = PreparedImage(
    media_type="image/png",
    data_b64="iVBORw0KGgo=",
    width=750,
    height=100,
    source_bytes=8,
    passed_through=True,
)


def _request(**extra: object):  # type: ignore[no-untyped-def]
    raw = {
        "name": "t",
        "input": "i.csv",
        "output": "o",
        "request": {"model": "m", "max_tokens": 5, "prompt": "Describe {x}.", **extra},
    }
    return parse_job(raw, Path("j.toml")).request


def test_payload_puts_images_before_text_and_sets_only_given_params() -> None:
    """Images come first, then the rendered prompt; unset parameters are absent."""
    payload = build_payload(_request(), {"x": "a cat"}, [IMAGE])
    content = payload["messages"][0]["content"]
    assert [block["type"] for block in content] == ["image", "text"]
    assert content[1] == {"type": "text", "text": "Describe a cat."}
    assert set(payload) == {"model", "max_tokens", "messages"}


def test_payload_carries_sampling_tools_and_stream() -> None:
    """temperature, stop_sequences, tools, tool_choice and stream go through as the API takes them."""
    request = _request(
        temperature=0.0,
        stop_sequences=["END"],
        system="sys {x}",
        stream=True,
        tools=[{"name": "rec", "description": "d", "input_schema": {"type": "object"}}],
        tool_choice={"type": "tool", "name": "rec"},
    )
    payload = build_payload(request, {"x": 1}, [])
    assert payload["temperature"] == 0.0
    assert payload["system"] == "sys 1"
    assert payload["stop_sequences"] == ["END"]
    assert payload["tools"] == [{"name": "rec", "input_schema": {"type": "object"}, "description": "d"}]
    assert payload["tool_choice"] == {"type": "tool", "name": "rec"}
    assert payload["stream"] is True


def test_null_cells_render_empty_and_bad_spec_is_row_error() -> None:
    """A null cell renders as empty text; a format spec the value cannot take is that row's error."""
    assert render_template("[{x}]", {"x": None}) == "[]"
    with pytest.raises(RowError, match="cannot render prompt"):
        render_template("{x:.2f}", {"x": "text"})


def test_estimate_counts_text_images_and_tools() -> None:
    """The estimate grows with text, adds w*h/750 per image, and counts tool definitions."""
    plain = estimate_input_tokens(build_payload(_request(), {"x": "a"}, []), [])
    longer = estimate_input_tokens(build_payload(_request(), {"x": "a" * 3500}, []), [])
    with_image = estimate_input_tokens(build_payload(_request(), {"x": "a"}, [IMAGE]), [IMAGE])
    assert abs((longer - plain) - 1000) <= 1
    assert with_image - plain == 100
    tools = [{"name": "rec", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}]
    with_tools = estimate_input_tokens(build_payload(_request(tools=tools), {"x": "a"}, []), [])
    assert with_tools > plain


@given(
    st.dictionaries(st.sampled_from(["x", "y"]), st.one_of(st.none(), st.text(), st.integers(), st.floats()))
)
def test_any_cells_build_a_valid_payload(cells: dict[str, object]) -> None:
    """Whatever the cells hold, the payload has one user message ending in a text block."""
    cells.setdefault("x", None)
    payload = build_payload(_request(), cells, [])
    assert payload["messages"][0]["role"] == "user"
    assert payload["messages"][0]["content"][-1]["type"] == "text"
    assert estimate_input_tokens(payload, []) > 0


def _big_image(b64_chars: int) -> PreparedImage:
    return PreparedImage(
        media_type="image/jpeg",
        data_b64="A" * b64_chars,
        width=1568,
        height=1568,
        source_bytes=b64_chars * 3 // 4,
        passed_through=False,
    )


def test_prompt_over_the_context_window_is_request_too_large() -> None:
    """An estimate above the token limit is a request_too_large row error naming both numbers."""
    payload = build_payload(_request(), {"x": "a" * 7000}, [])
    tokens = estimate_input_tokens(payload, [])
    check_request_size(payload, tokens, tokens)
    expected = rf"about {tokens:,} tokens, over .* of {tokens - 1:,} \(request.max_input_tokens\)"
    with pytest.raises(RowError, match=expected) as info:
        check_request_size(payload, tokens, tokens - 1)
    assert info.value.error_type == "request_too_large"


def test_body_over_32_mb_is_request_too_large() -> None:
    """Seven 5 MB images make a body over the API's 32 MB cap: refused; six are not."""
    images = [_big_image(4_900_000)] * 7
    payload = build_payload(_request(), {"x": "a"}, images)
    with pytest.raises(RowError, match=r"request body is 34\.3 MB .* limit of 32 MB") as info:
        check_request_size(payload, estimate_input_tokens(payload, images), 200_000)
    assert info.value.error_type == "request_too_large"
    payload = build_payload(_request(), {"x": "a"}, images[:6])
    check_request_size(payload, estimate_input_tokens(payload, images[:6]), 200_000)


def test_context_window_defaults_by_model_and_yields_to_the_job() -> None:
    """1M tokens for the 5-series long-context families, 200k otherwise, max_input_tokens over both."""
    assert _request(model="claude-opus-5").input_token_limit == 1_000_000
    assert _request(model="claude-sonnet-5-20260601").input_token_limit == 1_000_000
    assert _request(model="claude-haiku-4-5").input_token_limit == 200_000
    assert _request(model="claude-opus-5", max_input_tokens=5000).input_token_limit == 5000


@settings(max_examples=150, deadline=None)
@given(
    prompt=st.text(st.characters(codec="utf-8"), max_size=4000),
    system=st.none() | st.text(st.characters(codec="utf-8"), max_size=300),
    limit=st.integers(min_value=300, max_value=60_000),
)
def test_body_check_agrees_with_the_serialised_size(prompt: str, system: str | None, limit: int) -> None:
    """Whatever the text (escapes, astral characters), the check refuses exactly the bodies over the cap."""
    request = _request(prompt="Q: {x}", **({} if system is None else {"system": "{s}"}))
    payload = build_payload(request, {"x": prompt, "s": system}, [])
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    try:
        check_request_size(payload, estimate_input_tokens(payload, []), 10**9, max_body_bytes=limit)
    except RowError:
        assert size > limit
    else:
        assert size <= limit


def test_empty_prompt_is_a_row_error_and_empty_system_is_left_out() -> None:
    """A prompt that renders to whitespace is refused (the API 400s it); an empty system prompt is omitted."""
    with pytest.raises(RowError, match="renders empty") as info:
        build_payload(_request(prompt="{x}"), {"x": "  "}, [])
    assert info.value.error_type == "template_error"
    payload = build_payload(_request(system="{y}"), {"x": "a", "y": None}, [])
    assert "system" not in payload


SCHEMA = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 1, "description": "a count"}, "s": {"type": "string"}},
}


def test_output_schema_goes_as_format_or_as_the_answer_tool_by_the_model() -> None:
    """On a model with structured outputs the schema is output_config.format (adapted); else a forced tool."""
    native = build_payload(_request(model="claude-sonnet-5-5", output_schema=SCHEMA), {"x": 1}, [])
    schema = native["output_config"]["format"]["schema"]
    assert native["output_config"]["format"]["type"] == "json_schema"
    assert schema["additionalProperties"] is False  # closed, as structured outputs require
    assert schema["properties"]["n"] == {"type": "integer", "description": "a count\n\n{minimum: 1}"}
    assert "tools" not in native
    assert "tool_choice" not in native
    forced = build_payload(_request(model="claude-3-5-haiku", output_schema=SCHEMA), {"x": 1}, [])
    assert forced["tools"][-1]["name"] == "structured_output"
    assert forced["tools"][-1]["input_schema"] == SCHEMA  # a tool takes the schema as written
    assert forced["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert "output_config" not in forced


def test_thinking_effort_strict_tools_and_extra_reach_the_body() -> None:
    """thinking and output_config as given, strict on its tool, [request.extra] merged in last."""
    request = _request(
        model="claude-opus-5",
        max_tokens=4000,
        thinking={"type": "adaptive", "display": "summarized"},
        output_config={"effort": "low"},
        tools=[{"name": "rec", "input_schema": {"type": "object"}, "strict": True}],
        extra={"metadata": {"user_id": "u1"}, "service_tier": "standard_only"},
    )
    payload = build_payload(request, {"x": 1}, [])
    assert payload["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert payload["output_config"] == {"effort": "low"}
    assert payload["tools"] == [{"name": "rec", "input_schema": {"type": "object"}, "strict": True}]
    assert payload["metadata"] == {"user_id": "u1"}  # type: ignore[typeddict-item]
    assert payload["service_tier"] == "standard_only"  # type: ignore[typeddict-item]


def test_examples_come_first_and_the_cache_breakpoint_follows_them() -> None:
    """Few-shot turns precede the row's message; with cache on, the breakpoint ends the last example."""
    turns = [{"role": "user", "text": "Q1"}, {"role": "assistant", "text": "A1"}]
    request = _request(examples=turns, system="Be brief.", cache=True)
    prefix = example_messages(request, [[IMAGE], []])
    first = build_payload(request, {"x": 1}, [], prefix)
    second = build_payload(request, {"x": 2}, [], prefix)
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user"]
    assert [b["type"] for b in first["messages"][0]["content"]] == ["image", "text"]
    assert first["messages"][1]["content"] == [
        {"type": "text", "text": "A1", "cache_control": {"type": "ephemeral"}}
    ]
    assert first["system"] == "Be brief."  # the one breakpoint after the examples covers the system prompt
    assert second["messages"][2]["content"][-1]["text"] == "Describe 2."
    # the prepared prefix is shared: marking one payload never marks it for the next
    assert prefix[1]["content"] == [{"type": "text", "text": "A1"}]


def test_the_default_image_edge_is_the_model_tier() -> None:
    """image_max_edge unset follows the model (1568 px, 2576 px from Claude 4.7); set, it wins."""
    assert _request(model="claude-haiku-4-5").image_edge == 1568
    assert _request(model="claude-opus-4-7").image_edge == 2576
    assert _request(model="claude-opus-4-7", image_max_edge=1000).image_edge == 1000
    assert _request(model="my-local-model").image_edge == 1568
