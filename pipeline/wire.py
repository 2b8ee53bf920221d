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


class ToolParam(TypedDict):
    name: str
    description: NotRequired[str]
    input_schema: dict[str, Any]
    cache_control: NotRequired[CacheControl]


class MessagePayload(TypedDict):
    model: str
    max_tokens: int
    messages: list[UserMessage]
    system: NotRequired[str | list[SystemBlock]]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    top_k: NotRequired[int]
    stop_sequences: NotRequired[list[str]]
    tools: NotRequired[list[ToolParam]]
    tool_choice: NotRequired[dict[str, Any]]
    stream: NotRequired[bool]
