"""What GET /v1/models says, laid over the table: stated capabilities win, the rest stays the table's."""

from __future__ import annotations

from pipeline.catalog.capabilities import facts_from_model_info
from pipeline.catalog.models import model_facts


def test_an_answer_overrides_what_it_states_and_keeps_the_rest() -> None:
    """Limits, thinking types, effort levels and flags replace the table's; sampling and prices stay."""
    types = {"adaptive": {"supported": True}, "enabled": {"supported": False}}
    types |= {"disabled": {"supported": True}, "between_tools": {"supported": False}}
    effort = {"supported": True, "low": {"supported": True}, "medium": {"supported": True}}
    effort |= {"high": {"supported": True}, "max": {"supported": False}}
    info = {
        "id": "claude-opus-4-6",
        "lifecycle": "deprecated",
        "retires_at": "2027-02-01T00:00:00Z",
        "max_input_tokens": 500_000,
        "max_tokens": 32_000,
        "capabilities": {
            "thinking": {"supported": True, "types": types},
            "effort": effort,
            "structured_outputs": {"supported": False},
            "batch": {"supported": False},
        },
    }
    facts = facts_from_model_info(info, "GET /v1/models/claude-opus-4-6 at http://x")
    table = model_facts("claude-opus-4-6")
    assert (facts.context_window, facts.max_output) == (500_000, 32_000)
    assert facts.thinking == ("adaptive", "disabled")
    assert facts.effort == ("low", "medium", "high")  # no xhigh key at all: not supported
    assert (facts.structured_outputs, facts.batch) == (False, False)
    assert (facts.lifecycle, facts.retires_at) == ("deprecated", "2027-02-01")
    assert (facts.sampling, facts.price_input, facts.image_long_edge) == (
        table.sampling,
        table.price_input,
        table.image_long_edge,
    )
    assert facts.source == "GET /v1/models/claude-opus-4-6 at http://x"


def test_a_partial_or_odd_answer_changes_nothing_it_does_not_state() -> None:
    """Missing or malformed capability leaves keep the table's values; an unknown id becomes known."""
    table = model_facts("claude-sonnet-5-5")
    odd = facts_from_model_info(
        {
            "id": "claude-sonnet-5-5",
            "max_tokens": "many",
            "capabilities": {"thinking": {"types": {"adaptive": 1}}},
        },
        "x",
    )
    assert (odd.thinking, odd.max_output, odd.effort) == (table.thinking, table.max_output, table.effort)
    new = facts_from_model_info({"id": "claude-zeta-1", "max_tokens": 9000}, "x")
    assert new.known
    assert (new.ids, new.max_output, new.sampling) == (("claude-zeta-1",), 9000, "any")
