"""What the Messages endpoint sends back, turned into records and errors. Pure: no httpx, no I/O.

- :func:`parse_message` reads a whole reply body: the Anthropic Message, or the OpenAI-like
  ``choices`` shape some compatible providers (AI/ML API, proxies) return instead.
- :class:`SseDecoder` turns text lines into server-sent events; :class:`StreamAssembler` folds the
  Messages event sequence (or OpenAI-like ``chat.completion.chunk`` events) into the same ``Reply``.
- :func:`read_error_json` and :func:`error_class` read the API's error JSON and say which
  ``ApiError`` subclass a status stands for; :func:`error_from_event` builds the error for an ``error``
  event sent after a 200. The HTTP side (status, headers, HTML pages) is ``pipeline.api.client.classify``.

Text blocks are joined with ``""``, not ``"\\n"``: the API splits one paragraph into several text
blocks when it attaches citations, and a stream's deltas are joined the same way, so both paths agree.
Thinking blocks (``thinking``, streamed as ``thinking_delta``) go to ``Reply.thinking``, joined by a
blank line; a ``redacted_thinking`` block or an omitted display contributes an empty text, so a reply
that thought always has a (maybe empty) ``thinking``. ``stop_details`` (a refusal's category and
explanation, on ``message_delta`` in a stream) goes to ``Reply.stop_details``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.api.classify import _opt_str, _str, error_from_event
from pipeline.errors import RetryableApiError
from pipeline.records import Reply, StopDetails, ToolCall, Usage

# OpenAI finish_reason -> Anthropic stop_reason; anything else passes through unchanged
_FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# --------------------------------------------------------------------------- whole replies


def parse_message(body: Mapping[str, Any], request_id: str | None) -> Reply:
    """A reply body as a ``Reply``; raises ``ValueError`` when it is neither known shape.

    :param body: the decoded JSON of a 2xx reply.
    :param request_id: the ``request-id`` header, kept on the reply for tracing.
    """
    if isinstance(body.get("choices"), list):
        return _parse_openai(body, request_id)
    content = body.get("content")
    if isinstance(content, list) and body.get("type", "message") == "message":
        return _parse_anthropic(body, content, request_id)
    keys = ", ".join(sorted(str(key) for key in body)[:8]) or "none"
    raise ValueError(f"reply is not a Message (keys: {keys})")


def _parse_anthropic(body: Mapping[str, Any], content: list[Any], request_id: str | None) -> Reply:
    texts: list[str] = []
    calls: list[ToolCall] = []
    thoughts: list[str] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise ValueError(f"content block is {type(block).__name__}, not an object")
        kind = block.get("type")
        if kind == "text":
            texts.append(_str(block.get("text")))
        elif kind == "tool_use":
            calls.append(
                ToolCall(_str(block.get("id")), _str(block.get("name")), dump_json(block.get("input")))
            )
        elif kind == "thinking":
            thoughts.append(_str(block.get("thinking")))
        elif kind == "redacted_thinking":
            thoughts.append("")  # encrypted: it was thought, but there is nothing to read
        # server-tool blocks are not part of the output
    return Reply(
        model=_str(body.get("model")),
        text="".join(texts),
        tool_calls=tuple(calls),
        stop_reason=_opt_str(body.get("stop_reason")),
        usage=parse_usage(body.get("usage")),
        message_id=_opt_str(body.get("id")),
        request_id=request_id,
        thinking=join_thinking(thoughts),
        stop_details=parse_stop_details(body.get("stop_details")),
    )


def join_thinking(parts: list[str]) -> str | None:
    """Thinking blocks' texts as one text (None when there were no thinking blocks)."""
    if not parts:
        return None
    return "\n\n".join(part for part in parts if part)


def parse_stop_details(value: object) -> StopDetails | None:
    """``stop_details`` (``{"type": "refusal", "category", "explanation"}``), or None."""
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        return None
    return StopDetails(
        type=value["type"],
        category=_opt_str(value.get("category")),
        explanation=_opt_str(value.get("explanation")),
    )


def _parse_openai(body: Mapping[str, Any], request_id: str | None) -> Reply:
    choices = body["choices"]
    if not choices or not isinstance(choices[0], Mapping):
        raise ValueError("reply has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise ValueError("reply choice has no message")
    calls = tuple(
        ToolCall(
            _str(call.get("id")), _str(function.get("name")), normalise_arguments(function.get("arguments"))
        )
        for call in message.get("tool_calls") or ()
        if isinstance(call, Mapping) and isinstance(function := call.get("function"), Mapping)
    )
    return Reply(
        model=_str(body.get("model")),
        text=_openai_text(message.get("content")),
        tool_calls=calls,
        stop_reason=map_finish_reason(choice.get("finish_reason")),
        usage=parse_usage(body.get("usage")),
        message_id=_opt_str(body.get("id")),
        request_id=request_id,
    )


def _openai_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # content parts: [{"type": "text", "text": ...}, ...]; other part types carry no text
        return "".join(
            _str(part.get("text"))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    raise ValueError(f"message content is {type(content).__name__}")


def parse_usage(usage: object) -> Usage:
    """Token counts; null or missing fields count as 0, and OpenAI's names are accepted too."""
    if not isinstance(usage, Mapping):
        return Usage()
    return Usage(
        input_tokens=_int(usage.get("input_tokens", usage.get("prompt_tokens"))),
        output_tokens=_int(usage.get("output_tokens", usage.get("completion_tokens"))),
        cache_creation_input_tokens=_int(usage.get("cache_creation_input_tokens")),
        cache_read_input_tokens=_int(usage.get("cache_read_input_tokens")),
    )


def map_finish_reason(reason: object) -> str | None:
    """The Anthropic ``stop_reason`` for an OpenAI ``finish_reason`` (unknown values pass through)."""
    if not isinstance(reason, str):
        return None
    return _FINISH_REASONS.get(reason, reason)


def dump_json(value: object) -> str:
    """Tool input as compact JSON text, non-ASCII kept as is; a missing input is ``{}``."""
    return json.dumps({} if value is None else value, ensure_ascii=False, separators=(",", ":"))


def normalise_arguments(arguments: object) -> str:
    """OpenAI ``arguments`` (a JSON string) re-serialised like Anthropic tool input.

    A string that is not JSON is kept verbatim: it is the model's output, not a broken reply.
    """
    if isinstance(arguments, str):
        if not arguments.strip():
            return "{}"
        try:
            return dump_json(json.loads(arguments))
        except ValueError:
            return arguments
    return dump_json(arguments)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) if math.isfinite(value) else 0


# --------------------------------------------------------------------------- server-sent events


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event: its name (``message`` when none was given) and its data text."""

    event: str
    data: str


class SseDecoder:
    """Turns lines (without their line ending, as ``httpx``'s ``aiter_lines`` yields them) into events.

    Follows the WHATWG rules the API relies on: ``event:`` and ``data:`` fields, one optional space
    after the colon, several ``data:`` lines joined with ``\\n``, ``:`` comments, and a blank line
    ending each event. ``id:`` and ``retry:`` are ignored: a batch client never reconnects a stream.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """Take one line; return the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None

    def flush(self) -> SseEvent | None:
        """The event left when the stream ends without a final blank line.

        The SSE spec drops it; we keep it, because a server that omits the last blank line still
        sent a complete ``message_stop``, and losing it would turn a good reply into a retry.
        """
        return self._dispatch()

    def _dispatch(self) -> SseEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseEvent(event, "\n".join(data))


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Every event in ``lines``, including an unterminated last one."""
    decoder = SseDecoder()
    for line in lines:
        if (event := decoder.feed(line)) is not None:
            yield event
    if (event := decoder.flush()) is not None:
        yield event


@dataclass(slots=True)
class _Block:
    kind: str
    parts: list[str]
    id: str = ""
    name: str = ""
    input_json: str | None = None  # a tool block's input, set when the block stops


class StreamAssembler:
    """Folds a stream's events into one ``Reply``.

    Feed it every event with :meth:`feed_sse` (or :meth:`feed` once the data is decoded), then call
    :meth:`finish`. An ``error`` event raises the ``ApiError`` its type stands for; ``finish`` on a
    stream that never reached ``message_stop`` raises a retryable ``connection_error``.

    OpenAI-like ``chat.completion.chunk`` streams (data-only events ending in ``[DONE]``) are
    assembled too, because compatible providers send them for the same request.
    """

    def __init__(self, request_id: str | None = None) -> None:
        self.request_id = request_id
        self.done = False
        self._model = ""
        self._message_id: str | None = None
        self._stop_reason: str | None = None
        self._stop_details: StopDetails | None = None
        self._usage: dict[str, int] = {}
        self._blocks: dict[int, _Block] = {}
        # OpenAI-like chunks: tool calls are keyed by their own index, separate from text
        self._text: list[str] = []
        self._calls: dict[int, _Block] = {}

    def feed_sse(self, event: SseEvent) -> None:
        """Decode one event's JSON data and feed it; raises ``ValueError`` on data that is not an object."""
        if event.data.strip() == "[DONE]":
            self.done = True  # the OpenAI-like stream's end marker
            return
        data = json.loads(event.data)
        if not isinstance(data, dict):
            raise ValueError(f"stream event {event.event!r} carries {type(data).__name__}, not an object")
        self.feed(event.event, data)

    def feed(self, event: str, data: Mapping[str, Any]) -> None:
        """Take one event: its name (``message`` or empty when unnamed) and its decoded data."""
        kind = event if event not in ("", "message") else _str(data.get("type"))
        if kind == "error" or (not kind and isinstance(data.get("error"), Mapping)):
            raise error_from_event(data, self.request_id)
        if not kind and isinstance(data.get("choices"), list):
            self._feed_chunk(data)
            return
        match kind:
            case "message_start":
                self._message_start(data)
            case "content_block_start":
                self._block_start(data)
            case "content_block_delta":
                self._block_delta(data)
            case "content_block_stop":
                self._block_stop(data)
            case "message_delta":
                self._message_delta(data)
            case "message_stop":
                self.done = True
            case _:
                pass  # ping, and event types added after this client was written, as the docs ask

    def finish(self) -> Reply:
        """The assembled reply; raises ``RetryableApiError`` if the stream ended before it was complete."""
        if not self.done:
            raise RetryableApiError(
                "stream ended early (no message_stop)",
                status=200,
                error_type="connection_error",
                request_id=self.request_id,
            )
        texts: list[str] = list(self._text)
        calls: list[ToolCall] = []
        thoughts: list[str] = []
        for _, block in sorted(self._blocks.items()):
            if block.kind == "text":
                texts.append("".join(block.parts))
            elif block.kind == "tool_use":
                calls.append(ToolCall(block.id, block.name, _tool_input(block)))
            elif block.kind in ("thinking", "redacted_thinking"):
                thoughts.append("".join(block.parts))
        calls.extend(
            ToolCall(block.id, block.name, normalise_arguments("".join(block.parts)))
            for _, block in sorted(self._calls.items())
        )
        usage = self._usage
        return Reply(
            model=self._model,
            text="".join(texts),
            tool_calls=tuple(calls),
            stop_reason=self._stop_reason,
            usage=Usage(
                input_tokens=usage.get("input_tokens", 0),
                output_tokens=usage.get("output_tokens", 0),
                cache_creation_input_tokens=usage.get("cache_creation_input_tokens", 0),
                cache_read_input_tokens=usage.get("cache_read_input_tokens", 0),
            ),
            message_id=self._message_id,
            request_id=self.request_id,
            thinking=join_thinking(thoughts),
            stop_details=self._stop_details,
        )

    # ---- Anthropic events

    def _message_start(self, data: Mapping[str, Any]) -> None:
        message = data.get("message")
        if not isinstance(message, Mapping):
            raise ValueError("message_start without a message")
        self._model = _str(message.get("model"))
        self._message_id = _opt_str(message.get("id"))
        self._merge_usage(message.get("usage"))

    def _block_start(self, data: Mapping[str, Any]) -> None:
        block = data.get("content_block")
        if not isinstance(block, Mapping):
            raise ValueError("content_block_start without a content_block")
        kind = _str(block.get("type"))
        # a text block may open with text already in it; a tool block's start input is {} by convention
        parts = [_str(block.get("text"))] if kind == "text" else []
        if kind == "thinking":
            parts = [_str(block.get("thinking"))]
        self._blocks[_index(data)] = _Block(kind, parts, _str(block.get("id")), _str(block.get("name")))

    def _block_delta(self, data: Mapping[str, Any]) -> None:
        delta = data.get("delta")
        block = self._blocks.get(_index(data))
        if not isinstance(delta, Mapping) or block is None:
            raise ValueError("content_block_delta for a block that never started")
        kind = delta.get("type")
        if kind == "text_delta":
            block.parts.append(_str(delta.get("text")))
        elif kind == "input_json_delta":
            block.parts.append(_str(delta.get("partial_json")))
        elif kind == "thinking_delta":
            block.parts.append(_str(delta.get("thinking")))
        # signature and citations deltas do not reach the output

    def _block_stop(self, data: Mapping[str, Any]) -> None:
        block = self._blocks.get(_index(data))
        if block is not None and block.kind == "tool_use":
            block.input_json = _tool_input(block)

    def _message_delta(self, data: Mapping[str, Any]) -> None:
        delta = data.get("delta")
        if isinstance(delta, Mapping) and "stop_reason" in delta:
            self._stop_reason = _opt_str(delta.get("stop_reason"))
        if isinstance(delta, Mapping) and "stop_details" in delta:
            self._stop_details = parse_stop_details(delta.get("stop_details"))
        # usage here is cumulative: it replaces what message_start said, field by field
        self._merge_usage(data.get("usage"))

    def _merge_usage(self, usage: object) -> None:
        if not isinstance(usage, Mapping):
            return
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            if usage.get(key) is not None:
                self._usage[key] = _int(usage[key])
        # the OpenAI spelling, which some providers use inside Anthropic-shaped streams
        for key, ours in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
            if usage.get(key) is not None and ours not in usage:
                self._usage[ours] = _int(usage[key])

    # ---- OpenAI-like chunks

    def _feed_chunk(self, data: Mapping[str, Any]) -> None:
        self._model = self._model or _str(data.get("model"))
        self._message_id = self._message_id or _opt_str(data.get("id"))
        self._merge_usage(data.get("usage"))
        for choice in data["choices"][:1]:
            if not isinstance(choice, Mapping):
                raise ValueError("chunk choice is not an object")
            if choice.get("finish_reason") is not None:
                self._stop_reason = map_finish_reason(choice["finish_reason"])
            delta = choice.get("delta")
            if not isinstance(delta, Mapping):
                continue
            self._text.append(_openai_text(delta.get("content")))
            for call in delta.get("tool_calls") or ():
                self._feed_call(call)

    def _feed_call(self, call: object) -> None:
        if not isinstance(call, Mapping):
            raise ValueError("chunk tool call is not an object")
        block = self._calls.setdefault(_index(call), _Block("tool_use", []))
        block.id = block.id or _str(call.get("id"))
        function = call.get("function")
        if isinstance(function, Mapping):
            block.name = block.name or _str(function.get("name"))
            block.parts.append(_str(function.get("arguments")))


def _index(data: Mapping[str, Any]) -> int:
    index = data.get("index", 0)
    if not isinstance(index, int):
        raise ValueError(f"event index is {type(index).__name__}, not an int")
    return index


def _tool_input(block: _Block) -> str:
    if block.input_json is not None:
        return block.input_json
    raw = "".join(block.parts)
    # the API streams an empty partial_json for a tool called with no arguments
    return dump_json(json.loads(raw) if raw.strip() else {})


# --------------------------------------------------------------------------- errors
