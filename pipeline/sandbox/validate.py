"""What a Messages request must look like, checked as strictly as the hosted API, and its input-token cost.

``parse_request`` walks the JSON body once: it raises ``RequestError`` with the API's message and the
JSON path of the first problem, or returns a ``ParsedRequest`` holding everything the answer needs.
Input tokens (usage, count_tokens and the rate limiter all use this one count, see ``tokens``)::

    tokens of (tool definitions JSON + system + text blocks), in the API's prefix order
    + 4 per message + each image's tokens after the API's own resizing

Blocks carrying ``cache_control`` are noted as cache breakpoints: the request's last breakpoint
names the prefix (tools -> system -> messages, as the prompt-caching docs order it) that the
prompt cache may hold.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pipeline.sandbox.apierrors import RequestError
from pipeline.sandbox.settings import check_output_config, check_thinking, integer, settings_of
from pipeline.sandbox.tokens import image_tokens, raw_text_tokens, scale_text_tokens
from pipeline.sandbox.tools import check_tool_choice, check_tools
from pipeline.sandbox.vision import check_base64_image, check_image_set

MAX_MESSAGES = 100_000
MAX_CACHE_BREAKPOINTS = 4
MESSAGE_OVERHEAD_TOKENS = 4
TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")

_OPTIONAL = frozenset({
    "system", "temperature", "top_p", "top_k", "stop_sequences", "stream", "tools", "tool_choice",
    "metadata", "service_tier", "thinking", "output_config", "cache_control", "container", "inference_geo",
    "speed",
})  # fmt: skip
# beta body fields, accepted only with their anthropic-beta header (anthropic-sdk-python 2.15.0
# types/beta/message_create_params.py: fallbacks "with the server-side-fallback beta header")
BETA_KEYS = {"fallbacks": "server-side-fallback-"}
MESSAGES_KEYS = frozenset({"model", "max_tokens", "messages"}) | _OPTIONAL
# count_tokens takes fewer parameters (SDK message_count_tokens_params): no sampling, no stream, no max_tokens
COUNT_TOKENS_KEYS = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "cache_control",
    "speed",
})  # fmt: skip

_BLOCK_KEYS = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "document": frozenset({"type", "source", "title", "context", "citations", "cache_control"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}
_EMPTY_CONTENT = "all messages must have non-empty content except for the optional final assistant message"
_NESTED_TYPES = ("text", "image", "document")  # what a tool_result's content list may hold


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The facts of a valid request that answers, limits and stats need (the body stays as sent)."""

    model: str
    max_tokens: int  # 0 for count_tokens, which has none
    stream: bool
    stop_sequences: tuple[str, ...]
    tools: tuple[dict[str, Any], ...]
    tool_choice: str | None  # auto | any | tool | none; None when no tools
    tool_name: str | None  # the tool that tool_choice "tool" names
    last_user_text: str
    image_count: int
    input_tokens: int
    cache_key: str | None = None  # hash of the model and the prefix up to the last breakpoint
    cache_prefix_tokens: int = 0  # input tokens of that prefix
    cache_ttl: str = "5m"
    thinking: str | None = None  # thinking.type as sent (None: left to the model's default)
    thinking_display: str | None = None
    output_schema: dict[str, Any] | None = None  # output_config.format.schema


class _Tally:
    """Running totals of one walk over the body, in the API's prefix order."""

    __slots__ = ("breakpoints", "images", "model", "parts", "text", "top_level_cache")

    def __init__(self, model: str) -> None:
        self.model = model
        self.text = 0  # raw text tokens, before the model's tokenizer factor
        self.images: list[tuple[str, int, int]] = []
        self.parts: list[object] = []  # prefix blocks so far, for the cache key
        self.breakpoints: list[tuple[int, int, str]] = []  # (parts, tokens, ttl) at each breakpoint
        self.top_level_cache = False

    def add_text(self, text: str) -> None:
        self.text += raw_text_tokens(text)

    @property
    def tokens(self) -> int:
        images = sum(image_tokens(width, height, self.model) for _, width, height in self.images)
        return scale_text_tokens(self.text, self.model) + images

    def note(self, block: object, path: str) -> None:
        """Record a prefix block; when it carries ``cache_control``, the prefix up to it is cacheable."""
        if not isinstance(block, dict) or "cache_control" not in block:
            self.parts.append(block)
            return
        control = block["cache_control"]
        if not isinstance(control, dict) or control.get("type") != "ephemeral":
            raise RequestError(f"{path}.cache_control.type: Input should be 'ephemeral'")
        ttl = control.get("ttl", "5m")
        if ttl not in ("5m", "1h"):
            raise RequestError(f"{path}.cache_control.ttl: Input should be '5m' or '1h'")
        self.parts.append({key: value for key, value in block.items() if key != "cache_control"})
        self.breakpoints.append((len(self.parts), self.tokens, ttl))
        if len(self.breakpoints) + self.top_level_cache > MAX_CACHE_BREAKPOINTS:
            raise RequestError(
                f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
                f"Found {len(self.breakpoints) + self.top_level_cache}."
            )

    def cache_prefix(self) -> tuple[str | None, int, str]:
        """(key, tokens, ttl) of the prefix up to the last breakpoint, or (None, 0, "5m")."""
        if not self.breakpoints:
            return (None, 0, "5m")
        count, tokens, ttl = self.breakpoints[-1]
        canonical = json.dumps([self.model, self.parts[:count]], sort_keys=True, separators=(",", ":"))
        return (hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest(), tokens, ttl)


def parse_request(
    body: object, *, count_tokens: bool = False, betas: frozenset[str] = frozenset()
) -> ParsedRequest:
    """Validate a decoded JSON body for ``/v1/messages`` (or ``count_tokens``) and summarise it.

    :param betas: the request's ``anthropic-beta`` names (beta body fields need theirs).
    :raises RequestError: 400 ``invalid_request_error`` naming the first bad field.
    """
    if not isinstance(body, dict):
        raise RequestError("Input should be a valid dictionary")
    allowed = COUNT_TOKENS_KEYS if count_tokens else MESSAGES_KEYS
    for key in body:
        beta = BETA_KEYS.get(key)
        if beta is not None and not count_tokens and any(name.startswith(beta) for name in betas):
            continue
        if key not in allowed:
            raise RequestError(f"{key}: Extra inputs are not permitted")
    required = ("model", "messages") if count_tokens else ("model", "max_tokens", "messages")
    for key in required:
        if key not in body:
            raise RequestError(f"{key}: Field required")
    model = body["model"]
    if not isinstance(model, str):
        raise RequestError("model: Input should be a valid string")
    if not model:
        raise RequestError("model: String should have at least 1 character")
    max_tokens = 0
    if not count_tokens:
        max_tokens = integer(body["max_tokens"], "max_tokens", minimum=1)
    _check_sampling(body)
    stop_sequences = _check_stop_sequences(body.get("stop_sequences"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream: Input should be a valid boolean")
    _check_misc(body, max_tokens)
    tally = _Tally(model)
    tally.top_level_cache = isinstance(body.get("cache_control"), dict)
    tools, _ = check_tools(body.get("tools"))
    for index, tool in enumerate(tools):
        # compact and key-sorted, so the same tools always cost the same tokens
        bare = {key: value for key, value in tool.items() if key != "cache_control"}
        tally.add_text(json.dumps(bare, separators=(",", ":"), sort_keys=True))
        tally.note(tool, f"tools.{index}")
    _check_system(body.get("system"), tally)
    tool_choice, tool_name = check_tool_choice(body.get("tool_choice"), tools)
    messages = body["messages"]
    last_user_text = _check_messages(messages, tally)
    check_image_set(tally.images)
    input_tokens = tally.tokens + MESSAGE_OVERHEAD_TOKENS * len(messages)
    cache_key, cache_tokens, cache_ttl = tally.cache_prefix()
    thinking, display, schema = settings_of(body)
    return ParsedRequest(
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        stop_sequences=stop_sequences,
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
        last_user_text=last_user_text,
        image_count=len(tally.images),
        input_tokens=input_tokens,
        cache_key=cache_key,
        cache_prefix_tokens=cache_tokens,
        cache_ttl=cache_ttl,
        thinking=thinking,
        thinking_display=display,
        output_schema=schema,
    )


def _check_sampling(body: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        if key in body:
            value = body[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise RequestError(f"{key}: Input should be a valid number")
            if value < 0:
                raise RequestError(f"{key}: Input should be greater than or equal to 0")
            if value > 1:
                raise RequestError(f"{key}: Input should be less than or equal to 1")
    if "top_k" in body:
        integer(body["top_k"], "top_k", minimum=0)


def _check_stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RequestError("stop_sequences: Input should be a valid list")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestError(f"stop_sequences.{index}: Input should be a valid string")
        if not item.strip():
            raise RequestError("stop_sequences: each stop sequence must contain non-whitespace")
    return tuple(value)


def _check_misc(body: dict[str, Any], max_tokens: int) -> None:
    """The optional objects the sandbox accepts but does not act on: shape checks only."""
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise RequestError("metadata: Input should be a valid dictionary")
        for key, value in metadata.items():
            if key != "user_id":
                raise RequestError(f"metadata.{key}: Extra inputs are not permitted")
            if value is not None and not isinstance(value, str):
                raise RequestError("metadata.user_id: Input should be a valid string")
    if "service_tier" in body and body["service_tier"] not in ("auto", "standard_only"):
        raise RequestError("service_tier: Input should be 'auto' or 'standard_only'")
    check_thinking(body.get("thinking"), max_tokens)
    for key in ("output_config", "cache_control"):
        if key in body and not isinstance(body[key], dict):
            raise RequestError(f"{key}: Input should be a valid dictionary")
    check_output_config(body.get("output_config"))
    if "speed" in body and body["speed"] not in ("standard", "fast"):
        raise RequestError("speed: Input should be 'standard' or 'fast'")
    if "container" in body and not isinstance(body["container"], (str, dict, type(None))):
        raise RequestError("container: Input should be a valid string")
    if "inference_geo" in body and not isinstance(body["inference_geo"], str):
        raise RequestError("inference_geo: Input should be a valid string")


def _check_system(system: object, tally: _Tally) -> None:
    if system is None:
        return
    if isinstance(system, str):
        tally.add_text(system)
        tally.parts.append(system)
        return
    if not isinstance(system, list):
        raise RequestError("system: Input should be a valid string or a list of text blocks")
    for index, block in enumerate(system):
        path = f"system.{index}"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise RequestError(f"{path}.type: Input should be 'text'")
        _check_text(block, path, tally)
        tally.note(block, path)


def _check_text(block: dict[str, Any], path: str, tally: _Tally) -> None:
    for key in block:
        if key not in _BLOCK_KEYS["text"]:
            raise RequestError(f"{path}.text.{key}: Extra inputs are not permitted")
    text = block.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{path}.text.text: Field required")
    if not text:
        raise RequestError(f"{path}.text: text content blocks must be non-empty")
    if not text.strip():
        raise RequestError(f"{path}.text: text content blocks must contain non-whitespace text")
    tally.add_text(text)


def _check_messages(messages: object, tally: _Tally) -> str:
    """Check every message and block; return the text of the last user message."""
    if not isinstance(messages, list):
        raise RequestError("messages: Input should be a valid list")
    if not messages:
        raise RequestError("messages: List should have at least 1 item after validation, not 0")
    if len(messages) > MAX_MESSAGES:
        raise RequestError(f"messages: List should have at most {MAX_MESSAGES} items")
    last_user_text = ""
    for index, message in enumerate(messages):
        path = f"messages.{index}"
        if not isinstance(message, dict):
            raise RequestError(f"{path}: Input should be a valid dictionary")
        for key in message:
            if key not in ("role", "content"):
                raise RequestError(f"{path}.{key}: Extra inputs are not permitted")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise RequestError(f"{path}.role: Input should be 'user' or 'assistant'")
        if index == 0 and role != "user":
            raise RequestError('messages: first message must use the "user" role')
        if "content" not in message:
            raise RequestError(f"{path}.content: Field required")
        content = message["content"]
        empty = f"{path}: {_EMPTY_CONTENT}"
        if isinstance(content, str):
            if not content.strip():
                raise RequestError(empty)
            tally.add_text(content)
            tally.parts.append(content)
            texts = [content]
        elif isinstance(content, list):
            if not content:
                raise RequestError(empty)
            texts = _check_blocks(content, f"{path}.content", tally, nested=False)
        else:
            raise RequestError(f"{path}.content: Input should be a valid string or a list of content blocks")
        if role == "user" and texts:
            last_user_text = " ".join(texts)
    return last_user_text


def _check_blocks(blocks: list[Any], path: str, tally: _Tally, *, nested: bool) -> list[str]:
    """Check a content list; return its text blocks' texts. ``nested`` marks a tool_result's content."""
    texts: list[str] = []
    expected = _NESTED_TYPES if nested else tuple(_BLOCK_KEYS)
    for index, block in enumerate(blocks):
        where = f"{path}.{index}"
        if not isinstance(block, dict):
            raise RequestError(f"{where}: Input should be a valid dictionary")
        kind = block.get("type")
        if kind not in expected:
            tags = ", ".join(f"'{tag}'" for tag in expected)
            raise RequestError(
                f"{where}: Input tag {kind!r} found using 'type' does not match any of the expected "
                f"tags: {tags}"
            )
        if kind == "text":
            _check_text(block, where, tally)
            texts.append(block["text"])
            if not nested:
                tally.note(block, where)
            continue
        for key in block:
            if key not in _BLOCK_KEYS[kind]:
                raise RequestError(f"{where}.{kind}.{key}: Extra inputs are not permitted")
        if kind == "image":
            _check_image(block, where, tally)
        elif kind == "document":
            _check_document(block, where, tally)
        elif kind == "tool_use":
            _check_tool_use(block, where, tally)
        elif kind == "tool_result":
            _check_tool_result(block, where, tally)
        if not nested:
            tally.note(block, where)
    return texts


def _check_image(block: dict[str, Any], path: str, tally: _Tally) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise RequestError(f"{path}.image.source: Field required")
    kind = source.get("type")
    if kind in ("url", "file"):
        raise RequestError(
            f"{path}.image.source.{kind}: the sandbox does not fetch URLs or files; send base64"
        )
    if kind != "base64":
        raise RequestError(
            f"{path}.image.source: Input tag {kind!r} found using 'type' does not match any of the expected "
            "tags: 'base64', 'url', 'file'"
        )
    width, height = check_base64_image(source, path)
    tally.images.append((path, width, height))


def _check_document(block: dict[str, Any], path: str, tally: _Tally) -> None:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    where = f"{path}.document.source"
    if kind == "text" and isinstance(source, dict):
        data = source.get("data")
        if source.get("media_type") != "text/plain" or not isinstance(data, str):
            raise RequestError(f"{where}.text: media_type must be 'text/plain' and data a string")
        tally.add_text(data)
    elif kind == "base64" and isinstance(source, dict):
        data = source.get("data")
        if source.get("media_type") != "application/pdf" or not isinstance(data, str):
            raise RequestError(f"{where}.base64.media_type: Input should be 'application/pdf'")
        # a PDF's real cost depends on its pages; a quarter of its base64 length is a stable stand-in
        tally.text += len(data) // 4
    elif kind == "content" and isinstance(source, dict):
        content = source.get("content")
        if isinstance(content, str):
            tally.add_text(content)
        elif isinstance(content, list):
            _check_blocks(content, f"{where}.content.content", tally, nested=True)
        else:
            raise RequestError(f"{where}.content.content: Field required")
    elif kind in ("url", "file"):
        raise RequestError(f"{where}.{kind}: the sandbox does not fetch URLs or files; send base64")
    else:
        raise RequestError(
            f"{where}: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
            "'base64', 'text', 'content', 'url', 'file'"
        )


def _check_tool_use(block: dict[str, Any], path: str, tally: _Tally) -> None:
    block_id = block.get("id")
    if not isinstance(block_id, str) or not TOOL_USE_ID.match(block_id):
        raise RequestError(f"{path}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    if not isinstance(block.get("name"), str) or not block["name"]:
        raise RequestError(f"{path}.tool_use.name: Field required")
    if not isinstance(block.get("input"), dict):
        raise RequestError(f"{path}.tool_use.input: Input should be a valid dictionary")
    tally.add_text(json.dumps(block["input"], separators=(",", ":")))


def _check_tool_result(block: dict[str, Any], path: str, tally: _Tally) -> None:
    if not isinstance(block.get("tool_use_id"), str) or not TOOL_USE_ID.match(block["tool_use_id"]):
        raise RequestError(f"{path}.tool_result.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        raise RequestError(f"{path}.tool_result.is_error: Input should be a valid boolean")
    content = block.get("content")
    if content is None:
        return
    if isinstance(content, str):
        tally.add_text(content)
    elif isinstance(content, list):
        _check_blocks(content, f"{path}.tool_result.content", tally, nested=True)
    else:
        raise RequestError(f"{path}.tool_result.content: Input should be a valid string or a list")
