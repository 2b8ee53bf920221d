"""Tool schemas: the job's ``input_schema`` checked as JSON Schema, and a reply's tool input
checked against it (``schema_violation``). Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipeline.records import Reply

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from pipeline.job.request import RequestSpec


MESSAGE_LIMIT = 300  # characters of a validation message kept in error_message


def forced_tool(request: RequestSpec) -> str | None:
    """The tool ``tool_choice`` forces (type ``tool``), or None."""
    choice = request.tool_choice
    if choice is not None and choice.get("type") == "tool":
        name = choice.get("name")
        return name if isinstance(name, str) else None
    return None


def schema_violation(request: RequestSpec, reply: Reply) -> str | None:
    """Why ``reply`` breaks a tool's schema, or None when every tool input conforms.

    Every ``tool_use`` block is checked against the ``input_schema`` of the tool it names; a call to
    an undeclared tool is a violation, and so is a reply without a call to the forced tool.
    """
    if not request.tools:
        return None
    schemas = {tool.name: tool.input_schema for tool in request.tools}
    forced = forced_tool(request)
    if forced is not None and all(call.name != forced for call in reply.tool_calls):
        return f"the reply has no {forced} tool call (stop_reason {reply.stop_reason})"
    for call in reply.tool_calls:
        schema = schemas.get(call.name)
        if schema is None:
            return f"the reply calls {call.name!r}, which is not a declared tool"
        try:
            value = json.loads(call.input_json)
        except ValueError:
            return f"{call.name} input is not JSON"
        problem = _first_error(_validator(_canonical(schema)), value)
        if problem is not None:
            return f"{call.name} input {problem}"[:MESSAGE_LIMIT]
    return None


def check_tool_schema(schema: Mapping[str, Any]) -> None:
    """Raise ValueError when ``schema`` is not a valid JSON Schema (checked once, at job load)."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(root)"
        raise ValueError(f"input_schema is not a valid JSON Schema at {where}: {exc.message}") from None


def _canonical(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> Validator:
    """A compiled validator per distinct schema: building one costs far more than using it."""
    from jsonschema.validators import validator_for

    schema = json.loads(schema_json)
    return validator_for(schema)(schema)


def _first_error(validator: Validator, value: Any) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"at {error.json_path}: {error.message}"
