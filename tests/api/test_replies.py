"""Reply parsing, SSE decoding and stream assembly: pure, no network."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.api.classify import error_from_event
from pipeline.api.replies import SseEvent, StreamAssembler, iter_sse, parse_message
from pipeline.errors import ApiError, FatalApiError, PermanentApiError, RetryableApiError
from pipeline.records import ToolCall, Usage

ANTHROPIC = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "x"},
        {"type": "text", "text": "The grass is green"},
        {"type": "text", "text": " and the sky is blue."},
        {"type": "tool_use", "id": "toolu_1", "name": "record", "input": {"colour": "grün", "n": 2}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 25,
        "output_tokens": 13,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": 7,
        "service_tier": "standard",
    },
}

OPENAI = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "anthropic/claude-sonnet-4.5",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "record", "arguments": '{ "colour": "grün" }'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 10, "completion_tokens": 15, "total_tokens": 25},
    "meta": {"usage": {"credits_used": 3, "usd_spent": 0.0001}},
}


def test_parse_anthropic_message() -> None:
    """Text blocks join with "", tool input becomes compact JSON, thinking stays apart, null usage is 0."""
    reply = parse_message(ANTHROPIC, "req_1")
    assert reply.text == "The grass is green and the sky is blue."
    assert reply.thinking == "hmm"
    assert reply.tool_calls == (ToolCall("toolu_1", "record", '{"colour":"grün","n":2}'),)
    assert reply.stop_reason == "tool_use"
    assert reply.usage == Usage(25, 13, 0, 7)
    assert (reply.model, reply.message_id, reply.request_id) == ("claude-haiku-4-5", "msg_01", "req_1")


def test_parse_anthropic_message_with_meta_and_missing_usage() -> None:
    """AI/ML API's extra ``meta`` key is ignored, and a missing usage counts as zero."""
    body = {"type": "message", "content": [{"type": "text", "text": "hi"}], "meta": {"usage": {}}}
    reply = parse_message(body, None)
    assert reply.text == "hi"
    assert reply.usage == Usage()
    assert reply.stop_reason is None


def test_parse_openai_shape() -> None:
    """The OpenAI-like shape maps content, tool calls, finish_reason and prompt/completion tokens."""
    reply = parse_message(OPENAI, "req_2")
    assert reply.text == "Hello"
    assert reply.tool_calls == (ToolCall("call_1", "record", '{"colour":"grün"}'),)
    assert reply.stop_reason == "tool_use"
    assert reply.usage == Usage(input_tokens=10, output_tokens=15)
    assert reply.model == "anthropic/claude-sonnet-4.5"


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), (None, None)],
)
def test_openai_finish_reasons(finish: str | None, stop: str | None) -> None:
    """finish_reason stop/length/tool_calls become end_turn/max_tokens/tool_use."""
    body = {"choices": [{"message": {"content": None}, "finish_reason": finish}]}
    reply = parse_message(body, None)
    assert reply.stop_reason == stop
    assert reply.text == ""


def test_openai_content_parts() -> None:
    """A list of content parts is joined from its text parts."""
    body = {
        "choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}]
    }
    assert parse_message(body, None).text == "ab"


@pytest.mark.parametrize(
    "body",
    [
        {"hello": "world"},
        {"type": "message", "content": "not a list"},
        {"choices": []},
        {"choices": [{"nope": 1}]},
        {"type": "message", "content": ["bare string block"]},
    ],
)
def test_unrecognisable_shape_raises_value_error(body: dict[str, Any]) -> None:
    """A body that is neither shape raises ValueError (the client makes it a retryable parse_error)."""
    with pytest.raises(ValueError, match=r"\w"):
        parse_message(body, None)


def sse(*events: tuple[str, dict[str, Any]]) -> list[str]:
    """Events as the lines ``aiter_lines`` would yield."""
    lines: list[str] = []
    for name, data in events:
        lines += [f"event: {name}", f"data: {json.dumps(data)}", ""]
    return lines


def assemble(lines: list[str], request_id: str | None = "req_s") -> StreamAssembler:
    """Feed decoded lines into a fresh assembler."""
    assembler = StreamAssembler(request_id)
    for event in iter_sse(lines):
        assembler.feed_sse(event)
    return assembler


FULL_STREAM: list[tuple[str, dict[str, Any]]] = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_s",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "usage": {
                    "input_tokens": 40,
                    "output_tokens": 1,
                    "cache_creation_input_tokens": 5,
                    "cache_read_input_tokens": None,
                },
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "citations_delta", "citation": {}}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "record", "input": {}},
        },
    ),
    *[
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part},
            },
        )
        for part in ["", '{"colour": "gr', 'ün", "n"', ": 2}"]
    ],
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("brand_new_event", {"type": "brand_new_event"}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 31},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def test_stream_assembles_text_tool_input_and_usage() -> None:
    """Text deltas join, input_json_delta pieces parse at block stop, usage merges start and delta."""
    reply = assemble(sse(*FULL_STREAM)).finish()
    assert reply.text == "Hello"
    assert reply.tool_calls == (ToolCall("toolu_9", "record", '{"colour":"grün","n":2}'),)
    assert reply.stop_reason == "tool_use"
    assert reply.usage == Usage(input_tokens=40, output_tokens=31, cache_creation_input_tokens=5)
    assert (reply.message_id, reply.model, reply.request_id) == ("msg_s", "claude-sonnet-4-5", "req_s")


def test_tool_with_empty_input_streams_as_empty_object() -> None:
    """A tool block whose partial_json pieces are all empty has input ``{}``."""
    events = [
        FULL_STREAM[0],
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "t", "name": "f"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_stop", {"type": "message_stop"}),
    ]
    assert assemble(sse(*events)).finish().tool_calls == (ToolCall("t", "f", "{}"),)


def test_stream_without_message_stop_is_retryable_connection_error() -> None:
    """A stream cut before message_stop raises a retryable connection_error on finish."""
    assembler = assemble(sse(*FULL_STREAM[:5]))
    with pytest.raises(RetryableApiError, match="ended early") as caught:
        assembler.finish()
    assert caught.value.error_type == "connection_error"
    assert caught.value.request_id == "req_s"


def test_bad_partial_json_raises_value_error() -> None:
    """Tool input that does not parse at block stop raises ValueError (a retryable parse_error upstream)."""
    events = [
        FULL_STREAM[0],
        FULL_STREAM[7],
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"a'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ]
    with pytest.raises(ValueError, match=r"\w"):
        assemble(sse(*events))


@pytest.mark.parametrize(
    ("error_type", "cls", "status"),
    [
        ("overloaded_error", RetryableApiError, 529),
        ("api_error", RetryableApiError, 500),
        ("rate_limit_error", RetryableApiError, 429),
        ("invalid_request_error", PermanentApiError, 400),
        ("authentication_error", FatalApiError, 401),
        ("some_vendor_error", RetryableApiError, 500),
    ],
)
def test_stream_error_event_raises_its_type(error_type: str, cls: type[ApiError], status: int) -> None:
    """An ``error`` event after the 200 raises the ApiError class its error.type stands for."""
    lines = sse(
        FULL_STREAM[0], ("error", {"type": "error", "error": {"type": error_type, "message": "Overloaded"}})
    )
    with pytest.raises(ApiError) as caught:
        assemble(lines)
    assert type(caught.value) is cls
    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert "Overloaded" in caught.value.message


def test_openai_chunk_stream_assembles() -> None:
    """An OpenAI-like chunk stream (data-only, ending in [DONE]) assembles into the same Reply."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        data: dict[str, Any] = {
            "id": "c1",
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            data["usage"] = usage
        return f"data: {json.dumps(data)}"

    head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    lines = [
        chunk({"role": "assistant", "content": ""}),
        "",
        chunk({"content": "Hi "}),
        "",
        chunk({"content": "there"}),
        "",
        chunk({"tool_calls": [head]}),
        "",
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        "",
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        "",
        chunk({}, "tool_calls", {"prompt_tokens": 3, "completion_tokens": 4}),
        "",
        "data: [DONE]",
        "",
    ]
    reply = assemble(lines).finish()
    assert reply.text == "Hi there"
    assert reply.tool_calls == (ToolCall("call_1", "f", '{"a":1}'),)
    assert reply.stop_reason == "tool_use"
    assert reply.usage == Usage(input_tokens=3, output_tokens=4)


def test_openai_chunk_stream_error_is_retryable() -> None:
    """An unnamed ``{"error": {...}}`` data event raises like a named error event."""
    lines = ['data: {"error": {"type": "overloaded_error", "message": "Overloaded"}}', ""]
    with pytest.raises(RetryableApiError):
        assemble(lines)


def test_sse_decoder_multiline_data_comments_and_unterminated_last_event() -> None:
    """Data lines join with a newline, comments are skipped, a last event without blank line is kept."""
    lines = [": keep-alive", "event: a", "data: {", 'data:  "x": 1}', "", "", "event: b", "data:{}"]
    assert list(iter_sse(lines)) == [SseEvent("a", '{\n "x": 1}'), SseEvent("b", "{}")]


def test_sse_event_without_name_is_message() -> None:
    """An event with no ``event:`` line is named ``message``; one without data is not dispatched."""
    assert list(iter_sse(["event: ping", "", "data: 1", ""])) == [SseEvent("message", "1")]


# ---------------------------------------------------------------- errors inside a 200


def test_error_body_inside_200() -> None:
    """An error JSON served with 200 maps by its type, like a stream error event."""
    error = error_from_event(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "req"
    )
    assert type(error) is RetryableApiError
    assert (error.status, error.request_id) == (529, "req")


def test_thinking_and_a_refusals_stop_details_are_kept_whole_and_streamed() -> None:
    """Thinking text (empty when omitted or redacted) and stop_details come out the same from both paths."""
    body = {
        **ANTHROPIC,
        "content": [
            {"type": "thinking", "thinking": "", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Hello.."},
        ],
        "stop_reason": "refusal",
        "stop_details": {"type": "refusal", "category": "cyber", "explanation": "declined"},
    }
    whole = parse_message(body, None)
    assert (whole.thinking, whole.text, whole.stop_reason) == ("", "Hello..", "refusal")
    assert whole.stop_details is not None
    assert (whole.stop_details.category, whole.stop_details.explanation) == ("cyber", "declined")
    assert parse_message({**ANTHROPIC, "content": [{"type": "text", "text": "x"}]}, None).thinking is None
    start = FULL_STREAM[0]
    bio = {"type": "refusal", "category": "bio", "explanation": None}
    thinking = [
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "see."}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "sig"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": "Hi"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9},
                           "delta": {"stop_reason": "refusal", "stop_sequence": None, "stop_details": bio}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    streamed = assemble(sse(start, *thinking)).finish()
    assert (streamed.thinking, streamed.text, streamed.stop_reason) == ("Let me see.", "Hi", "refusal")
    assert streamed.stop_details is not None
    assert streamed.stop_details.category == "bio"
