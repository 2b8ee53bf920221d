"""Server-sent events for streamed replies: the Messages event sequence, and OpenAI-like chunks.

Anthropic order (https://platform.claude.com/docs/en/build-with-claude/streaming): ``message_start``; per
block ``content_block_start``, deltas, ``content_block_stop``; one ``ping`` after the first block
starts; ``message_delta`` with the stop reason (and ``stop_details``) and cumulative usage;
``message_stop``. A thinking block streams first, as ``thinking_delta`` pieces then one
``signature_delta`` before its stop (nothing but the signature when its display is omitted). Tool
input streams as ``input_json_delta`` pieces that start with an empty ``partial_json``, as the
hosted API sends them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pipeline.sandbox.answers import Answer, finish_reason, usage_json

CHUNKS = 3  # deltas per block: enough to prove the client joins them


def event(name: str, data: dict[str, Any]) -> bytes:
    """One named SSE event."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def message_start(message_id: str, model: str, input_tokens: int, cached: tuple[int, int] = (0, 0)) -> bytes:
    """The opening event: an empty Message with the input usage and one output token."""
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_json(input_tokens, 1, cached),
    }
    return event("message_start", {"type": "message_start", "message": message})


def error_event(error_type: str, message: str) -> bytes:
    """An in-stream error, as the API sends after a 200 (e.g. ``overloaded_error``)."""
    return event("error", {"type": "error", "error": {"type": error_type, "message": message}})


def _pieces(text: str) -> list[str]:
    size = max(1, math.ceil(len(text) / CHUNKS))
    return [text[i : i + size] for i in range(0, len(text), size)]


def anthropic_events(answer: Answer) -> bytes:
    """Everything after ``message_start``, joined: the blocks, ``message_delta`` and ``message_stop``."""
    out: list[bytes] = []
    index = 0
    if answer.thinking is not None:
        out.append(_block_start(index, {"type": "thinking", "thinking": "", "signature": ""}))
        out.append(event("ping", {"type": "ping"}))
        out.extend(
            _delta(index, {"type": "thinking_delta", "thinking": piece}) for piece in _pieces(answer.thinking)
        )
        out.append(_delta(index, {"type": "signature_delta", "signature": answer.signature}))
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if answer.text:
        out.append(_block_start(index, {"type": "text", "text": ""}))
        if index == 0:
            out.append(event("ping", {"type": "ping"}))
        out.extend(_delta(index, {"type": "text_delta", "text": piece}) for piece in _pieces(answer.text))
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for call in answer.tool_calls:
        out.append(_block_start(index, {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}))
        if index == 0:
            out.append(event("ping", {"type": "ping"}))
        for piece in ["", *_pieces(call.arguments)]:
            out.append(_delta(index, {"type": "input_json_delta", "partial_json": piece}))
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if index == 0:
        out.append(event("ping", {"type": "ping"}))
    stop: dict[str, Any] = {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}
    if answer.stop_details is not None:
        stop["stop_details"] = answer.stop_details  # a refusal's category, on message_delta
    delta = {
        "type": "message_delta",
        "delta": stop,
        # cumulative totals, as the hosted API sends them on message_delta
        "usage": {
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "cache_creation_input_tokens": answer.cache_creation_input_tokens,
            "cache_read_input_tokens": answer.cache_read_input_tokens,
        },
    }
    out.append(event("message_delta", delta))
    out.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def _block_start(index: int, block: dict[str, Any]) -> bytes:
    return event(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
    )


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def openai_chunks(answer: Answer, created: int) -> bytes:
    """An OpenAI-like ``chat.completion.chunk`` stream ending in ``data: [DONE]``."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": answer.message_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()

    out = [chunk({"role": "assistant", "content": ""})]
    out.extend(chunk({"content": piece}) for piece in _pieces(answer.text or ""))
    for position, call in enumerate(answer.tool_calls):
        head = {
            "index": position,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        out.append(chunk({"tool_calls": [head]}))
        out.extend(
            chunk({"tool_calls": [{"index": position, "function": {"arguments": piece}}]})
            for piece in _pieces(call.arguments)
        )
    usage = {
        "prompt_tokens": answer.input_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    out.append(chunk({}, finish_reason(answer), usage))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
