"""Turns a row's cells plus the job's ``[request]`` into a Messages payload. Pure: no I/O, no clock.

Owns: prompt rendering, the payload shape (images before the prompt text, as the vision docs advise),
and the local input-token estimate the rate limiter charges before a request is sent.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import RowError
from pipeline.images import PreparedImage, estimate_image_tokens
from pipeline.spec import RequestSpec
from pipeline.wire import ImageBlock, MessagePayload, TextBlock, ToolParam, UserMessage

# Characters per token for English-like text; a little low on purpose so the estimate errs high.
CHARS_PER_TOKEN = 3.5
# Per-message and per-request framing the API adds around the content.
MESSAGE_OVERHEAD_TOKENS = 8


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
    """The job's tools in wire form."""
    params: list[ToolParam] = []
    for tool in request.tools:
        param: ToolParam = {"name": tool.name, "input_schema": tool.input_schema}
        if tool.description is not None:
            param["description"] = tool.description
        params.append(param)
    return params


def build_payload(
    request: RequestSpec, cells: Mapping[str, Any], images: Sequence[PreparedImage]
) -> MessagePayload:
    """The Messages request body for one row."""
    content: list[TextBlock | ImageBlock] = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": image.media_type, "data": image.data_b64},
        }
        for image in images
    ]
    content.append({"type": "text", "text": render_template(request.prompt, cells)})
    message: UserMessage = {"role": "user", "content": content}
    payload: MessagePayload = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [message],
    }
    if request.system is not None:
        payload["system"] = render_template(request.system, cells)
    if request.temperature is not None:
        payload["temperature"] = request.temperature
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.top_k is not None:
        payload["top_k"] = request.top_k
    if request.stop_sequences:
        payload["stop_sequences"] = list(request.stop_sequences)
    if request.tools:
        payload["tools"] = tool_params(request)
    if request.tool_choice is not None:
        payload["tool_choice"] = dict(request.tool_choice)
    if request.streaming:
        payload["stream"] = True
    return payload


def estimate_input_tokens(payload: MessagePayload, images: Sequence[PreparedImage]) -> int:
    """Input tokens the request will likely be billed for: text by length, images by pixels."""
    chars = len(payload.get("system", ""))
    for message in payload["messages"]:
        for block in message["content"]:
            if block["type"] == "text":
                chars += len(block["text"])
    if "tools" in payload:
        chars += len(json.dumps(payload["tools"], separators=(",", ":")))
    text_tokens = math.ceil(chars / CHARS_PER_TOKEN)
    image_tokens = sum(estimate_image_tokens(image.width, image.height) for image in images)
    return text_tokens + image_tokens + MESSAGE_OVERHEAD_TOKENS * len(payload["messages"])
