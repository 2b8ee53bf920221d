"""Frozen records passed between the pipeline's stages. No I/O here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Status = Literal["ok", "error"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the API reports them (missing or null fields count as 0)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One ``tool_use`` block; ``input_json`` is the tool input serialised as JSON text."""

    id: str
    name: str
    input_json: str


@dataclass(frozen=True, slots=True)
class StopDetails:
    """Why an answer stopped, when the API says more than ``stop_reason`` (a refusal's category)."""

    type: str
    category: str | None = None
    explanation: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A Messages API answer (a 200), reduced to what the output keeps.

    ``thinking`` joins the thinking blocks' text: None when the reply has none, ``""`` when their
    text is omitted (``display = "omitted"``) or redacted.
    """

    model: str
    text: str
    tool_calls: tuple[ToolCall, ...]
    stop_reason: str | None
    usage: Usage
    message_id: str | None
    request_id: str | None
    thinking: str | None = None
    stop_details: StopDetails | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """A reply plus how it was obtained."""

    reply: Reply
    attempts: int
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Row:
    """One input row.

    ``index`` is its position in the input; ``values`` are its cells as read; ``content_hash`` hashes
    the cells that feed the request, so an answer is reused only while they are unchanged.
    """

    index: int
    row_id: str
    values: Mapping[str, Any]
    content_hash: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one row: a reply, or an error with its type and message."""

    row: Row
    status: Status
    finished_at: datetime
    fingerprint: str
    reply: Reply | None = None
    attempts: int = 0
    latency_ms: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    shared_with: str | None = None  # row_id of the row whose identical request answered this one
    max_tokens: int | None = None  # what the row's request was sent with (the rerun rule reads it)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did, folded from its results."""

    rows_total: int = 0
    rows_ok: int = 0
    rows_error: int = 0
    rows_skipped: int = 0
    errors_by_type: Mapping[str, int] = field(default_factory=dict)
    usage: Usage = Usage()
    requests_sent: int = 0
    retries: int = 0
    wall_s: float = 0.0
    cost_usd: float | None = None  # None when no price is known for the model
    priced_as: str = ""  # which prices the cost used, or why there is none
    rows_shared: int = 0  # rows answered by another row's identical request (dedupe), no request of their own
    model_facts: str = ""  # where the model's rules came from (the shipped table, /v1/models, a cache)
