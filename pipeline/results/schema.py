"""The columns of ``results.parquet``: result fields around the input's own columns and the typed
columns of a structured answer (a forced tool, ``output_schema`` or ``output_config.format``), and
one result as an output row. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from pipeline.job.request import RequestSpec
from pipeline.records import Result
from pipeline.results.columns import ColumnPlan, column_plan, plan_from_json

TOOL_CALL_TYPE = pa.struct([("id", pa.string()), ("name", pa.string()), ("input", pa.string())])


HEAD_FIELDS = [
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
]


TAIL_FIELDS = [
    pa.field("model", pa.string()),
    pa.field("response_text", pa.string()),
    pa.field("thinking", pa.string()),
    pa.field("tool_calls", pa.list_(TOOL_CALL_TYPE)),
    pa.field("stop_reason", pa.string()),
    pa.field("refusal_category", pa.string()),
    pa.field("input_tokens", pa.int64()),
    pa.field("output_tokens", pa.int64()),
    pa.field("cache_creation_input_tokens", pa.int64()),
    pa.field("cache_read_input_tokens", pa.int64()),
    pa.field("message_id", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("shared_request_with", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("latency_ms", pa.float64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("row_index", pa.int64()),
    pa.field("request_fingerprint", pa.string()),
    pa.field("max_tokens", pa.int64()),
    pa.field("row_hash", pa.string()),
]


RESULT_COLUMNS = frozenset(field.name for field in HEAD_FIELDS + TAIL_FIELDS)


# schema metadata key holding the forced tool's typed-column plan (columns.ColumnPlan.to_json)
TOOL_COLUMNS_KEY = b"pipeline.tool_columns"


def output_column(input_column: str, reserved: frozenset[str] = RESULT_COLUMNS) -> str:
    """The name an input column gets in the output: itself, or ``input_<name>`` when it clashes."""
    return f"input_{input_column}" if input_column in reserved else input_column


def output_schema(input_schema: pa.Schema, request: RequestSpec | None = None) -> pa.Schema:
    """Result columns around the input's own columns (types kept as read) and a forced tool's columns.

    Input columns yield: one named like a result column or a tool column (``out_<property>``)
    becomes ``input_<name>``.
    """
    plan = column_plan(request) if request is not None else None
    reserved = RESULT_COLUMNS | plan.names if plan else RESULT_COLUMNS
    inputs = [field.with_name(output_column(field.name, reserved)) for field in input_schema]
    if plan is None:
        return pa.schema(HEAD_FIELDS + inputs + TAIL_FIELDS)
    fields = HEAD_FIELDS + inputs + plan.fields() + TAIL_FIELDS
    return pa.schema(fields, metadata={TOOL_COLUMNS_KEY: plan.to_json().encode()})


def _plan(schema: pa.Schema | None) -> ColumnPlan | None:
    metadata = schema.metadata if schema is not None else None
    text = metadata.get(TOOL_COLUMNS_KEY) if metadata else None
    return plan_from_json(text.decode()) if text else None


def result_record(result: Result, schema: pa.Schema | None = None) -> dict[str, Any]:
    """One output row as a plain dict, keyed by output column names (``schema`` from ``output_schema``)."""
    plan = _plan(schema)
    reserved = RESULT_COLUMNS | plan.names if plan else RESULT_COLUMNS
    record: dict[str, Any] = {"row_id": result.row.row_id, "status": result.status}
    record.update({output_column(name, reserved): value for name, value in result.row.values.items()})
    if plan is not None:
        record.update(plan.values(result.reply))
    reply = result.reply
    usage = reply.usage if reply else None
    record.update(
        model=reply.model if reply else None,
        response_text=reply.text if reply else None,
        thinking=reply.thinking if reply else None,
        tool_calls=[{"id": c.id, "name": c.name, "input": c.input_json} for c in reply.tool_calls]
        if reply
        else [],
        stop_reason=reply.stop_reason if reply else None,
        refusal_category=reply.stop_details.category if reply and reply.stop_details else None,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        cache_creation_input_tokens=usage.cache_creation_input_tokens if usage else None,
        cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
        message_id=reply.message_id if reply else None,
        request_id=reply.request_id if reply else None,
        shared_request_with=result.shared_with,
        attempts=result.attempts,
        latency_ms=result.latency_ms,
        error_type=result.error_type,
        error_message=result.error_message,
        finished_at=result.finished_at,
        row_index=result.row.index,
        request_fingerprint=result.fingerprint,
        max_tokens=result.max_tokens,
        row_hash=result.row.content_hash,
    )
    return record


def column_order(names: Sequence[str]) -> list[str]:
    """Result columns first and last, everything else (input and tool columns) between, as found."""
    head = [field.name for field in HEAD_FIELDS]
    tail = [field.name for field in TAIL_FIELDS]
    middle = [name for name in names if name not in RESULT_COLUMNS]
    return head + middle + [name for name in tail if name in names]
