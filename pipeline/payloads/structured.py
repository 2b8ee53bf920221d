"""A job's ``output_schema`` made fit for ``output_config.format``. Pure.

Structured outputs take a subset of JSON Schema
(https://platform.claude.com/docs/en/build-with-claude/structured-outputs, "JSON Schema
limitations"): every object closed with ``additionalProperties: false``; no numeric or string-length
constraints; ``minItems`` only 0 or 1; a fixed list of string formats; ``anyOf`` rather than
``oneOf``. :func:`adapt_schema` rewrites a schema the way the official SDK's ``transform_schema``
does (anthropic-sdk-python 2.15.0 ``lib/_parse/_transform.py``): it keeps what is supported, closes
every object, and moves every other keyword into the description, so the model still reads it. The
pipeline validates each answer against the job's original schema, so a constraint the API could not
enforce is still checked (and a breaking answer is a ``schema_violation``, sent again).

An explicit ``[request.output_config.format]`` is sent as written, and refused up front when it
uses what the API refuses (:func:`pipeline.job.rules.schema_problems`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pipeline.job.rules import STRING_FORMATS

# what survives as is; everything else goes into the description
_KEPT = frozenset({"type", "description", "title", "enum", "const", "required", "$ref"})


def adapt_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` rewritten within what structured outputs take (see the module docstring)."""
    return _adapt(dict(schema))


def _adapt(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rest = dict(node)
    for key in ("$defs", "definitions"):
        defs = rest.pop(key, None)
        if isinstance(defs, Mapping):
            out[key] = {
                name: _adapt(dict(sub)) if isinstance(sub, Mapping) else sub for name, sub in defs.items()
            }
    for key in ("anyOf", "oneOf", "allOf"):
        options = rest.pop(key, None)
        if isinstance(options, list):
            # oneOf becomes anyOf, as the SDK does: structured outputs document anyOf and allOf
            target = "allOf" if key == "allOf" else "anyOf"
            out[target] = [_adapt(dict(o)) if isinstance(o, Mapping) else o for o in options]
    for key in _KEPT:
        if key in rest:
            out[key] = rest.pop(key)
    kind = out.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in rest
    if is_object:
        properties = rest.pop("properties", {})
        if isinstance(properties, Mapping):
            out["properties"] = {
                name: _adapt(dict(sub)) if isinstance(sub, Mapping) else sub
                for name, sub in properties.items()
            }
        rest.pop("additionalProperties", None)
        out["additionalProperties"] = False
    if "items" in rest and isinstance(rest["items"], Mapping):
        out["items"] = _adapt(dict(rest.pop("items")))
    if rest.get("minItems") in (0, 1):
        out["minItems"] = rest.pop("minItems")
    if isinstance(rest.get("format"), str) and rest["format"] in STRING_FORMATS:
        out["format"] = rest.pop("format")
    if rest:
        # the model still reads what the API cannot enforce; the pipeline checks it on every answer
        note = "{" + ", ".join(f"{key}: {json.dumps(value)}" for key, value in rest.items()) + "}"
        description = out.get("description")
        out["description"] = f"{description}\n\n{note}" if isinstance(description, str) else note
    return out
