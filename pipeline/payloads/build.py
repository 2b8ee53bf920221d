"""Turns a row's cells plus the job's ``[request]`` into a Messages payload. Pure: no I/O, no clock.

Owns: prompt rendering, the payload shape (few-shot example turns first, then the row's message with
its documents, then images, before the prompt text, as the vision and PDF docs advise; each inline,
by URL or by Files API id as its transport placed it), how thinking, ``output_config``,
``output_schema`` (as ``output_config.format`` or a forced tool) and ``[request.extra]`` reach the
body, the local input-token estimate the rate limiter charges before a request is sent, and refusing
a request the API would reject for its size (so that row is an error and nothing is sent).
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pipeline.catalog.models import model_facts
from pipeline.errors import RowError
from pipeline.job.request import OUTPUT_TOOL_DESCRIPTION, RequestSpec
from pipeline.job.rules import structured_via
from pipeline.job.toolschema import OUTPUT_TOOL
from pipeline.payloads.documents import PreparedDocument
from pipeline.payloads.images import PreparedImage, estimate_image_tokens
from pipeline.payloads.structured import adapt_schema
from pipeline.wire import (
    AssistantMessage,
    CacheControl,
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    Message,
    MessagePayload,
    OutputConfig,
    SystemBlock,
    TextBlock,
    ToolParam,
    UserMessage,
)

# Characters per token for English-like text; a little low on purpose so the estimate errs high.
CHARS_PER_TOKEN = 3.5
# Per-message and per-request framing the API adds around the content.
MESSAGE_OVERHEAD_TOKENS = 8
# The API's cap on a Messages body (https://platform.claude.com/docs/en/api/errors: "32 MB"), read as decimal
# megabytes: a body between 32,000,000 bytes and 32 MiB is refused here rather than risked there.
MAX_BODY_BYTES = 32_000_000
# Most JSON bytes one character of text becomes as httpx sends it (ensure_ascii=False): six for an
# escaped control character (\u001f), at most four UTF-8 bytes for anything else.
MAX_JSON_BYTES_PER_CHAR = 6
# Keys, punctuation and numbers around the content, and around each block, generously.
FRAME_BYTES = 16_384
BLOCK_FRAME_BYTES = 256


class _Formatter(string.Formatter):
    """str.format that renders missing cells as empty text instead of ``None``."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return ""
        return format(value, format_spec)


_FORMATTER = _Formatter()


def render_template(template: str, cells: Mapping[str, Any]) -> str:
    """Fill ``{column}`` placeholders from the row; a bad format spec is this row's error."""
    try:
        return _FORMATTER.vformat(template, (), cells)
    except KeyError as exc:  # spec and reader checks make this unreachable for declared columns
        raise RowError(
            f"prompt uses column {exc.args[0]!r}, which this row lacks", error_type="template_error"
        ) from None
    except (ValueError, TypeError) as exc:
        raise RowError(f"cannot render prompt: {exc}", error_type="template_error") from None


def tool_params(request: RequestSpec) -> list[ToolParam]:
    """The job's tools in wire form, and the answer tool when ``output_schema`` travels as a forced tool."""
    params: list[ToolParam] = []
    for tool in request.tools:
        param: ToolParam = {"name": tool.name, "input_schema": tool.input_schema}
        if tool.description is not None:
            param["description"] = tool.description
        if tool.strict is not None:
            param["strict"] = tool.strict
        params.append(param)
    if request.output_schema is not None and answer_via(request) == "tool":
        params.append(
            {
                "name": OUTPUT_TOOL,
                "description": OUTPUT_TOOL_DESCRIPTION,
                "input_schema": request.output_schema,
            }
        )
    return params


def image_block(image: PreparedImage) -> ImageBlock:
    """An image as its block: inline base64, or the reference its transport gave it."""
    if image.source is not None:
        return {"type": "image", "source": image.source}  # type: ignore[typeddict-item]
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": image.media_type, "data": image.data_b64},
    }


def document_block(document: PreparedDocument, *, citations: bool) -> DocumentBlock:
    """A document as its block: a PDF as base64, text as text, or the reference its transport gave it."""
    block: DocumentBlock
    if document.source is not None:
        block = {"type": "document", "source": document.source}  # type: ignore[typeddict-item]
    elif document.media_type == "application/pdf":
        block = {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": document.data},
        }
    else:
        block = {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": document.data},
        }
    if citations:
        block["citations"] = {"enabled": True}
    return block


def answer_via(request: RequestSpec) -> str | None:
    """How ``output_schema`` travels: as the job (or the run, from the model's facts) decided, else
    by the shipped model table: ``format``, ``tool``, or None without an ``output_schema``."""
    return structured_via(request, model_facts(request.model))


def image_blocks(images: Sequence[PreparedImage]) -> list[ContentBlock]:
    """Image blocks, in order (:func:`image_block`)."""
    return [image_block(image) for image in images]


def example_messages(request: RequestSpec, images: Sequence[Sequence[PreparedImage]]) -> tuple[Message, ...]:
    """The few-shot turns as messages: each turn's images (as prepared) before its text."""
    messages: list[Message] = []
    for turn, prepared in zip(request.examples, images, strict=True):
        content = image_blocks(prepared)
        content.append({"type": "text", "text": turn.text})
        if turn.role == "user":
            messages.append(UserMessage(role="user", content=content))
        else:
            messages.append(AssistantMessage(role="assistant", content=content))
    return tuple(messages)


def build_payload(
    request: RequestSpec,
    cells: Mapping[str, Any],
    images: Sequence[PreparedImage],
    examples: Sequence[Message] = (),
    *,
    documents: Sequence[PreparedDocument] = (),
) -> MessagePayload:
    """The Messages request body for one row.

    :param examples: the few-shot turns (:func:`example_messages`), shared by every row: they are
        copied, never changed, so one prepared prefix serves the whole run.
    """
    content: list[ContentBlock] = [document_block(doc, citations=request.citations) for doc in documents]
    content.extend(image_block(image) for image in images)
    prompt = render_template(request.prompt, cells)
    if not prompt.strip():
        # the API answers 400 to an empty text block: refuse here, once, instead of sending it
        raise RowError(
            "the prompt renders empty for this row (its columns are empty); the API rejects empty text",
            error_type="template_error",
        )
    content.append({"type": "text", "text": prompt})
    message: UserMessage = {"role": "user", "content": content}
    turns: list[Message] = [
        cast(Message, {"role": turn["role"], "content": list(turn["content"])}) for turn in examples
    ]
    payload: MessagePayload = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [*turns, message],
    }
    system = render_template(request.system, cells) if request.system is not None else ""
    if system.strip():  # an empty system prompt says nothing: leave it out rather than risk a 400
        payload["system"] = system
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.top_k is not None:
        payload["top_k"] = request.top_k
    if request.stop_sequences:
        payload["stop_sequences"] = list(request.stop_sequences)
    if tools := tool_params(request):
        payload["tools"] = tools
    if request.tool_choice is not None:
        payload["tool_choice"] = dict(request.tool_choice)
    _add_settings(request, payload)
    if request.cache:
        mark_cached_prefix(payload, request.cache_ttl, examples=len(turns))
    if request.streaming:
        payload["stream"] = True
    if request.extra:
        # keys the job names itself are refused at load, so extra only adds
        cast(dict[str, Any], payload).update(request.extra)
    return payload


def _add_settings(request: RequestSpec, payload: MessagePayload) -> None:
    """Thinking, ``output_config`` and the forced answer tool, as the request and the model ask."""
    if request.thinking is not None:
        payload["thinking"] = request.thinking.model_dump(exclude_none=True)  # type: ignore[typeddict-item]
    config: OutputConfig = {}
    if request.output_config is not None:
        if request.output_config.effort is not None:
            config["effort"] = request.output_config.effort
        if request.output_config.format is not None:
            config["format"] = {"type": "json_schema", "schema": request.output_config.format.json_schema}
    via = answer_via(request)
    if request.output_schema is not None and via == "format":
        config["format"] = {"type": "json_schema", "schema": adapt_schema(request.output_schema)}
    elif request.output_schema is not None and via == "tool":
        payload["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}
    if config:
        payload["output_config"] = config


def mark_cached_prefix(payload: MessagePayload, ttl: str, *, examples: int = 0) -> None:
    """Put one ``cache_control`` breakpoint at the end of the shared prefix (tools, system, examples).

    The cache covers everything up to the breakpoint in the API's prefix order ``tools -> system ->
    messages`` (https://platform.claude.com/docs/en/build-with-claude/prompt-caching), so one mark on
    the last block of the last example turn caches tools, system and examples together; without
    examples it goes on the system prompt, and without that on the last tool. The row's own content
    stays after it.

    :param examples: how many of ``payload["messages"]`` are the shared few-shot turns.
    """
    control: CacheControl = {"type": "ephemeral"}
    if ttl == "1h":
        control["ttl"] = "1h"  # 5m is the API's default: left out, the body stays what it always was
    system = payload.get("system")
    if examples:
        turn = payload["messages"][examples - 1]
        last = dict(turn["content"][-1])  # a copy: the prepared prefix is shared by every row
        last["cache_control"] = control
        turn["content"][-1] = cast(TextBlock, last)
    elif isinstance(system, str):
        block: SystemBlock = {"type": "text", "text": system, "cache_control": control}
        payload["system"] = [block]
    elif payload.get("tools"):
        payload["tools"][-1]["cache_control"] = control


def request_key(payload: MessagePayload) -> str:
    """A hash of everything the API answers from: model, parameters, rendered text and image bytes.

    Two rows with the same key send the same request; ``stream`` only changes how the answer travels.
    """
    canonical = {key: value for key, value in payload.items() if key != "stream"}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def system_text(payload: MessagePayload) -> str:
    """The system prompt as text, whether it is a string or a list of blocks."""
    system = payload.get("system", "")
    if isinstance(system, str):
        return system
    return "".join(block["text"] for block in system)


def estimate_input_tokens(
    payload: MessagePayload, images: Sequence[PreparedImage], documents: Sequence[PreparedDocument] = ()
) -> int:
    """Input tokens the request will likely be billed for: text by length, images by pixels, documents
    by pages (an image sent by URL, never seen here, at the most one image of the model can cost)."""
    chars = len(system_text(payload))
    for message in payload["messages"]:
        for block in message["content"]:
            if block["type"] == "text":
                chars += len(block["text"])
    if "tools" in payload:
        chars += len(json.dumps(payload["tools"], separators=(",", ":")))
    text_tokens = math.ceil(chars / CHARS_PER_TOKEN)
    unseen = model_facts(payload["model"]).image_max_tokens
    image_tokens = sum(
        estimate_image_tokens(image.width, image.height) if image.size_known else unseen for image in images
    )
    document_tokens = sum(document.tokens for document in documents)
    return text_tokens + image_tokens + document_tokens + MESSAGE_OVERHEAD_TOKENS * len(payload["messages"])


def check_request_size(
    payload: MessagePayload,
    input_tokens: int,
    max_input_tokens: int,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Refuse a request the API would reject for its size; the caller records the row's error.

    :param input_tokens: ``estimate_input_tokens`` of this payload (an estimate that errs high).
    :param max_input_tokens: the job's limit (``RequestSpec.input_token_limit``).
    :param max_body_bytes: the cap on the JSON body (tests make it small).
    :raises RowError: ``request_too_large`` when the estimate is over ``max_input_tokens``, or the
        JSON body is over ``max_body_bytes``.
    """
    if input_tokens > max_input_tokens:
        raise RowError(
            f"prompt is about {input_tokens:,} tokens, over the model's context window of "
            f"{max_input_tokens:,} (request.max_input_tokens)",
            error_type="request_too_large",
        )
    blocks = [block for message in payload["messages"] for block in message["content"]]
    # inline image and document data: base64 is ASCII (a byte a character); a text document (or a
    # URL, a file id) may escape, up to MAX_JSON_BYTES_PER_CHAR a character
    inline = [
        (len(str(_source_text(block["source"]))), block["source"]["type"] == "base64")
        for block in blocks
        if block["type"] in ("image", "document")
    ]
    image_bytes = sum(length for length, _ in inline)
    media_bound = sum(
        length if ascii_only else length * MAX_JSON_BYTES_PER_CHAR for length, ascii_only in inline
    )
    # The estimate counts every text character (system, prompt, tools) at CHARS_PER_TOKEN, so it bounds
    # the text without serialising: only a body that could be near the cap pays for json.dumps.
    text_chars = math.ceil(input_tokens * CHARS_PER_TOKEN) + len(payload["model"])
    text_chars += sum(len(stop) for stop in payload.get("stop_sequences", ()))
    text_chars += len(json.dumps(payload["tool_choice"])) if "tool_choice" in payload else 0
    bound = media_bound + text_chars * MAX_JSON_BYTES_PER_CHAR + FRAME_BYTES + BLOCK_FRAME_BYTES * len(blocks)
    if bound <= max_body_bytes:
        return
    # serialised as httpx serialises the body it sends
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    if size > max_body_bytes:
        raise RowError(
            f"request body is {size / 1e6:.1f} MB ({image_bytes / 1e6:.1f} MB of it images and documents),"
            " over the "
            f"API's limit of {max_body_bytes / 1e6:g} MB; send fewer or smaller images per row "
            "(request.image_max_edge)",
            error_type="request_too_large",
        )


def _source_text(source: Any) -> str:
    """The bulky part of a media source: its data, URL or file id."""
    return str(source.get("data") or source.get("url") or source.get("file_id") or "")
