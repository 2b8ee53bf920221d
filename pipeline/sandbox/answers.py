"""Deterministic answers: the request digest, the reply's content and usage, and its two JSON shapes.

The text of a reply depends only on the request (its digest, the last user text and the image
count), so tests can prove each row got its own answer and that a repeat gets the same one. Ids are
random, as the hosted API's are. Output tokens::

    ceil(len(thinking) / 4) + ceil(len(text) / 4) + ceil(len(tool input JSON) / 4), at least 1

Thinking (asked for, or the model's default) comes first, as a ``thinking`` block whose text is
empty when its display is ``omitted`` (it is paid for all the same). With ``output_config.format``
the text is JSON made from the schema (``toolinput``). A request may be made to come back refused
(``stop_reason`` ``refusal`` with ``stop_details``) or cut short (``max_tokens``), as the seeded
``refusal_rate`` and ``truncation_rate`` say; an answer longer than ``max_tokens`` is cut anyway.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any

from pipeline.sandbox.models import known_facts
from pipeline.sandbox.toolinput import break_input, synthesise
from pipeline.sandbox.validate import ParsedRequest

SNIPPET_CHARS = 120
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
}
REFUSAL_DETAILS = {
    "type": "refusal",
    "category": "cyber",
    "explanation": "[sandbox] declined on purpose (refusal_rate): this request was declined.",
}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One ``tool_use`` block; ``arguments`` is the input as compact JSON (also what streams send)."""

    id: str
    name: str
    input: dict[str, Any]
    arguments: str


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything a reply carries, whatever the wire shape."""

    message_id: str
    model: str
    text: str | None
    tool_calls: tuple[ToolCall, ...]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_ttl: str = "5m"  # which TTL the cache write was for (usage.cache_creation splits by it)
    thinking: str | None = None  # the thinking block's text as shown ("" when omitted); None: no block
    signature: str = ""
    stop_details: dict[str, Any] | None = None


def request_digest(body: dict[str, Any]) -> str:
    """sha256 hex of the canonical request JSON without ``stream`` (a streamed repeat is the same request)."""
    canonical = {key: value for key, value in body.items() if key != "stream"}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def new_id(prefix: str) -> str:
    """A fresh ``<prefix>_sandbox_<hex>`` id."""
    return f"{prefix}_sandbox_{os.urandom(12).hex()}"


def reply_text(parsed: ParsedRequest, digest: str) -> str:
    """The full (untruncated) text answer for a request."""
    snippet = parsed.last_user_text[:SNIPPET_CHARS]
    if len(parsed.last_user_text) > SNIPPET_CHARS:
        snippet += "..."
    count = parsed.image_count
    return f'[sandbox] reply {digest[:8]} to "{snippet}" ({count} image{"" if count == 1 else "s"})'


def thinking_text(parsed: ParsedRequest, digest: str) -> str | None:
    """The thinking an answer starts with, or None when the request does not think."""
    facts = known_facts(parsed.model)
    thinks = parsed.thinking in ("adaptive", "enabled")
    if parsed.thinking is None and facts is not None:
        thinks = facts.thinks_by_default()
    if not thinks:
        return None
    return f"[sandbox] thinking about {digest[:8]}: what does the request ask, and how best to answer it?"


def _shown(parsed: ParsedRequest, thought: str) -> str:
    facts = known_facts(parsed.model)
    display = parsed.thinking_display or (facts.thinking_display if facts is not None else "summarized")
    return "" if display == "omitted" else thought


def make_answer(
    parsed: ParsedRequest,
    digest: str,
    *,
    bad_tool_input: bool = False,
    refuse: bool = False,
    truncate: bool = False,
) -> Answer:
    """Build the reply, honouring thinking, tool_choice, output_config.format, stop_sequences and
    max_tokens in generation order.

    ``bad_tool_input`` makes the tool input (or the JSON answer) break its schema
    (``SandboxConfig.tool_violation_rate``); ``refuse`` and ``truncate`` make it a refusal or cut it
    short (``refusal_rate``, ``truncation_rate``).
    """
    thought = thinking_text(parsed, digest)
    thought_tokens = math.ceil(len(thought) / 4) if thought else 0
    if refuse:
        return _refusal(parsed, thought, thought_tokens)
    text: str | None = None if parsed.tool_choice in ("tool", "any") else reply_text(parsed, digest)
    if parsed.output_schema is not None and text is not None:
        rng = random.Random(int(digest[16:32], 16))
        value = synthesise(parsed.output_schema, rng)
        if bad_tool_input:
            value = break_input(parsed.output_schema, value)
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    calls: tuple[ToolCall, ...] = ()
    if parsed.tool_choice in ("tool", "any", "auto"):
        tool = (
            next(t for t in parsed.tools if t["name"] == parsed.tool_name)
            if parsed.tool_name
            else parsed.tools[0]
        )
        rng = random.Random(int(digest[:16], 16))
        tool_input = synthesise(tool["input_schema"], rng)
        if bad_tool_input:
            tool_input = break_input(tool["input_schema"], tool_input)
        arguments = json.dumps(tool_input, separators=(",", ":"), ensure_ascii=False)
        calls = (ToolCall(new_id("toolu"), tool["name"], tool_input, arguments),)
    stop_reason = "tool_use" if calls else "end_turn"
    stop_sequence: str | None = None
    left = max(parsed.max_tokens - thought_tokens, 0)  # thinking tokens count toward max_tokens
    budget = left * 4  # characters that fit in what is left at four per token
    if truncate and text is not None:
        budget = min(budget, len(text) // 2)  # cut short on purpose (truncation_rate)
    if text is not None:
        hit = _first_stop(text, parsed.stop_sequences)
        if hit is not None and hit[0] < budget:
            text, stop_sequence, stop_reason, calls = text[: hit[0]], hit[1], "stop_sequence", ()
        elif len(text) > budget:
            text, stop_reason, calls = text[:budget], "max_tokens", ()
    text_tokens = math.ceil(len(text) / 4) if text else 0
    output_tokens = thought_tokens + text_tokens + sum(math.ceil(len(call.arguments) / 4) for call in calls)
    if output_tokens > parsed.max_tokens or (truncate and calls):
        # the tool input did not fit: generation stopped inside it, so no usable call comes back
        calls, stop_reason, output_tokens = (), "max_tokens", parsed.max_tokens
    if stop_reason == "max_tokens":
        output_tokens = parsed.max_tokens  # a cut-off answer used every token it was allowed
    return Answer(
        message_id=new_id("msg"),
        model="sandbox:" + parsed.model,
        text=text or None,
        tool_calls=calls,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        input_tokens=parsed.input_tokens,
        output_tokens=max(output_tokens, 1),
        thinking=None if thought is None else _shown(parsed, thought),
        signature=_signature(digest) if thought is not None else "",
    )


def _refusal(parsed: ParsedRequest, thought: str | None, thought_tokens: int) -> Answer:
    """A declined request: a normal 200 with ``stop_reason`` ``refusal`` and its ``stop_details``."""
    text = "[sandbox] I can't help with that."
    return Answer(
        message_id=new_id("msg"),
        model="sandbox:" + parsed.model,
        text=text,
        tool_calls=(),
        stop_reason="refusal",
        stop_sequence=None,
        input_tokens=parsed.input_tokens,
        output_tokens=thought_tokens + math.ceil(len(text) / 4),
        thinking=None if thought is None else _shown(parsed, thought),
        signature=_signature(text) if thought is not None else "",
        stop_details=dict(REFUSAL_DETAILS),
    )


def _signature(seed: str) -> str:
    return hashlib.sha256(f"signature:{seed}".encode()).hexdigest()


def _first_stop(text: str, stop_sequences: tuple[str, ...]) -> tuple[int, str] | None:
    hits = [(text.find(seq), seq) for seq in stop_sequences if seq in text]
    return min(hits) if hits else None


def usage_json(
    input_tokens: int, output_tokens: int, cached: tuple[int, int] = (0, 0), *, ttl: str = "5m"
) -> dict[str, Any]:
    """Anthropic ``usage``; ``cached`` is (cache write, cache read) tokens, 0 when nothing was cached."""
    write, read = cached
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": write if ttl == "5m" else 0,
            "ephemeral_1h_input_tokens": write if ttl == "1h" else 0,
        },
        "service_tier": "standard",
    }


def content_json(answer: Answer) -> list[dict[str, Any]]:
    """The ``content`` blocks of an Anthropic Message."""
    blocks: list[dict[str, Any]] = []
    if answer.thinking is not None:
        blocks.append({"type": "thinking", "thinking": answer.thinking, "signature": answer.signature})
    if answer.text:
        blocks.append({"type": "text", "text": answer.text})
    blocks.extend(
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in answer.tool_calls
    )
    return blocks


def anthropic_message(answer: Answer) -> dict[str, Any]:
    """The hosted API's Message JSON."""
    return {
        "id": answer.message_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content_json(answer),
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "stop_details": answer.stop_details,
        "usage": usage_json(
            answer.input_tokens,
            answer.output_tokens,
            (answer.cache_creation_input_tokens, answer.cache_read_input_tokens),
            ttl=answer.cache_ttl,
        ),
    }


def openai_completion(answer: Answer, created: int) -> dict[str, Any]:
    """The OpenAI-like ``chat.completion`` JSON that some compatible providers send instead."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in answer.tool_calls
        ]
    return {
        "id": answer.message_id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(answer)}],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
        },
    }


def finish_reason(answer: Answer) -> str:
    """The OpenAI ``finish_reason`` for an Anthropic ``stop_reason``."""
    return _FINISH_REASONS[answer.stop_reason]
