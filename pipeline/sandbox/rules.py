"""The model rules the hosted API enforces per request, answered with its 400s (or 404 for no model).

Read from the model table (``catalog``), written apart from the pipeline's own checks
(``pipeline.job.rules``) on purpose: the sandbox checks the wire, the pipeline the job file, and a
test of one against the other only means something if they share no code. Messages follow the
API's where the public record shows them (the Opus 5.5 and Sonnet 5.5 "what's new" pages, issue
threads quoting real responses); elsewhere they name the field the same way.

- ``anthropic-version`` 2026-10-21 or later: ``temperature``, ``top_p`` and ``top_k`` are
  "Extra inputs" (https://platform.claude.com/docs/en/api/versioning).
- Under 2023-06-01: models without sampling refuse each of them; "temperature or top_p" models
  refuse both together; while thinking, temperature must be 1, top_k is refused and top_p is 0.95-1.
- ``thinking.type`` must be one the model takes; thinking off (``disabled``, ``between_tools``)
  only at the model's highest effort for it; ``output_config.effort`` a level the model takes.
- A forced ``tool_choice`` (``any``, ``tool``) is refused on models that never force a tool, and
  whenever thinking is on (asked for, or the model's default).
- ``output_config.format`` and strict tools need structured outputs, and a schema within their
  subset (every object closed, no numeric or length constraints).
- ``max_tokens`` within the model's output cap; no final assistant turn (prefill) where refused;
  ``inference_geo`` where accepted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pipeline.catalog.models import EFFORT_LEVELS, THINKING_OFF, ModelFacts, model_table
from pipeline.sandbox.apierrors import RequestError
from pipeline.sandbox.models import known_facts

_SCHEMA_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
                    "minLength", "maxLength", "maxItems")  # fmt: skip
_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)


def check_known_model(model: str) -> ModelFacts:
    """The facts of ``model``, or the API's 404 for a model it does not serve (or no longer does)."""
    facts = known_facts(model)
    if facts is None or facts.lifecycle == "retired":
        raise RequestError(f"model: {model}", status=404, error_type="not_found_error")
    return facts


def check_rules(body: Mapping[str, Any], facts: ModelFacts | None, *, version: str, versioned: bool) -> None:
    """Raise the API's 400 for the first rule ``body`` breaks.

    :param facts: the model's facts, or None when the sandbox does not know the model (no rule applies).
    :param version: the request's ``anthropic-version``.
    :param versioned: whether version rules apply (the hosted API's; other presets ignore the header).
    """
    if (
        versioned
        and not model_table().api_versions.takes_sampling(version)
        and version in model_table().api_versions.known
    ):
        for key in ("temperature", "top_p", "top_k"):
            if key in body:
                raise RequestError(f"{key}: Extra inputs are not permitted")
    if facts is None:
        return
    model = str(body.get("model"))
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and facts.max_output is not None and max_tokens > facts.max_output:
        raise RequestError(
            f"max_tokens: {max_tokens} > {facts.max_output}, which is the maximum allowed number of output"
            f" tokens for {model}"
        )
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    thinks = kind in ("adaptive", "enabled") if kind is not None else facts.thinks_by_default()
    _sampling(body, facts, thinks=thinks)
    config = body.get("output_config") if isinstance(body.get("output_config"), Mapping) else {}
    assert isinstance(config, Mapping)
    effort = config.get("effort")
    if kind is not None and kind not in facts.thinking:
        hint = ""
        if "adaptive" in facts.thinking:
            hint = ' Use "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
        if kind == "disabled" and "between_tools" in facts.thinking:
            hint = ' Use "thinking.type.between_tools" to turn thinking off.'
        raise RequestError(f'"thinking.type.{kind}" is not supported for this model.{hint}')
    ceiling = facts.thinking_off_max_effort
    if (
        kind in THINKING_OFF
        and isinstance(effort, str)
        and ceiling is not None
        and _rank(effort) > _rank(ceiling)
    ):
        raise RequestError(f'"thinking.type.{kind}" is not supported with output_config.effort "{effort}".')
    if effort is not None:
        if not facts.effort:
            raise RequestError("output_config.effort: effort is not supported for this model.")
        if effort not in facts.effort:
            raise RequestError(f"output_config.effort: {effort!r} is not supported for this model.")
    _tools(body, facts, thinks=thinks)
    fmt = config.get("format")
    if fmt is not None:
        if not facts.structured_outputs:
            raise RequestError("output_config.format: structured outputs are not supported for this model.")
        schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
        for problem in _schema_problems(schema, "output_config.format.schema"):
            raise RequestError(problem)
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, Mapping) and last.get("role") == "assistant" and not facts.prefill:
        raise RequestError(
            "This model does not support assistant message prefill. The conversation must end with a"
            " user message."
        )
    if "inference_geo" in body and not facts.inference_geo:
        raise RequestError("inference_geo: not supported for this model.")


def _sampling(body: Mapping[str, Any], facts: ModelFacts, *, thinks: bool) -> None:
    present = [key for key in ("temperature", "top_p", "top_k") if key in body]
    if facts.sampling == "none" and present:
        raise RequestError(f"`{present[0]}` is deprecated for this model.")
    if facts.sampling == "temperature_or_top_p" and "temperature" in body and "top_p" in body:
        raise RequestError(
            "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
        )
    if thinks:
        if "temperature" in body and body["temperature"] != 1:
            raise RequestError("`temperature` may only be set to 1 when thinking is enabled.")
        if "top_k" in body:
            raise RequestError("`top_k` is not supported when thinking is enabled.")
        top_p = body.get("top_p")
        if isinstance(top_p, (int, float)) and top_p < model_table().thinking_top_p_min:
            raise RequestError(
                f"`top_p` must be greater than or equal to {model_table().thinking_top_p_min} or unset when"
                " thinking is enabled."
            )


def _tools(body: Mapping[str, Any], facts: ModelFacts, *, thinks: bool) -> None:
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in ("any", "tool"):
        if not facts.forced_tool:
            raise RequestError(
                "tool_choice: forced tool use is not supported for this model; use auto or none."
            )
        if thinks:
            raise RequestError("Thinking may not be enabled when tool_choice forces tool use.")
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, Mapping) and tool.get("strict"):
            if not facts.structured_outputs:
                raise RequestError(f"tools.{index}.strict: strict tools are not supported for this model.")
            for problem in _schema_problems(tool.get("input_schema"), f"tools.{index}.input_schema"):
                raise RequestError(problem)


def _schema_problems(node: object, path: str) -> Iterator[str]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _schema_problems(item, f"{path}.{index}")
        return
    if not isinstance(node, Mapping):
        return
    kind = node.get("type")
    if (
        kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node
    ) and node.get("additionalProperties") is not False:
        yield f"{path}: For 'object' type, 'additionalProperties' must be explicitly set to false"
    for keyword in _SCHEMA_KEYWORDS:
        if keyword in node:
            yield f"{path}: '{keyword}' is not supported in structured outputs schemas"
    if isinstance(node.get("minItems"), int) and node["minItems"] > 1:
        yield f"{path}: 'minItems' values other than 0 or 1 are not supported"
    if isinstance(node.get("format"), str) and node["format"] not in _FORMATS:
        yield f"{path}: format {node['format']!r} is not supported"
    for key in ("properties", "$defs", "definitions"):
        children = node.get(key)
        if isinstance(children, Mapping):
            for name, child in children.items():
                yield from _schema_problems(child, f"{path}.{key}.{name}")
    for key in ("items", "anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node:
            yield from _schema_problems(node[key], f"{path}.{key}")


def _rank(effort: str) -> int:
    return EFFORT_LEVELS.index(effort) if effort in EFFORT_LEVELS else len(EFFORT_LEVELS)
