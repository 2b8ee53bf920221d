"""The sandbox's Models endpoints: ``GET /v1/models`` and ``GET /v1/models/{model_id}``, from the model table.

Shapes follow anthropic-sdk-python 2.15.0 (``types/model_info.py``, ``model_capabilities.py``,
``pagination.py``): a ``ModelInfo`` per model with every capability key present, and a page
``{data, has_more, first_id, last_id}`` paged by ``after_id`` / ``before_id`` / ``limit`` (1 to 1000,
default 20), newest first. ``lifecycle`` (``lifecycle[]=...`` as the SDK sends it, repeated, or
comma-separated) filters; left out, active and deprecated models are listed, and retired ones only
when asked. An alias (``claude-haiku-4-5``) resolves to its dated id, as the API's does. What the
sandbox itself does not serve (citations, server tools, context management, code execution) is
reported unsupported. A provider preset without Anthropic's Models API answers 404 here.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from pipeline.catalog.models import EFFORT_LEVELS, THINKING_TYPES, ModelFacts, model_table
from pipeline.sandbox.apierrors import RequestError, cursor_window

_DATED = re.compile(r"-\d{8}$")
LINES = ("haiku", "sonnet", "opus", "fable", "mythos")
EPOCH = "1970-01-01T00:00:00Z"


def canonical_id(model: str) -> str | None:
    """The id the API answers for ``model`` (an alias's dated id), or None when the table lacks it."""
    for facts in model_table().models:
        if model in facts.ids:
            dated = next((i for i in facts.ids if _DATED.search(i) and _DATED.sub("", i) == model), None)
            return dated or model
    return None


def known_facts(model: str) -> ModelFacts | None:
    """The table's facts for exactly ``model`` (an id or alias the API serves), else None."""
    for facts in model_table().models:
        if model in facts.ids:
            return facts
    return None


def listed_ids() -> list[tuple[str, ModelFacts]]:
    """Every model id the table knows, aliases left out (their dated ids stand for them), newest first."""
    entries: list[tuple[str, ModelFacts]] = []
    for facts in model_table().models:
        ids = set(facts.ids)
        for model_id in facts.ids:
            if any(other != model_id and _DATED.sub("", other) == model_id for other in ids):
                continue  # an alias: its dated snapshot is listed
            entries.append((model_id, facts))
    entries.sort(key=lambda entry: entry[1].released or "", reverse=True)
    return entries


def model_info(model_id: str, facts: ModelFacts) -> dict[str, Any]:
    """A ``ModelInfo`` for ``model_id``, as the API sends it."""
    lifecycle = facts.lifecycle or "active"
    return {
        "type": "model",
        "id": model_id,
        "display_name": display_name(model_id),
        "created_at": f"{facts.released}T00:00:00Z" if facts.released else EPOCH,
        "lifecycle": lifecycle,
        "deprecated_at": None,
        "retires_at": f"{facts.retires_at}T00:00:00Z" if facts.retires_at else None,
        "line": next((line for line in LINES if f"-{line}-" in f"-{model_id}-"), None),
        "max_input_tokens": facts.context_window,
        "max_tokens": facts.max_output,
        "capabilities": capabilities(facts),
    }


def display_name(model_id: str) -> str:
    """``claude-haiku-4-5-20251001`` -> ``Claude Haiku 4.5``."""
    words = _DATED.sub("", model_id).split("-")
    name = [word.capitalize() for word in words if not word.isdigit()]
    version = ".".join(word for word in words if word.isdigit())
    return " ".join(name) + (f" {version}" if version else "")


def capabilities(facts: ModelFacts) -> dict[str, Any]:
    """Every capability key, as ``ModelCapabilities`` has them (``{"supported": bool}`` leaves)."""

    def flag(value: bool) -> dict[str, bool]:
        return {"supported": value}

    effort: dict[str, Any] = {"supported": bool(facts.effort)}
    effort.update({level: flag(level in facts.effort) for level in EFFORT_LEVELS})
    thinking_types = {kind: flag(kind in facts.thinking) for kind in THINKING_TYPES}
    thinks = "adaptive" in facts.thinking or "enabled" in facts.thinking
    return {
        "batch": flag(facts.batch),
        "citations": flag(False),
        "code_execution": flag(False),
        "context_management": {"supported": False},
        "effort": effort,
        "image_input": flag(facts.image_input),
        "pdf_input": flag(facts.pdf_input),
        "server_tools": {"supported": False, "code_execution": flag(False), "web_search": flag(False)},
        "structured_outputs": flag(facts.structured_outputs),
        "thinking": {"supported": thinks, "types": thinking_types},
    }


def retrieve(model: str) -> dict[str, Any]:
    """The ``GET /v1/models/{model}`` body; 404 ``not_found_error`` for an id the table lacks."""
    model_id = canonical_id(model)
    facts = known_facts(model)
    if model_id is None or facts is None:
        raise RequestError(f"model: {model}", status=404, error_type="not_found_error")
    return model_info(model_id, facts)


def page(query: Any) -> dict[str, Any]:
    """The ``GET /v1/models`` body for a query of ``after_id``, ``before_id``, ``limit`` and ``lifecycle``."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise RequestError("limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise RequestError("limit: Input should be greater than or equal to 1 and less than or equal to 1000")
    wanted = _lifecycles(query)
    entries = [(i, f) for i, f in listed_ids() if (f.lifecycle or "active") in wanted]
    ids = [model_id for model_id, _ in entries]
    start, stop = cursor_window(ids, query, limit)
    chosen = entries[start:stop][:limit]
    data = [model_info(model_id, facts) for model_id, facts in chosen]
    return {
        "data": data,
        "has_more": (start + len(chosen) < stop) if query.get("before_id") is None else start > 0,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _lifecycles(query: Any) -> set[str]:
    values: list[str] = []
    for key in ("lifecycle[]", "lifecycle"):
        for value in query.getall(key, []):
            values.extend(part.strip() for part in value.split(",") if part.strip())
    if not values:
        return {"active", "deprecated"}
    unknown = sorted(set(values) - {"active", "deprecated", "retired"})
    if unknown:
        raise RequestError(
            f"lifecycle: Input should be 'active', 'deprecated' or 'retired', not {unknown[0]!r}"
        )
    return set(values)


def add_model_routes(app: web.Application, handler: Any) -> None:
    """Register the two routes on ``app``; ``handler`` wraps each body function (auth, errors, JSON)."""
    app.router.add_get("/v1/models", handler(lambda request: page(request.query)))
    app.router.add_get(
        "/v1/models/{model_id}", handler(lambda request: retrieve(request.match_info["model_id"]))
    )
