"""Which replies are a success: stop reasons first, then the schema of a structured answer."""

from __future__ import annotations

import json
from typing import Any

from pipeline.job.request import RequestSpec
from pipeline.records import Reply, StopDetails, ToolCall, Usage
from pipeline.results.columns import column_plan
from pipeline.results.verdict import judge

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["n"],
    "properties": {"n": {"type": "integer", "minimum": 1}, "s": {"type": "string"}},
}


def _reply(text: str = "", stop: str = "end_turn", calls: tuple[ToolCall, ...] = (), **extra: Any) -> Reply:
    return Reply("m", text, calls, stop, Usage(10, 7), "msg", "req", **extra)


def test_stop_reasons_that_are_not_an_answer_are_errors_of_that_type_and_never_resent() -> None:
    """max_tokens, refusal and model_context_window_exceeded are final errors, whatever the text says."""
    request = RequestSpec(model="m", max_tokens=300, prompt="p", output_schema=SCHEMA)
    cut = judge(request, _reply('{"n": 1', "max_tokens"))
    assert cut is not None
    assert (cut.error_type, cut.resend) == ("max_tokens", False)
    assert cut.message.startswith("the answer was cut off at max_tokens 300 (7 output tokens paid)")
    details = StopDetails("refusal", "cyber", "It could enable cyber harm.")
    refused = judge(request, _reply("Hello..", "refusal", stop_details=details))
    assert refused is not None
    assert refused.message == (
        "the model declined to answer (refusal, category cyber): It could enable cyber harm.;"
        " rerun with --retry-errors refusal to send it again"
    )
    full = judge(None, _reply("x", "model_context_window_exceeded"))
    assert full is not None
    assert full.error_type == "model_context_window_exceeded"
    assert judge(None, _reply("x")) is None


def test_a_structured_answer_is_checked_against_the_original_schema_in_text_or_tool() -> None:
    """The JSON text or the answer tool input must validate, with constraints the API cannot enforce."""
    request = RequestSpec(model="m", max_tokens=300, prompt="p", output_schema=SCHEMA)
    assert judge(request, _reply('{"n": 3, "s": "x"}')) is None
    low = judge(request, _reply('{"n": 0}'))
    assert low is not None
    assert (low.error_type, low.resend) == ("schema_violation", True)
    assert low.message == "answer at $.n: 0 is less than the minimum of 1"
    not_json = judge(request, _reply("Sure! Here it is"))
    assert not_json is not None
    assert not_json.message == "the reply text is not JSON: 'Sure! Here it is' (stop_reason end_turn)"
    tool = _reply(calls=(ToolCall("t1", "structured_output", json.dumps({"s": "no n"})),), stop="tool_use")
    broken = judge(request, tool)
    assert broken is not None
    assert broken.message == "structured_output input at $: 'n' is a required property"
    # both mechanisms fill the same columns
    plan = column_plan(request)
    assert plan is not None
    ok_tool = _reply(calls=(ToolCall("t1", "structured_output", '{"n": 2, "s": "a"}'),), stop="tool_use")
    assert plan.values(_reply('{"n": 2, "s": "a"}')) == plan.values(ok_tool) == {"out_n": 2, "out_s": "a"}
