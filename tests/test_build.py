"""Building payloads: prompt rendering, block order, optional parameters, token estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.build import build_payload, estimate_input_tokens, render_template
from pipeline.errors import RowError
from pipeline.images import PreparedImage
from pipeline.spec import parse_job

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
