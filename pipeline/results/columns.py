"""Structured output as typed columns, whatever carried it.

Contract used by the realtime runner and the batch collector: ``schema_violation(request, reply)``
(:mod:`pipeline.job.toolschema`) returns why a reply's tool input or structured answer does not
conform to its schema, or None.

Typed columns: when a job forces a tool (``tool_choice = {type = "tool", name = ...}``), asks for
``output_schema`` (answered through ``output_config.format`` or a forced tool: the columns are the
same) or sets ``output_config.format``, each top-level property of that schema becomes one column
``out_<property>`` whose Arrow type follows the schema (string, int64, float64, bool, list, struct;
enums by the type of their values; anything without one clear type, such as a free-form object or a
mixed ``anyOf``, is JSON text). ``column_plan`` decides the columns; ``ColumnPlan.values`` turns a
reply into their values (from the tool's input, or the JSON text of the answer), with null for
whatever is missing or does not fit the type. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import pyarrow as pa

from pipeline.job.request import RequestSpec
from pipeline.job.toolschema import OUTPUT_TOOL, forced_tool, read_answer
from pipeline.records import Reply

COLUMN_PREFIX = "out_"
MAX_DEPTH = 8  # nesting past this is kept as JSON text (and ends cyclic-looking schemas)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
Kind = Literal["string", "int", "float", "bool", "json", "list", "struct"]


# --------------------------------------------------------------------------- validation


# --------------------------------------------------------------------------- typed columns


@dataclass(frozen=True, slots=True)
class Shape:
    """What one value becomes in Arrow: a scalar kind, a list of ``item``, or a struct of ``fields``."""

    kind: Kind
    item: Shape | None = None
    fields: tuple[tuple[str, Shape], ...] = ()

    def arrow_type(self) -> pa.DataType:
        """The Arrow type of this shape."""
        if self.kind == "list":
            assert self.item is not None
            return pa.list_(self.item.arrow_type())
        if self.kind == "struct":
            return pa.struct([pa.field(name, shape.arrow_type()) for name, shape in self.fields])
        return _SCALARS[self.kind]

    def convert(self, value: Any) -> Any:
        """``value`` as this shape's Python form for Arrow, or None when it does not fit."""
        if value is None:
            return None
        kind = self.kind
        if kind == "json":
            return json.dumps(value, ensure_ascii=False)
        if kind == "string":
            return value if isinstance(value, str) else None
        if kind == "bool":
            return value if isinstance(value, bool) else None
        if kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            ok = isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
            return value if ok else None
        if kind == "float":
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if kind == "list":
            assert self.item is not None
            return [self.item.convert(item) for item in value] if isinstance(value, list) else None
        if not isinstance(value, dict):
            return None
        return {name: shape.convert(value.get(name)) for name, shape in self.fields}


_SCALARS: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "json": pa.string(),
}
_JSON = Shape("json")
_TYPE_KINDS: dict[str, Kind] = {"string": "string", "integer": "int", "number": "float", "boolean": "bool"}


def shape_of(schema: object, depth: int = 0) -> Shape:
    """The column shape for a JSON Schema: typed where the schema allows one type, else JSON text."""
    if not isinstance(schema, dict) or "$ref" in schema or depth > MAX_DEPTH:
        return _JSON
    if isinstance(schema.get("allOf"), list):
        return shape_of(_merge_all_of(schema), depth)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            base = {k: v for k, v in schema.items() if k != key}
            shapes = {
                shape_of({**base, **option}, depth)
                for option in options
                if isinstance(option, dict) and option.get("type") != "null"
            }
            return shapes.pop() if len(shapes) == 1 else _JSON
    if "const" in schema:
        return _shape_of_values([schema["const"]])
    if isinstance(schema.get("enum"), list):
        return _shape_of_values(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = {k for k in kind if k != "null"}
        if kinds == {"integer", "number"}:
            return Shape("float")
        if len(kinds) != 1:
            return _JSON
        kind = kinds.pop()
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind in _TYPE_KINDS:
        return Shape(_TYPE_KINDS[kind])
    if kind == "array":
        items = schema.get("items")
        return Shape("list", item=shape_of(items, depth + 1) if isinstance(items, dict) else _JSON)
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            return _JSON  # a free-form object has no columns to give it
        return Shape("struct", fields=tuple((str(n), shape_of(s, depth + 1)) for n, s in properties.items()))
    return _JSON


def _shape_of_values(values: list[Any]) -> Shape:
    present = [value for value in values if value is not None]
    if present and all(isinstance(v, str) for v in present):
        return Shape("string")
    if present and all(isinstance(v, bool) for v in present):
        return Shape("bool")
    numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in present]
    if present and all(numbers):
        return Shape("int") if all(isinstance(v, int) for v in present) else Shape("float")
    return _JSON


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    properties = dict(merged.get("properties") or {})
    for part in schema["allOf"]:
        if isinstance(part, dict):
            properties.update(part.get("properties") or {})
            merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
    if properties:
        merged["properties"] = properties
    return merged


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """The typed columns of a structured answer: ``(column name, property, shape)`` in schema order.

    The values come from the input of ``tool``'s first call, else (``text``) from the answer's JSON text.
    """

    tool: str
    columns: tuple[tuple[str, str, Shape], ...]
    text: bool = False

    @property
    def names(self) -> frozenset[str]:
        """The column names, which input columns must not take."""
        return frozenset(name for name, _, _ in self.columns)

    def fields(self) -> list[pa.Field]:
        """Arrow fields for the columns (all nullable: a failed row has no values)."""
        return [pa.field(name, shape.arrow_type()) for name, _, shape in self.columns]

    def values(self, reply: Reply | None) -> dict[str, Any]:
        """The columns' values from ``reply``'s structured answer (null where absent or unfit)."""
        answer: Any = None
        if reply is not None:
            try:
                answer = read_answer(reply, tool=self.tool or None, text=self.text)
            except ValueError:
                answer = None
        if not isinstance(answer, dict):
            answer = {}
        return {name: shape.convert(answer.get(prop)) for name, prop, shape in self.columns}

    def to_json(self) -> str:
        """The plan as text that ``plan_from_json`` reads back (kept in the journal schema's metadata)."""
        columns = [[name, prop, _shape_json(shape)] for name, prop, shape in self.columns]
        return json.dumps({"tool": self.tool, "columns": columns, "text": self.text})


def column_plan(request: RequestSpec) -> ColumnPlan | None:
    """The typed columns of a job's structured answer, or None when it asks for none."""
    if request.output_schema is not None:
        return _plan(OUTPUT_TOOL, request.output_schema, text=True)
    if request.output_config is not None and request.output_config.format is not None:
        return _plan("", request.output_config.format.json_schema, text=True)
    name = forced_tool(request)
    tool = next((t for t in request.tools if t.name == name), None)
    if tool is None:
        return None
    return _plan(tool.name, tool.input_schema, text=False)


def _plan(tool: str, schema: dict[str, Any], *, text: bool) -> ColumnPlan:
    top = shape_of(schema)
    if top.kind != "struct":
        return ColumnPlan(tool, (), text=text)
    columns = tuple((COLUMN_PREFIX + prop, prop, shape) for prop, shape in top.fields)
    return ColumnPlan(tool, columns, text=text)


@lru_cache(maxsize=16)
def plan_from_json(text: str) -> ColumnPlan:
    """A plan from ``ColumnPlan.to_json`` (cached: every journalled row asks for it)."""
    raw = json.loads(text)
    columns = tuple((n, p, _shape_from_json(s)) for n, p, s in raw["columns"])
    return ColumnPlan(raw["tool"], columns, text=bool(raw.get("text", False)))


def _shape_json(shape: Shape) -> Any:
    if shape.kind == "list":
        assert shape.item is not None
        return ["list", _shape_json(shape.item)]
    if shape.kind == "struct":
        return ["struct", [[name, _shape_json(s)] for name, s in shape.fields]]
    return shape.kind


def _shape_from_json(raw: Any) -> Shape:
    if isinstance(raw, str):
        return Shape(raw)  # type: ignore[arg-type]
    if raw[0] == "list":
        return Shape("list", item=_shape_from_json(raw[1]))
    return Shape("struct", fields=tuple((name, _shape_from_json(s)) for name, s in raw[1]))
