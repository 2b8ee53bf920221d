"""Answer schemas: the job's ``input_schema`` / ``output_schema`` / ``output_config.format`` schema
checked as JSON Schema, and a reply's tool input or structured answer checked against it
(``schema_violation``). Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipeline.records import Reply

# the forced tool output_schema travels as (see pipeline.job.request; not imported: request imports us)
OUTPUT_TOOL = "structured_output"

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
    """Why ``reply`` breaks a schema, or None when every tool input and the structured answer conform.

    Every ``tool_use`` block is checked against the ``input_schema`` of the tool it names; a call to
    an undeclared tool is a violation, and so is a reply without a call to the forced tool. A
    structured answer (``output_schema``: the answer tool's input or the text; ``output_config.format``:
    the text) must be JSON that validates against its schema.
    """
    schemas = {tool.name: tool.input_schema for tool in request.tools}
    if request.output_schema is not None:
        schemas[OUTPUT_TOOL] = request.output_schema
    answer = request.answer_schema
    if not schemas and answer is None:
        return None
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
    if answer is None or any(call.name == OUTPUT_TOOL for call in reply.tool_calls):
        return None  # an answer through the answer tool was checked above
    try:
        value = read_answer(reply, tool=None, text=True)
    except ValueError as exc:
        return f"{exc} (stop_reason {reply.stop_reason})"[:MESSAGE_LIMIT]
    problem = _first_error(_validator(_canonical(answer)), value)
    return None if problem is None else f"answer {problem}"[:MESSAGE_LIMIT]


def read_answer(reply: Reply, *, tool: str | None, text: bool) -> Any:
    """A structured answer: the input of ``tool``'s first call in ``reply``, else (``text``) its JSON text.

    :raises ValueError: saying what is missing or not JSON.
    """
    if tool is not None:
        call = next((c for c in reply.tool_calls if c.name == tool), None)
        if call is not None:
            try:
                return json.loads(call.input_json)
            except ValueError:
                raise ValueError(f"{tool} input is not JSON") from None
    if not text:
        raise ValueError(f"the reply has no {tool} tool call")
    body = reply.text.strip()
    if not body:
        raise ValueError("the reply has no JSON answer")
    try:
        return json.loads(body)
    except ValueError:
        raise ValueError(f"the reply text is not JSON: {body[:60]!r}") from None


def check_tool_schema(schema: Mapping[str, Any], *, what: str = "input_schema") -> None:
    """Raise ValueError when ``schema`` is not a valid JSON Schema (checked once, at job load).

    :param what: the key named in the message (``input_schema``, ``output_schema``, ...).
    """
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(root)"
        raise ValueError(f"{what} is not a valid JSON Schema at {where}: {exc.message}") from None


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
