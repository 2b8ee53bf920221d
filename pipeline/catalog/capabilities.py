"""What ``GET /v1/models/{id}`` says about a model, laid over the shipped table's entry. Pure.

The Models API answers a ``ModelInfo`` (anthropic-sdk-python 2.15.0 ``types/model_info.py``):
``id``, ``lifecycle``, ``max_input_tokens``, ``max_tokens`` and ``capabilities`` (``batch``,
``effort`` with a ``supported`` flag per level, ``image_input``, ``pdf_input``,
``structured_outputs`` and ``thinking.types.{adaptive,enabled,disabled,between_tools}``, each
``{"supported": bool}``; "False exactly when a request that sends it gets a 400 from this model").
Those facts replace the table's; the rules the API does not state (sampling parameters, forced tool
choice, default thinking, image tiers, prices, prefill) stay the table's. A field the answer leaves
out or spells unexpectedly keeps the table's value: a partial answer never loosens or tightens a rule
by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pipeline.catalog.models import EFFORT_LEVELS, THINKING_TYPES, ModelFacts, model_table


def facts_from_model_info(info: Mapping[str, Any], source: str) -> ModelFacts:
    """The facts of the model ``info`` describes: the table's entry (or the defaults) overlaid by ``info``.

    :param info: the decoded JSON of a ``GET /v1/models/{id}`` answer.
    :param source: where the answer came from, kept on the facts for messages.
    """
    model_id = str(info.get("id") or "")
    base = model_table().facts(model_id)
    updates: dict[str, Any] = {"known": True, "source": source}
    if not base.known:
        updates["ids"] = (model_id,)
    if isinstance(info.get("display_name"), str):
        updates["display_name"] = info["display_name"]
    if info.get("lifecycle") in ("active", "deprecated", "retired"):
        updates["lifecycle"] = info["lifecycle"]
    if isinstance(retires := info.get("retires_at"), str):
        updates["retires_at"] = retires[:10]
    if _positive_int(info.get("max_input_tokens")):
        updates["context_window"] = info["max_input_tokens"]
    if _positive_int(info.get("max_tokens")):
        updates["max_output"] = info["max_tokens"]
    capabilities = info.get("capabilities")
    if isinstance(capabilities, Mapping):
        updates.update(_capabilities(capabilities))
    return replace(base, **updates)


def _capabilities(capabilities: Mapping[str, Any]) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    for key, field in (
        ("batch", "batch"),
        ("image_input", "image_input"),
        ("pdf_input", "pdf_input"),
        ("structured_outputs", "structured_outputs"),
    ):
        flag = _supported(capabilities.get(key))
        if flag is not None:
            updates[field] = flag
    effort = capabilities.get("effort")
    if isinstance(effort, Mapping) and isinstance(effort.get("supported"), bool):
        levels = [level for level in EFFORT_LEVELS if _supported(effort.get(level))]
        updates["effort"] = tuple(levels) if effort["supported"] else ()
    thinking = capabilities.get("thinking")
    types = thinking.get("types") if isinstance(thinking, Mapping) else None
    if isinstance(types, Mapping):
        flags = {kind: _supported(types.get(kind)) for kind in THINKING_TYPES}
        if all(flag is not None for flag in flags.values()):
            updates["thinking"] = tuple(kind for kind, flag in flags.items() if flag)
    return updates


def _supported(value: object) -> bool | None:
    if isinstance(value, Mapping) and isinstance(value.get("supported"), bool):
        return bool(value["supported"])
    return None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
