"""The shapes of ``thinking`` and ``output_config`` in a Messages body, and what the answer needs of them.

As anthropic-sdk-python 2.15.0 has them (``ThinkingConfigParam``: ``adaptive`` and ``enabled``
with an optional ``display``, ``enabled`` with ``budget_tokens`` of at least 1,024 and below
``max_tokens``, ``disabled``, ``between_tools``; ``OutputConfigParam``: ``effort`` and a
``json_schema`` ``format``). Whether the model takes them is :mod:`pipeline.sandbox.rules`'.
"""

from __future__ import annotations

from typing import Any

from pipeline.sandbox.apierrors import RequestError


def settings_of(body: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(``thinking.type``, ``thinking.display``, ``output_config.format.schema``) of a checked body."""
    thinking = body.get("thinking")
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if not isinstance(thinking, dict):
        return None, None, schema if isinstance(schema, dict) else None
    return thinking.get("type"), thinking.get("display"), schema if isinstance(schema, dict) else None


def integer(value: object, path: str, *, minimum: int) -> int:
    """``value`` as a JSON integer of at least ``minimum``, or the API's 400."""
    # bool is an int subclass in Python but not an integer in JSON Schema
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(f"{path}: Input should be a valid integer")
    if value < minimum:
        raise RequestError(f"{path}: Input should be greater than or equal to {minimum}")
    return value


_THINKING_KEYS = {
    "adaptive": frozenset({"type", "display"}),
    "enabled": frozenset({"type", "budget_tokens", "display"}),
    "disabled": frozenset({"type"}),
    "between_tools": frozenset({"type"}),
}


def check_thinking(thinking: object, max_tokens: int) -> None:
    """``thinking`` as anthropic-sdk-python 2.15.0 ``ThinkingConfigParam`` has it."""
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if not isinstance(thinking, dict) or kind not in _THINKING_KEYS:
        raise RequestError(
            "thinking: Input tag found using 'type' does not match any of the expected tags: 'enabled',"
            " 'disabled', 'adaptive', 'between_tools'"
        )
    for key in thinking:
        if key not in _THINKING_KEYS[kind]:
            raise RequestError(f"thinking.{kind}.{key}: Extra inputs are not permitted")
    if thinking.get("display") not in (None, "summarized", "omitted"):
        raise RequestError(f"thinking.{kind}.display: Input should be 'summarized' or 'omitted'")
    if kind == "enabled":
        budget = integer(thinking.get("budget_tokens"), "thinking.enabled.budget_tokens", minimum=1024)
        if max_tokens and budget >= max_tokens:
            raise RequestError("`max_tokens` must be greater than `thinking.budget_tokens`")


def check_output_config(config: object) -> None:
    """``output_config``: ``effort`` (a level) and ``format`` (``json_schema`` with a ``schema`` object)."""
    if not isinstance(config, dict):
        return
    for key in config:
        if key not in ("effort", "format"):
            raise RequestError(f"output_config.{key}: Extra inputs are not permitted")
    effort = config.get("effort")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        raise RequestError("output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise RequestError("output_config.format.type: Input should be 'json_schema'")
    for key in fmt:
        if key not in ("type", "schema"):
            raise RequestError(f"output_config.format.{key}: Extra inputs are not permitted")
    if not isinstance(fmt.get("schema"), dict):
        raise RequestError("output_config.format.schema: Field required")
