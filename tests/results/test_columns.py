"""Forced tool calls as typed columns, checked against their schema, resent while they break it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from jobkit import invoke, text_job
from pipeline.errors import SpecError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import parse_job
from pipeline.job.toolschema import schema_violation
from pipeline.records import Reply, ToolCall, Usage
from pipeline.results.columns import column_plan, shape_of
from pipeline.sandbox import SandboxConfig, running_sandbox
from pipeline.sandbox.toolinput import break_input

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category", "score", "tags", "box"],
    "properties": {
        "category": {"type": "string", "enum": ["cat", "dog", "other"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "has_text": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "box": {
            "type": "object",
            "required": ["x", "y"],
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}, "label": {"type": "string"}},
        },
        "extra": {"type": "object"},
        "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
}
TOOL = {"name": "annotate", "input_schema": SCHEMA}
FORCED = {"type": "tool", "name": "annotate"}


def _request(**settings: Any) -> RequestSpec:
    return RequestSpec(model="m", max_tokens=100, prompt="p", tools=[TOOL], tool_choice=FORCED, **settings)


def _reply(tool_input: Any, name: str = "annotate") -> Reply:
    call = ToolCall("toolu_1", name, json.dumps(tool_input))
    return Reply("m", "", (call,), "tool_use", Usage(10, 5), "msg_1", "req_1")


GOOD = {"category": "cat", "score": 3, "tags": ["a"], "box": {"x": 1, "y": 2}}


def test_column_types_follow_the_schema() -> None:
    """Each property becomes out_<name> with the Arrow type its schema allows, JSON text when none."""
    plan = column_plan(_request())
    assert plan is not None
    types = {field.name: field.type for field in plan.fields()}
    assert types == {
        "out_category": pa.string(),
        "out_score": pa.int64(),
        "out_confidence": pa.float64(),
        "out_has_text": pa.bool_(),
        "out_tags": pa.list_(pa.string()),
        "out_box": pa.struct([("x", pa.int64()), ("y", pa.int64()), ("label", pa.string())]),
        "out_extra": pa.string(),
        "out_maybe": pa.string(),
    }


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"enum": [1, 2, 3]}, pa.int64()),
        ({"enum": [1, 2.5]}, pa.float64()),
        ({"type": ["integer", "number"]}, pa.float64()),
        ({"type": ["string", "integer"]}, pa.string()),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, pa.string()),
        ({"const": True}, pa.bool_()),
        ({"type": "array"}, pa.list_(pa.string())),
        ({"$ref": "#/defs/x"}, pa.string()),
    ],
)
def test_shapes_of_unusual_schemas(schema: dict[str, Any], expected: pa.DataType) -> None:
    """Enums by their values, numeric unions as float64, anything ambiguous as JSON text."""
    assert shape_of(schema).arrow_type() == expected


def test_no_plan_without_a_forced_tool() -> None:
    """tool_choice auto or any adds no columns: which tool answers is not known up front."""
    request = RequestSpec(model="m", max_tokens=10, prompt="p", tools=[TOOL], tool_choice={"type": "any"})
    assert column_plan(request) is None


def test_values_that_do_not_fit_become_null() -> None:
    """A value of the wrong type is null in its column; the rest of the row keeps its values."""
    plan = column_plan(_request())
    assert plan is not None
    values = plan.values(_reply({"category": 7, "score": 2.0, "tags": ["a", 3], "box": {"x": "1", "y": 2}}))
    assert values["out_category"] is None
    assert values["out_score"] == 2
    assert values["out_tags"] == ["a", None]
    assert values["out_box"] == {"x": None, "y": 2, "label": None}
    assert values["out_extra"] is None
    assert plan.values(None) == dict.fromkeys(plan.names)


def test_schema_violation_names_the_problem() -> None:
    """A conforming input passes; a wrong enum, a missing property or an absent call are named."""
    request = _request()
    assert schema_violation(request, _reply(GOOD)) is None
    wrong_enum = schema_violation(request, _reply({**GOOD, "category": "bird"}))
    assert wrong_enum == "annotate input at $.category: 'bird' is not one of ['cat', 'dog', 'other']"
    missing = schema_violation(request, _reply({k: v for k, v in GOOD.items() if k != "box"}))
    assert missing is not None
    assert "'box' is a required property" in missing
    no_call = Reply("m", "hello", (), "max_tokens", Usage(), None, None)
    expected = "the reply has no annotate tool call (stop_reason max_tokens)"
    assert schema_violation(request, no_call) == expected
    unforced = RequestSpec(model="m", max_tokens=10, prompt="p", tools=[TOOL])
    assert "not a declared tool" in (schema_violation(unforced, _reply(GOOD, name="other")) or "")


def test_sandbox_breaks_tool_input_on_request() -> None:
    """The sandbox's broken tool input really fails validation (required dropped, or wrong type)."""
    assert schema_violation(_request(), _reply(break_input(SCHEMA, GOOD))) is not None
    optional_only = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert break_input(optional_only, {"a": "x"}) == {"a": ["not", "this"]}


def test_invalid_input_schema_is_refused_at_load(tmp_path: Path) -> None:
    """A tool whose input_schema is not valid JSON Schema is one SpecError naming where."""
    tool = {"name": "t", "input_schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}
    raw = {"name": "j", "input": "in.csv", "output": "out"}
    raw["request"] = {"model": "m", "max_tokens": 5, "prompt": "p", "tools": [tool]}  # type: ignore[assignment]
    with pytest.raises(SpecError, match=r"not a valid JSON Schema at properties/a/type"):
        parse_job(raw, tmp_path / "job.toml")


def test_schema_attempts_do_not_change_the_fingerprint() -> None:
    """Raising schema_attempts re-sends no finished row."""
    assert _request(schema_attempts=1).fingerprint() == _request(schema_attempts=5).fingerprint()


def _tool_job(tmp_path: Path, rows: int = 8, **request: Any) -> Path:
    return text_job(tmp_path, rows=rows, tools=[TOOL], tool_choice=FORCED, **request)


def test_typed_columns_in_results(tmp_path: Path) -> None:
    """Through the CLI, results.parquet carries the tool input as typed out_* columns."""
    job = _tool_job(tmp_path)
    with running_sandbox() as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame.schema["out_category"] == pl.String
    assert frame.schema["out_score"] == pl.Int64
    assert frame.schema["out_tags"] == pl.List(pl.String)
    assert frame.schema["out_box"] == pl.Struct({"x": pl.Int64, "y": pl.Int64, "label": pl.String})
    columns = frame.columns
    # typed columns sit between the input columns and the result columns
    assert columns.index("topic") < columns.index("out_category") < columns.index("model")
    for row in frame.iter_rows(named=True):
        tool_input = json.loads(row["tool_calls"][0]["input"])
        assert row["out_category"] == tool_input["category"]
        assert row["out_score"] == tool_input["score"]
        assert row["out_tags"] == tool_input["tags"]
        assert row["out_box"]["x"] == tool_input["box"]["x"]
        assert row["out_extra"] == json.dumps(tool_input["extra"])


def test_violations_are_resent_then_recorded(tmp_path: Path) -> None:
    """A reply that always breaks the schema is sent schema_attempts times, then is a schema_violation row."""
    job = _tool_job(tmp_path, rows=4, schema_attempts=2)
    with running_sandbox(SandboxConfig(tool_violation_rate=1.0)) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert result.exit_code == 1
    assert stats["answers_ok"] == 8  # two paid answers per row
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["status"]) == {"error"}
    assert set(frame["error_type"]) == {"schema_violation"}
    assert all("is a required property" in message for message in frame["error_message"])
    assert set(frame["attempts"]) == {2}
    # the tokens of both paid answers are kept on the row
    assert (frame["input_tokens"] > 0).all()
    assert frame["input_tokens"].sum() > 0
    assert "schema_violation 4" in result.output


def test_some_violations_recover_on_resend(tmp_path: Path) -> None:
    """With a seeded share of broken answers, resends make every row conform and add up tokens."""
    job = _tool_job(tmp_path, rows=24, schema_attempts=20)  # 0.3**20: no row fails every time
    with running_sandbox(SandboxConfig(tool_violation_rate=0.3, seed=7)) as sandbox:
        result = invoke(["run", str(job), "--base-url", sandbox.base_url])
        stats = sandbox.stats()
    assert result.exit_code == 0, result.output
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(frame["status"]) == {"ok"}
    assert frame["attempts"].sum() == stats["answers_ok"] > 24
    resent = frame.filter(pl.col("attempts") > 1)
    single = frame.filter(pl.col("attempts") == 1)
    assert resent.height
    assert single.height
    # a resent row was paid for each time: its input tokens are a multiple of one request's
    one_request = single["input_tokens"][0]
    for attempts, tokens in resent.select("attempts", "input_tokens").iter_rows():
        assert tokens == pytest.approx(attempts * one_request, rel=0.05)


def test_input_column_clashing_with_a_tool_column_is_renamed(tmp_path: Path) -> None:
    """An input column called out_category becomes input_out_category; the tool's column keeps the name."""
    job = _tool_job(tmp_path, rows=3)
    csv = tmp_path / "input.csv"
    csv.write_text("id,topic,out_category\n0,a,mine\n1,b,mine\n2,c,\n", encoding="utf-8")
    with running_sandbox() as sandbox:
        assert invoke(["run", str(job), "--base-url", sandbox.base_url]).exit_code == 0
    frame = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert frame["input_out_category"].to_list()[:2] == ["mine", "mine"]
    assert set(frame["out_category"]) <= {"cat", "dog", "other"}
