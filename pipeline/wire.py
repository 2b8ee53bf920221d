"""Wire shapes of a Messages API request, as TypedDicts (the SDK's ``*Param`` types, trimmed)."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

MediaType = Literal["image/jpeg", "image/png", "image/gif", "image/webp"]


class CacheControl(TypedDict):
    type: Literal["ephemeral"]
    ttl: NotRequired[Literal["5m", "1h"]]


class TextBlock(TypedDict):
    type: Literal["text"]
    text: str
    cache_control: NotRequired[CacheControl]


class SystemBlock(TypedDict):
    type: Literal["text"]
    text: str
    cache_control: NotRequired[CacheControl]


class Base64Source(TypedDict):
    type: Literal["base64"]
    media_type: MediaType
    data: str


class UrlSource(TypedDict):
    """An image or PDF the API fetches itself."""

    type: Literal["url"]
    url: str


class FileSource(TypedDict):
    """An image or document uploaded through the Files API (beta header ``files-api-2025-04-14``)."""

    type: Literal["file"]
    file_id: str


class ImageBlock(TypedDict):
    type: Literal["image"]
    source: Base64Source | UrlSource | FileSource
    cache_control: NotRequired[CacheControl]


class PdfSource(TypedDict):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str


class PlainTextSource(TypedDict):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class Citations(TypedDict):
    enabled: bool


class DocumentBlock(TypedDict):
    type: Literal["document"]
    source: PdfSource | PlainTextSource | UrlSource | FileSource
    citations: NotRequired[Citations]


ContentBlock = TextBlock | ImageBlock | DocumentBlock


class UserMessage(TypedDict):
    role: Literal["user"]
    content: list[ContentBlock]


class AssistantMessage(TypedDict):
    """A few-shot example's answer: an assistant turn before the row's own message (never the last)."""

    role: Literal["assistant"]
    content: list[ContentBlock]


Message = UserMessage | AssistantMessage


class ToolParam(TypedDict):
    name: str
    description: NotRequired[str]
    input_schema: dict[str, Any]
    strict: NotRequired[bool]
    cache_control: NotRequired[CacheControl]


class ThinkingParam(TypedDict):
    type: Literal["adaptive", "enabled", "disabled", "between_tools"]
    budget_tokens: NotRequired[int]
    display: NotRequired[Literal["summarized", "omitted"]]


class JsonOutputFormat(TypedDict):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(TypedDict):
    effort: NotRequired[Literal["low", "medium", "high", "xhigh", "max"]]
    format: NotRequired[JsonOutputFormat]


class MessagePayload(TypedDict):
    """The body of one Messages request; ``[request.extra]`` adds keys this type does not name."""

    model: str
    max_tokens: int
    messages: list[Message]
    system: NotRequired[str | list[SystemBlock]]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    top_k: NotRequired[int]
    stop_sequences: NotRequired[list[str]]
    tools: NotRequired[list[ToolParam]]
    tool_choice: NotRequired[dict[str, Any]]
    thinking: NotRequired[ThinkingParam]
    output_config: NotRequired[OutputConfig]
    stream: NotRequired[bool]
