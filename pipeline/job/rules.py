"""A job's request checked against its model's rules, before anything is sent: one line per problem.

Owns: every rule that depends on the model (and on ``[api] anthropic_version``): sampling
parameters, thinking types and their limits, forced tool choice, structured outputs and their schema
limits, effort levels, max output, image input, batch support, ``inference_geo``, a retired model;
and which mechanism carries ``request.output_schema`` (``output_config.format`` where the model has
structured outputs, else a forced tool). ``validate``, ``estimate`` and ``run`` (both modes) call
:func:`check_job` with the facts they resolved (the shipped table, or what ``GET /v1/models`` said;
:mod:`pipeline.catalog`); each problem names the setting, the model and the fix, and the first one is
raised as a :class:`~pipeline.errors.SpecError`. Rules are checked only for models the facts know:
a self-hosted model or an id newer than the table is sent as it is. Pure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pipeline.catalog.models import EFFORT_LEVELS, THINKING_OFF, ModelFacts, model_table
from pipeline.errors import SpecError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import JobSpec

Via = Literal["format", "tool"]

# JSON Schema keywords structured outputs do not take (https://platform.claude.com/docs/en/build-with-claude/structured-outputs,
# "JSON Schema limitations"; anthropic-sdk-python 2.15.0 lib/_parse/_transform.py moves them into the
# description): numeric and string-length constraints, and array sizes past minItems 0 or 1
UNSUPPORTED_KEYWORDS = (
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
    "maxLength", "maxItems",
)  # fmt: skip
# the string formats structured outputs take (the same sources)
STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)


def structured_via(request: RequestSpec, facts: ModelFacts) -> Via | None:
    """How ``request.output_schema`` travels to ``facts``' model: ``format``, ``tool``, or None."""
    if request.output_schema is None:
        return None
    if request.output_via != "auto":
        return request.output_via
    return "format" if facts.structured_outputs else "tool"


def plan_request(request: RequestSpec, facts: ModelFacts) -> RequestSpec:
    """``request`` with ``output_via = "auto"`` decided for the model (nothing else changes)."""
    via = structured_via(request, facts)
    if via is None or request.output_via == via:
        return request
    return request.model_copy(update={"output_via": via})


def check_job(spec: JobSpec, facts: ModelFacts, *, mode: str = "realtime") -> None:
    """Raise a one-line ``SpecError`` (``JOB: problem``) for the first rule ``spec`` breaks on its model."""
    problems = job_problems(spec, facts, mode=mode)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(f"{spec.source}: {problems[0]}{more}")


def job_problems(spec: JobSpec, facts: ModelFacts, *, mode: str = "realtime") -> list[str]:
    """Every rule ``spec`` breaks on ``facts``' model, one line each (empty: nothing to refuse)."""
    request = spec.request
    problems: list[str] = []
    if spec.api.provider == "anthropic":
        problems += _version_problems(request, spec.api.anthropic_version, facts)
    if facts.known:
        problems += list(_model_problems(request, facts, mode=mode))
    return problems


def job_warnings(spec: JobSpec, facts: ModelFacts) -> list[str]:
    """What is worth saying but not refusing: a deprecated model, a retirement the table records."""
    notes: list[str] = []
    model = spec.request.model
    versions = model_table().api_versions
    if spec.api.provider == "anthropic" and spec.api.anthropic_version not in versions.known:
        notes.append(
            f"[api] anthropic_version {spec.api.anthropic_version!r} is not one the model table knows"
            f" ({', '.join(versions.known)}); its rules are not checked"
        )
    if facts.lifecycle == "deprecated":
        when = f" (retirement scheduled for {facts.retires_at})" if facts.retires_at else ""
        notes.append(f"{model} is deprecated{when} ({facts.source}); plan a move to a current model")
    elif facts.lifecycle == "retired" and not _live(facts):
        notes.append(
            f"{model} is retired on the Claude API ({facts.source}); requests to it fail there"
            " (some cloud platforms still serve it)"
        )
    return notes


def _live(facts: ModelFacts) -> bool:
    """Whether the facts come from a ``/v1/models`` answer (rather than the shipped table)."""
    return "/v1/models" in facts.source


def _version_problems(request: RequestSpec, version: str, facts: ModelFacts) -> list[str]:
    versions = model_table().api_versions
    if version not in versions.known or versions.takes_sampling(version):
        return []
    problems: list[str] = []
    for key in _sampling_keys(request):
        fix = "remove it"
        if facts.sampling != "none":
            fix += ', or set [api] anthropic_version = "2023-06-01"'
        problems.append(
            f"anthropic-version {version} does not accept request.{key} (sampling parameters are removed"
            f" from {versions.sampling_removed_in} on, on every model); {fix}"
        )
    return problems


def _sampling_keys(request: RequestSpec) -> list[str]:
    return [key for key in ("temperature", "top_p", "top_k") if getattr(request, key) is not None]


def _model_problems(request: RequestSpec, facts: ModelFacts, *, mode: str) -> Iterator[str]:
    model = request.model
    if facts.lifecycle == "retired" and _live(facts):
        yield f"{model} is retired ({facts.source}): requests to it fail; choose a current model"
    if facts.max_output is not None and request.max_tokens > facts.max_output:
        yield (
            f"request.max_tokens = {request.max_tokens:,} is over the {facts.max_output:,} output tokens"
            f" {model} allows; lower it"
        )
    yield from _sampling_problems(request, facts)
    thinks, implicit = _thinks(request, facts)
    yield from _thinking_problems(request, facts, thinks=thinks)
    yield from _tool_problems(request, facts, thinks=thinks, implicit=implicit)
    yield from _structured_problems(request, facts)
    yield from _effort_problems(request, facts)
    if not facts.image_input and (request.images or any(turn.images for turn in request.examples)):
        yield f"{model} does not take images (request.images, request.examples); remove them"
    if mode == "batch" and not facts.batch:
        yield f"{model} is not served by the Message Batches API; run it with --mode realtime"
    if "inference_geo" in request.extra and not facts.inference_geo:
        yield (
            f"{model} does not accept request.extra.inference_geo (Claude Opus 4.6 and later models do);"
            " remove it"
        )


def _thinks(request: RequestSpec, facts: ModelFacts) -> tuple[bool, bool]:
    """(whether the request thinks, whether only because the model thinks by default)."""
    if request.thinking is not None:
        return request.thinking.thinks, False
    return facts.thinks_by_default(), facts.thinks_by_default()


def _sampling_problems(request: RequestSpec, facts: ModelFacts) -> Iterator[str]:
    model = request.model
    keys = _sampling_keys(request)
    if facts.sampling == "none":
        for key in keys:
            yield f"{model} does not accept request.{key}; remove it"
        return
    if (
        facts.sampling == "temperature_or_top_p"
        and request.temperature is not None
        and request.top_p is not None
    ):
        yield f"{model} takes request.temperature or request.top_p, not both; remove one"


def _thinking_problems(request: RequestSpec, facts: ModelFacts, *, thinks: bool) -> Iterator[str]:
    model = request.model
    thinking = request.thinking
    if thinking is not None and thinking.type not in facts.thinking:
        fix = _thinking_fix(thinking.type, facts)
        yield f'{model} does not accept request.thinking.type = "{thinking.type}"; {fix}'
    effort = request.output_config.effort if request.output_config is not None else None
    off = thinking is not None and thinking.type in THINKING_OFF
    ceiling = facts.thinking_off_max_effort
    if off and effort is not None and ceiling is not None and _rank(effort) > _rank(ceiling):
        yield (
            f'{model} turns thinking off only at request.output_config.effort "{ceiling}" or lower, not'
            f' "{effort}"; lower the effort or remove request.thinking'
        )
    if thinks and facts.sampling != "none":
        table = model_table()
        if request.temperature is not None and request.temperature != 1:
            yield f"{model} does not take request.temperature while thinking; remove it or turn thinking off"
        if request.top_k is not None:
            yield f"{model} does not take request.top_k while thinking; remove it or turn thinking off"
        if request.top_p is not None and request.top_p < table.thinking_top_p_min:
            yield (
                f"{model} takes request.top_p only from {table.thinking_top_p_min} to 1 while thinking;"
                " raise it, remove it or turn thinking off"
            )


def _thinking_fix(kind: str, facts: ModelFacts) -> str:
    accepted = facts.thinking
    if accepted == ("adaptive",) and not facts.thinks_by_default():
        return 'remove request.thinking (left out, the model does not think), or use type = "adaptive"'
    if accepted == ("adaptive",):
        return (
            "remove request.thinking: thinking is always on there"
            " (request.output_config.effort sets how much)"
        )
    if kind == "disabled" and "between_tools" in accepted:
        return 'use type = "between_tools" to turn thinking off'
    if kind == "enabled" and "adaptive" in accepted:
        return 'use type = "adaptive" (request.output_config.effort sets how much it thinks)'
    return "it accepts " + ", ".join(f'"{kind}"' for kind in accepted)


def _tool_problems(request: RequestSpec, facts: ModelFacts, *, thinks: bool, implicit: bool) -> Iterator[str]:
    model = request.model
    choice = request.tool_choice
    via = structured_via(request, facts)
    forcing = choice is not None and choice.get("type") in ("any", "tool")
    if not forcing and via != "tool":
        return
    where = "request.tool_choice" if forcing else 'request.output_schema with output_via = "tool"'
    if not facts.forced_tool:
        fix = (
            "use request.output_config.format (or request.output_schema)"
            if forcing
            else 'use output_via = "auto"'
        )
        yield f"{model} cannot force a tool ({where}); {fix}"
        return
    if thinks:
        why = "thinks by default" if implicit else "thinks (request.thinking)"
        off = next((kind for kind in ("disabled", "between_tools") if kind in facts.thinking), None)
        fix = f'set request.thinking = {{type = "{off}"}}, or ' if off is not None else ""
        fix += "use request.output_config.format" if forcing else 'use output_via = "format"'
        yield f"{model} {why}, and thinking cannot be combined with a forced tool ({where}); {fix}"


def _structured_problems(request: RequestSpec, facts: ModelFacts) -> Iterator[str]:
    model = request.model
    fmt = request.output_config.format if request.output_config is not None else None
    if fmt is not None:
        if not facts.structured_outputs:
            yield (
                f"{model} does not support request.output_config.format (structured outputs); use"
                " request.output_schema, which falls back to a forced tool"
            )
        else:
            for problem in schema_problems(fmt.json_schema):
                yield (
                    f"request.output_config.format.schema {problem} (structured outputs do not take it);"
                    " fix the schema, or use request.output_schema, which adapts it for you"
                )
                break
    if request.output_via == "format" and request.output_schema is not None and not facts.structured_outputs:
        yield (
            f'{model} does not support structured outputs (request.output_via = "format");'
            ' use "auto" or "tool"'
        )
    for index, tool in enumerate(request.tools):
        if not tool.strict:
            continue
        if not facts.structured_outputs:
            yield f"{model} does not support strict tools (request.tools.{index}.strict); remove it"
            continue
        for problem in schema_problems(tool.input_schema):
            yield f"request.tools.{index}.input_schema {problem} (strict tools do not take it)"
            break


def _effort_problems(request: RequestSpec, facts: ModelFacts) -> Iterator[str]:
    effort = request.output_config.effort if request.output_config is not None else None
    if effort is None:
        return
    if not facts.effort:
        yield f"{request.model} does not accept request.output_config.effort; remove it"
    elif effort not in facts.effort:
        levels = ", ".join(facts.effort)
        yield (
            f'{request.model} does not accept request.output_config.effort = "{effort}"; use one of {levels}'
        )


def _rank(effort: str) -> int:
    return EFFORT_LEVELS.index(effort) if effort in EFFORT_LEVELS else len(EFFORT_LEVELS)


def schema_problems(schema: Mapping[str, Any]) -> list[str]:
    """Where ``schema`` uses what structured outputs refuse, each as ``at PATH: what; fix``.

    Every object must say ``additionalProperties = false``; the keywords in
    :data:`UNSUPPORTED_KEYWORDS`, ``minItems`` above 1 and string formats outside
    :data:`STRING_FORMATS` are refused.
    """
    return list(_walk(schema, "$"))


def _walk(node: object, path: str) -> Iterator[str]:
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")
        return
    if not isinstance(node, Mapping):
        return
    kind = node.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node
    if is_object and node.get("additionalProperties") is not False:
        yield f"at {path}: an object without additionalProperties = false; add it"
    for keyword in UNSUPPORTED_KEYWORDS:
        if keyword in node:
            yield f"at {path}: {keyword} is not supported; remove it"
    min_items = node.get("minItems")
    if isinstance(min_items, int) and min_items > 1:
        yield f"at {path}: minItems above 1 is not supported; remove it"
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt not in STRING_FORMATS:
        yield f"at {path}: format {fmt!r} is not supported; remove it"
    for key in ("properties", "$defs", "definitions"):
        children = node.get(key)
        if isinstance(children, Mapping):
            for name, child in children.items():
                yield from _walk(child, f"{path}.{name}" if key == "properties" else f"{path}.{key}.{name}")
    for key in ("items", "anyOf", "oneOf", "allOf", "prefixItems"):
        if key in node:
            yield from _walk(node[key], f"{path}.{key}")
