"""The ``[request]`` table of a job file: what each row's Messages request holds.

Owns: the request keys (unknown keys are errors that name the key), their defaults and the checks
that need no table or network (template syntax, tools and tool_choice), what feeds the request
fingerprint, and the settings derived from the model table (streaming, the context window).
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.catalog.models import model_facts
from pipeline.job.toolschema import check_tool_schema

TOOL_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_-")


# Settings added after outputs existed: hashed only when set (not None, empty or false), so their
# arrival invalidates nothing.
FINGERPRINTED_WHEN_SET = ("image_max_pixels", "documents", "citations")


# Settings that decide whether a row is sent, not what the answer is: kept out of the fingerprint so
# that changing them does not re-send (and re-pay for) every finished row.
NOT_FINGERPRINTED = frozenset(
    {
        "stream",
        "max_input_tokens",
        "image_root",
        "schema_attempts",
        "cache",
        "cache_ttl",
        "dedupe",
        # how an image travels (inline, by URL, by Files API id) is not what it shows
        "image_transport",
        "presign",
    }
)

# How image (and document) bytes reach the API: inline base64, a URL the API fetches, or a Files API id.
ImageTransport = Literal["base64", "url", "files"]


class StrictModel(BaseModel):
    """A job-file table: unknown keys are errors, values are frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolSpec(StrictModel):
    """One tool the model may call, as the API takes it."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]

    @field_validator("name")
    @classmethod
    def _name_pattern(cls, value: str) -> str:
        if not (1 <= len(value) <= 128) or not set(value) <= TOOL_NAME_CHARS:
            raise ValueError(f"tool name {value!r} must match ^[a-zA-Z0-9_-]{{1,128}}$")
        return value

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('input_schema must have type = "object"')
        check_tool_schema(value)
        return value


class RequestSpec(StrictModel):
    """The ``[request]`` table: what each row's Messages request holds."""

    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    prompt: str = Field(min_length=1)
    system: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    images: list[str] = Field(default_factory=list)
    image_max_edge: int = Field(default=1568, ge=200, le=8000)
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: dict[str, Any] | None = None
    stream: bool | None = None
    max_input_tokens: int | None = Field(default=None, ge=1)
    image_root: str | None = Field(default=None, min_length=1)
    # requests per row while its tool input breaks the tool's input_schema (first included)
    schema_attempts: int = Field(default=3, ge=1, le=20)
    # fewer pixels, fewer image tokens: an image over this many pixels is shrunk to fit (fingerprinted)
    image_max_pixels: int | None = Field(default=None, ge=40_000, le=64_000_000)
    # mark the shared prefix (tools and system) with cache_control; never changes an answer
    cache: bool = False
    cache_ttl: Literal["5m", "1h"] = "5m"
    # send identical requests once; None: on when temperature is 0 (the answer is meant to repeat)
    dedupe: bool | None = None
    # columns holding documents (PDF or plain text), each non-empty cell a document block
    documents: list[str] = Field(default_factory=list)
    # ask for citations on every document block
    citations: bool = False
    # "url": http(s) cells go as URL sources (not downloaded); "files": each distinct image uploaded once
    image_transport: ImageTransport = "base64"
    # with "url": object-storage cells (s3://, gs://, az://) go as presigned https URLs
    presign: bool = False

    @field_validator("prompt", "system")
    @classmethod
    def _template_syntax(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @field_validator("stop_sequences")
    @classmethod
    def _visible_stops(cls, value: list[str] | None) -> list[str] | None:
        # the API answers 400 to a whitespace-only stop sequence; say so once instead of once per row
        if value is not None and any(not stop.strip() for stop in value):
            raise ValueError("each stop sequence must contain non-whitespace (the API rejects it)")
        return value

    @model_validator(mode="after")
    def _media_columns(self) -> RequestSpec:
        both = sorted(set(self.images) & set(self.documents))
        if both:
            raise ValueError(f"columns {both} are in both images and documents; a column holds one kind")
        if self.citations and not self.documents:
            raise ValueError("citations applies to document blocks: set documents = [...] too")
        if self.presign and self.image_transport != "url":
            raise ValueError('presign applies to image_transport = "url"')
        return self

    @model_validator(mode="after")
    def _tool_choice_matches(self) -> RequestSpec:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be unique, got {names}")
        choice = self.tool_choice
        if choice is None:
            return self
        kind = choice.get("type")
        if kind not in {"auto", "any", "tool", "none"}:
            raise ValueError(f'tool_choice.type must be "auto", "any", "tool" or "none", not {kind!r}')
        if not self.tools:
            raise ValueError("tool_choice is set but no [[request.tools]] are declared")
        if kind == "tool" and choice.get("name") not in names:
            raise ValueError(
                f"tool_choice names {choice.get('name')!r}, which is not a declared tool {names}"
            )
        return self

    @property
    def streaming(self) -> bool:
        """Whether requests go out as SSE streams: on request, or forced by a max_tokens too large without."""
        cap = model_facts(self.model).nonstreaming_max_tokens
        return self.max_tokens > cap or bool(self.stream)

    @property
    def dedupes(self) -> bool:
        """Whether identical requests in a run are sent once: ``dedupe``, else on at temperature 0."""
        return self.dedupe if self.dedupe is not None else self.temperature == 0

    @property
    def input_token_limit(self) -> int:
        """Most input tokens one request may hold: ``max_input_tokens``, else the model's context window."""
        if self.max_input_tokens is not None:
            return self.max_input_tokens
        return model_facts(self.model).context_window

    def fingerprint(self) -> str:
        """A hash of everything that shapes the answer; a change means old answers are stale."""
        settings = self.model_dump(mode="json", exclude=set(NOT_FINGERPRINTED))
        for name in FINGERPRINTED_WHEN_SET:
            if settings.get(name) in (None, [], False):
                del settings[name]  # a setting added later must not make every earlier answer stale
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def template_fields(template: str) -> list[str]:
    """The column names a ``{placeholder}`` template uses, in order; raises ValueError on bad syntax."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"template {template[:60]!r} is malformed: {exc} (write {{{{ and }}}} for literal braces)"
        ) from None
    for _literal, name, _spec, _conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise ValueError(
                f"template {template[:60]!r} has a placeholder without a column name: use {{column}}"
            )
        if any(ch in name for ch in ".["):
            raise ValueError(f"template placeholder {{{name}}} must be a plain column name")
        if name not in names:
            names.append(name)
    return names
