"""Tool inputs made up from a tool's JSON Schema: deterministic for a seed, and valid against the schema.

Covers what tool schemas use in practice: ``type`` (or a list of types), ``enum``, ``const``,
``anyOf``/``oneOf`` (first option), ``allOf`` (merged), numeric bounds and ``multipleOf``, string
lengths and common formats, array sizes and ``uniqueItems``, and nested objects. ``pattern`` and
``$ref`` are not interpreted.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from typing import Any

WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper")
FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "12:00:00",
    "email": "sandbox@example.com",
    "uri": "https://example.com/sandbox",
    "url": "https://example.com/sandbox",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
}
MAX_DEPTH = 8  # past this, only required properties and empty containers, so cyclic schemas end


def synthesise(schema: object, rng: random.Random, depth: int = 0) -> Any:
    """A value that validates against ``schema``, drawn from ``rng``."""
    if not isinstance(schema, dict):
        return rng.choice(WORDS)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            # prefer a non-null option so the value carries information
            chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
            return synthesise({**_without(schema, key), **chosen}, rng, depth)
    if isinstance(schema.get("allOf"), list):
        return synthesise(_merge_all_of(schema), rng, depth)
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, rng, depth)
    if kind == "array":
        return _array(schema, rng, depth)
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _without(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != key}


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    merged = _without(schema, "allOf")
    properties = dict(merged.get("properties", {}))
    required = list(merged.get("required", []))
    for part in schema["allOf"]:
        if isinstance(part, dict):
            properties.update(part.get("properties", {}))
            required.extend(name for name in part.get("required", []) if name not in required)
            merged.update({k: v for k, v in part.items() if k not in ("properties", "required")})
    if properties:
        merged["properties"] = properties
    if required:
        merged["required"] = required
    return merged


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _object(schema: dict[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = [name for name in schema.get("required", []) if isinstance(name, str)]
    names = list(properties) if depth < MAX_DEPTH else []
    names += [name for name in required if name not in names]
    return {name: synthesise(properties.get(name, {"type": "string"}), rng, depth + 1) for name in names}


def _array(schema: dict[str, Any], rng: random.Random, depth: int) -> list[Any]:
    low = int(schema.get("minItems", 1 if depth < MAX_DEPTH else 0))
    high = int(schema.get("maxItems", max(low, 3)))
    high = min(high, max(low, 3))
    if high < low:
        return []
    count = rng.randint(min(low, high), high)
    items = schema.get("items", {})
    values: list[Any] = []
    seen: set[str] = set()
    # uniqueItems: a few extra draws, then give up on the optional extras (never below minItems)
    for _ in range(count * 4 if schema.get("uniqueItems") else count):
        value = synthesise(items, rng, depth + 1)
        key = json.dumps(value, sort_keys=True)
        if schema.get("uniqueItems") and key in seen:
            continue
        seen.add(key)
        values.append(value)
        if len(values) == count:
            break
    return values


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low is exclusive, high is exclusive), reading draft-4 and later spellings."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_ex = high_ex = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_low, bool):  # draft 4: a flag on minimum
        low_ex = ex_low
    elif isinstance(ex_low, (int, float)) and (low is None or ex_low >= low):
        low, low_ex = ex_low, True
    if isinstance(ex_high, bool):
        high_ex = ex_high
    elif isinstance(ex_high, (int, float)) and (high is None or ex_high <= high):
        high, high_ex = ex_high, True
    return low, high, low_ex, high_ex


def _integer(schema: dict[str, Any], rng: random.Random) -> int:
    low, high, low_ex, high_ex = _bounds(schema)
    lo = None if low is None else (math.floor(low) + 1 if low_ex else math.ceil(low))
    hi = None if high is None else (math.ceil(high) - 1 if high_ex else math.floor(high))
    lo, hi = _default_range(lo, hi)
    step = schema.get("multipleOf")
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        first, last = math.ceil(lo / step), math.floor(hi / step)
        return rng.randint(first, last) * step if first <= last else lo
    return rng.randint(lo, hi) if lo <= hi else lo


def _default_range(lo: int | None, hi: int | None) -> tuple[int, int]:
    if lo is None and hi is None:
        return (0, 100)
    if lo is None:
        assert hi is not None
        return (hi - 100, hi)
    if hi is None:
        return (lo, lo + 100)
    return (lo, hi)


def _number(schema: dict[str, Any], rng: random.Random) -> float:
    low, high, low_ex, high_ex = _bounds(schema)
    step = schema.get("multipleOf")
    if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
        first = 0 if low is None else math.ceil(low / step)
        first += 1 if low is not None and low_ex and first * step <= low else 0
        last = first + 10 if high is None else math.floor(high / step)
        last -= 1 if high is not None and high_ex and last * step >= high else 0
        return float(rng.randint(first, last) * step if first <= last else first * step)
    lo = 0.0 if low is None else float(low)
    hi = lo + 100.0 if high is None else float(high)
    if low is None and high is not None:
        lo = hi - 100.0
    value = round(lo + (hi - lo) * rng.random(), 2)
    # rounding may land on an excluded bound: fall back to the midpoint, which never does
    if value < lo or value > hi or (low_ex and value == lo) or (high_ex and value == hi):
        value = (lo + hi) / 2
    return value


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    value = FORMATS.get(fmt, rng.choice(WORDS)) if isinstance(fmt, str) else rng.choice(WORDS)
    min_length = schema.get("minLength", 0)
    max_length = schema.get("maxLength")
    if isinstance(min_length, int) and len(value) < min_length:
        value = (value * (min_length // max(len(value), 1) + 1))[: max(min_length, len(value))]
    if isinstance(max_length, int) and len(value) > max_length:
        value = value[:max_length]
    return value


def break_input(schema: object, value: Any) -> Any:
    """``value`` made to break ``schema``: a required property dropped, else one of the wrong type.

    Returns ``value`` unchanged when the schema constrains nothing that can be broken.
    """
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return value
    required = [name for name in schema.get("required", []) if isinstance(name, str) and name in value]
    if required:
        return {k: v for k, v in value.items() if k != required[0]}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    for name, sub in properties.items():
        if name in value and isinstance(sub, dict) and (sub.get("type") or sub.get("enum")):
            # a list is never a string, number, boolean, object or enum member: wrong for any of them
            wrong: Any = ["not", "this"] if sub.get("type") != "array" else "not a list"
            return {**value, name: wrong}
    return value
