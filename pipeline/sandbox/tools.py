"""Tool definitions and ``tool_choice``, checked as the hosted API checks them."""

from __future__ import annotations

import json
import re
from typing import Any

from pipeline.sandbox.apierrors import RequestError

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_TOOL_CHOICE_KEYS = {
    "auto": frozenset({"type", "disable_parallel_tool_use"}),
    "any": frozenset({"type", "disable_parallel_tool_use"}),
    "tool": frozenset({"type", "name", "disable_parallel_tool_use"}),
    "none": frozenset({"type"}),
}


def check_tools(tools: object) -> tuple[tuple[dict[str, Any], ...], int]:
    """Validate ``tools``; return them and the characters their definitions cost."""
    if tools is None:
        return ((), 0)
    if not isinstance(tools, list):
        raise RequestError("tools: Input should be a valid list")
    names: set[str] = set()
    for index, tool in enumerate(tools):
        path = f"tools.{index}"
        if not isinstance(tool, dict):
            raise RequestError(f"{path}: Input should be a valid dictionary")
        kind = tool.get("type", "custom")
        if kind != "custom":
            raise RequestError(f"{path}.type: the sandbox runs only custom tools, not {kind!r}")
        for key in tool:
            if key not in ("type", "name", "description", "input_schema", "cache_control", "strict"):
                raise RequestError(f"{path}.{key}: Extra inputs are not permitted")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise RequestError(f"{path}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        if name in names:
            raise RequestError("tools: Tool names must be unique.")
        names.add(name)
        if "description" in tool and not isinstance(tool["description"], str):
            raise RequestError(f"{path}.description: Input should be a valid string")
        schema = tool.get("input_schema")
        if schema is None:
            raise RequestError(f"{path}.input_schema: Field required")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise RequestError(f"{path}.input_schema.type: Input should be 'object'")
    # compact and key-sorted, so the same tools always cost the same tokens
    chars = len(json.dumps(tools, separators=(",", ":"), sort_keys=True)) if tools else 0
    return (tuple(tools), chars)


def check_tool_choice(choice: object, tools: tuple[dict[str, Any], ...]) -> tuple[str | None, str | None]:
    """Validate ``tool_choice`` against the declared tools; return (choice type, named tool)."""
    if choice is None:
        return ("auto" if tools else None, None)
    if not tools:
        raise RequestError("tool_choice may only be specified while providing tools.")
    if not isinstance(choice, dict):
        raise RequestError("tool_choice: Input should be a valid dictionary")
    kind = choice.get("type")
    if kind not in _TOOL_CHOICE_KEYS:
        raise RequestError(
            f"tool_choice: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
            "'auto', 'any', 'tool', 'none'"
        )
    for key in choice:
        if key not in _TOOL_CHOICE_KEYS[kind]:
            raise RequestError(f"tool_choice.{kind}.{key}: Extra inputs are not permitted")
    if "disable_parallel_tool_use" in choice and not isinstance(choice["disable_parallel_tool_use"], bool):
        raise RequestError(f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean")
    if kind != "tool":
        return (kind, None)
    name = choice.get("name")
    if not isinstance(name, str):
        raise RequestError("tool_choice.tool.name: Field required")
    if all(tool["name"] != name for tool in tools):
        raise RequestError(f"tool_choice.tool.name: Tool '{name}' not found in provided tools")
    return (kind, name)
