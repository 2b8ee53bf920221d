"""The ``[request]`` table of a job file: what each row's Messages request holds.

Owns: the request keys (unknown keys are errors that name the key), their defaults and the checks
that need no table or network (template syntax, tools and tool_choice, thinking, structured output,
few-shot examples, extra body fields), what feeds the request fingerprint (and the fingerprint
earlier versions wrote, so their results stay valid), and the settings derived from the model table
(streaming, the context window, the image tier). The checks against a model's rules are
:mod:`pipeline.job.rules`.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.catalog.models import model_facts
from pipeline.job.toolschema import OUTPUT_TOOL, check_tool_schema

TOOL_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "_-")


# Settings that decide whether a row is sent, not what the answer is: kept out of the fingerprint so
# that changing them does not re-send (and re-pay for) every finished row. max_tokens only cuts an
# answer short: a row cut off records the max_tokens it was sent with, and the rerun rule
# (results.store.settled_rows) sends it again when max_tokens is raised; output_via only picks how a
# structured answer travels (the typed columns are the same either way).
NOT_FINGERPRINTED = frozenset(
    {
        "stream", "max_input_tokens", "image_root", "schema_attempts", "cache", "cache_ttl", "dedupe",
        "max_tokens", "output_via",
        # how an image travels (inline, by URL, by Files API id) is not what it shows
        "image_transport", "presign",
    }
)  # fmt: skip

# The default long edge before the model tier decided it (what results of earlier versions were sent with).
LEGACY_IMAGE_EDGE = 1568

# The tool a structured answer goes through on models without output_config.format (output_via "tool"):
# OUTPUT_TOOL (job.toolschema), with this description.
OUTPUT_TOOL_DESCRIPTION = "Give the answer: call this tool once, with the answer as its input."

# Body fields the job file names itself: [request.extra] may not set them a second time.
OWN_BODY_KEYS = {
    "model": "request.model",
    "max_tokens": "request.max_tokens",
    "messages": "request.prompt, request.images and request.examples",
    "system": "request.system",
    "temperature": "request.temperature",
    "top_p": "request.top_p",
    "top_k": "request.top_k",
    "stop_sequences": "request.stop_sequences",
    "tools": "request.tools",
    "tool_choice": "request.tool_choice",
    "stream": "request.stream",
    "thinking": "request.thinking",
    "output_config": "request.output_config",
    "cache_control": "request.cache",
}

ThinkingType = Literal["adaptive", "enabled", "disabled", "between_tools"]
Effort = Literal["low", "medium", "high", "xhigh", "max"]

# How image (and document) bytes reach the API: inline base64, a URL the API fetches, or a Files API id.
ImageTransport = Literal["base64", "url", "files"]


class StrictModel(BaseModel):
    """A job-file table: unknown keys are errors, values are frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ToolSpec(StrictModel):
    """One tool the model may call, as the API takes it (``strict``: the API guarantees the input
    matches ``input_schema``, on models with structured outputs)."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool | None = None

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


class ThinkingSpec(StrictModel):
    """``[request.thinking]``, as the API takes it (anthropic-sdk-python 2.15.0 ``ThinkingConfigParam``).

    ``adaptive``: the model decides; ``enabled``: manual extended thinking with ``budget_tokens``
    (at least 1,024, below ``max_tokens``); ``disabled``: off; ``between_tools``: off, with short
    progress notes between tool calls. ``display`` (``summarized`` or ``omitted``) on the two that think.
    """

    type: ThinkingType
    budget_tokens: int | None = Field(default=None, ge=1)
    display: Literal["summarized", "omitted"] | None = None

    @model_validator(mode="after")
    def _fits_its_type(self) -> ThinkingSpec:
        if self.type == "enabled":
            if self.budget_tokens is None:
                raise ValueError('thinking type "enabled" needs budget_tokens (at least 1024)')
            if self.budget_tokens < 1024:
                raise ValueError(f"thinking.budget_tokens must be at least 1024, not {self.budget_tokens}")
        elif self.budget_tokens is not None:
            raise ValueError(f'thinking.budget_tokens applies to type "enabled" only, not "{self.type}"')
        if self.display is not None and self.type not in ("adaptive", "enabled"):
            raise ValueError(f'thinking.display applies to "adaptive" and "enabled", not "{self.type}"')
        return self

    @property
    def thinks(self) -> bool:
        """Whether this setting turns thinking on."""
        return self.type in ("adaptive", "enabled")


class FormatSpec(StrictModel):
    """``[request.output_config.format]``: ``type = "json_schema"`` and the ``schema`` the answer follows."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_tool_schema(value, what="output_config.format.schema")
        return value


class OutputConfigSpec(StrictModel):
    """``[request.output_config]``: ``effort`` and ``format``, as the API takes them."""

    effort: Effort | None = None
    format: FormatSpec | None = None


class ExampleTurn(StrictModel):
    """One ``[[request.examples]]`` turn: a user or assistant message placed before every row's own."""

    role: Literal["user", "assistant"]
    text: str = Field(min_length=1)
    images: list[str] = Field(default_factory=list)  # paths, relative to the job file

    @field_validator("text")
    @classmethod
    def _visible(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an example's text must contain non-whitespace (the API rejects empty text)")
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
    # None: the model's tier (1568 px, or 2576 px from Claude 4.7), from the model table
    image_max_edge: int | None = Field(default=None, ge=200, le=8000)
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
    thinking: ThinkingSpec | None = None
    output_config: OutputConfigSpec | None = None
    # a JSON Schema the answer must follow, whatever carries it: output_config.format where the model
    # has structured outputs, else a forced tool (output_via "auto"); the typed columns are the same
    output_schema: dict[str, Any] | None = None
    output_via: Literal["auto", "format", "tool"] = "auto"
    # few-shot turns before every row's message (user first, alternating, assistant last)
    examples: list[ExampleTurn] = Field(default_factory=list)
    # merged into the request body as given (fallbacks, metadata, service_tier, inference_geo, ...)
    extra: dict[str, Any] = Field(default_factory=dict)

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

    @field_validator("output_schema")
    @classmethod
    def _object_output_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            if value.get("type") != "object":
                raise ValueError('output_schema must have type = "object" (its properties become columns)')
            check_tool_schema(value, what="output_schema")
        return value

    @field_validator("extra")
    @classmethod
    def _extra_adds_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in OWN_BODY_KEYS:
                raise ValueError(
                    f"extra.{key}: the job sets {key} through {OWN_BODY_KEYS[key]}; it cannot be set twice"
                )
        return value

    @field_validator("examples")
    @classmethod
    def _turns_alternate(cls, value: list[ExampleTurn]) -> list[ExampleTurn]:
        for index, turn in enumerate(value):
            expected = "user" if index % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ValueError(
                    f"examples.{index}.role must be {expected!r}: examples alternate user and assistant"
                    " turns, starting with user"
                )
        if value and value[-1].role != "assistant":
            raise ValueError("examples must end with an assistant turn (each row's own message follows them)")
        return value

    @model_validator(mode="after")
    def _thinking_fits(self) -> RequestSpec:
        thinking = self.thinking
        if (
            thinking is not None
            and thinking.budget_tokens is not None
            and thinking.budget_tokens >= self.max_tokens
        ):
            raise ValueError(
                f"thinking.budget_tokens ({thinking.budget_tokens}) must be below max_tokens"
                f" ({self.max_tokens})"
            )
        return self

    @model_validator(mode="after")
    def _one_structured_output(self) -> RequestSpec:
        if self.output_schema is None:
            return self
        if self.output_config is not None and self.output_config.format is not None:
            raise ValueError("set output_schema or output_config.format, not both")
        if self.tool_choice is not None and self.tool_choice.get("type") in ("any", "tool"):
            raise ValueError("output_schema picks how the answer is forced; remove the forcing tool_choice")
        if any(tool.name == OUTPUT_TOOL for tool in self.tools):
            raise ValueError(f"the tool name {OUTPUT_TOOL!r} is what output_schema uses; rename your tool")
        return self

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

    @property
    def image_edge(self) -> int:
        """The long edge images are shrunk to: ``image_max_edge``, else the model's tier (1568 or 2576 px)."""
        if self.image_max_edge is not None:
            return self.image_max_edge
        return model_facts(self.model).image_long_edge

    @property
    def answer_schema(self) -> dict[str, Any] | None:
        """The JSON Schema a structured answer follows (``output_schema`` or ``output_config.format``)."""
        if self.output_schema is not None:
            return self.output_schema
        if self.output_config is not None and self.output_config.format is not None:
            return self.output_config.format.json_schema
        return None

    def fingerprint(self) -> str:
        """A hash of everything that shapes the answer; a change means old answers are stale.

        Unset settings are left out (``None``, empty lists and tables), so a key added in a later
        version changes no fingerprint until a job sets it. The image edge counts as sent (the
        model's tier when ``image_max_edge`` is unset).
        """
        settings = self.model_dump(
            mode="json", by_alias=True, exclude=set(NOT_FINGERPRINTED), exclude_none=True
        )
        settings["image_max_edge"] = self.image_edge
        settings = {key: value for key, value in settings.items() if value not in ([], {})}
        if not settings.get("citations"):
            settings.pop("citations", None)  # added later: unset changes no fingerprint
        return _digest({"v": 2, **settings})

    def legacy_fingerprint(self) -> str | None:
        """The fingerprint versions before thinking and structured output wrote for this request.

        None when the request uses a setting those versions did not have (they cannot have answered
        it). Their formula hashed ``max_tokens`` and the 1568 px default edge; a result with this
        fingerprint is one this request would get again (``results.store`` adopts such rows).
        """
        if (
            self.thinking is not None
            or self.output_config is not None
            or self.output_schema is not None
            or self.examples
            or self.extra
            or self.documents
            or self.citations
            or any(tool.strict is not None for tool in self.tools)
        ):
            return None
        settings: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "prompt": self.prompt,
            "system": self.system,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop_sequences": self.stop_sequences,
            "images": list(self.images),
            "image_max_edge": LEGACY_IMAGE_EDGE if self.image_max_edge is None else self.image_max_edge,
            "tools": [
                {"name": tool.name, "description": tool.description, "input_schema": tool.input_schema}
                for tool in self.tools
            ],
            "tool_choice": self.tool_choice,
        }
        if self.image_max_pixels is not None:
            settings["image_max_pixels"] = self.image_max_pixels
        return _digest(settings)


def _digest(settings: dict[str, Any]) -> str:
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
