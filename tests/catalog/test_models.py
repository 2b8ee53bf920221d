"""The model table: one entry per model, each with its sources; ids match exactly, never by prefix."""

from __future__ import annotations

import pytest

from pipeline.catalog.models import model_facts, model_table
from pipeline.job.request import RequestSpec
from pipeline.payloads import tokens as estimator
from pipeline.sandbox import tokens as sandbox_tokens


def test_every_entry_names_its_public_sources_and_ids_are_unique() -> None:
    """Each model cites the public pages it was read from; no id belongs to two entries."""
    table = model_table()
    assert table.read_on.startswith("20")
    seen: set[str] = set()
    for facts in table.models:
        assert facts.sources, facts.name
        assert all(s.startswith(("https://", "anthropic-sdk-python")) for s in facts.sources), facts.name
        assert not seen & set(facts.ids), facts.name
        seen |= set(facts.ids)


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("claude-haiku-4-5", "claude-haiku-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
        ("claude-sonnet-5-20260601", "claude-sonnet-5"),
        ("CLAUDE-OPUS-5", "claude-opus-5"),
    ],
)
def test_ids_match_exactly_without_a_date_or_in_the_aimlapi_spelling(model: str, name: str) -> None:
    """An alias, a dated snapshot and the AI/ML API spelling all find the same entry."""
    assert model_facts(model).name == name


@pytest.mark.parametrize("model", ["claude-opus-5-9", "claude-opus", "llama3", "claude-haiku-4"])
def test_an_unknown_id_gets_the_defaults_not_a_neighbour(model: str) -> None:
    """A longer or shorter id is not a known model: the defaults apply, with no price or cache minimum."""
    facts = model_facts(model)
    assert not facts.known
    assert (facts.context_window, facts.image_long_edge, facts.min_cache_tokens) == (200_000, 1568, None)


def test_the_job_the_estimator_and_the_sandbox_read_the_same_facts() -> None:
    """Context window, streaming cap, image tier and cache minimum come from one table for everyone."""
    for facts in model_table().models:
        model = facts.ids[0]
        request = RequestSpec(model=model, max_tokens=facts.nonstreaming_max_tokens + 1, prompt="x")
        assert request.streaming
        assert request.input_token_limit == facts.context_window
        assert (
            estimator.newer_tokenizer(model) == sandbox_tokens.new_generation(model) == facts.newer_tokenizer
        )
        assert estimator.min_cacheable_tokens(model) == facts.min_cache_tokens
        if facts.min_cache_tokens is not None:
            assert sandbox_tokens.min_cacheable_tokens(model) == facts.min_cache_tokens
        huge = facts.image_long_edge * 3
        assert estimator.image_tokens(huge, huge, model) <= facts.image_max_tokens
        assert sandbox_tokens.image_tokens(huge, huge, model) <= facts.image_max_tokens


def test_every_rule_key_holds_a_value_the_checks_understand() -> None:
    """Sampling, thinking, effort and lifecycle values come from the known sets, for every entry."""
    from pipeline.catalog.models import EFFORT_LEVELS, THINKING_TYPES

    for facts in model_table().models:
        assert facts.sampling in ("any", "temperature_or_top_p", "none"), facts.name
        assert set(facts.thinking) <= set(THINKING_TYPES), facts.name
        assert facts.thinking_default in ("off", "adaptive"), facts.name
        if facts.thinking_default == "adaptive":
            assert "adaptive" in facts.thinking, facts.name
        assert set(facts.effort) <= set(EFFORT_LEVELS), facts.name
        assert facts.thinking_off_max_effort in (None, *facts.effort), facts.name
        assert facts.lifecycle in (None, "active", "deprecated", "retired"), facts.name
        if facts.image_long_edge == 2576:
            assert facts.newer_tokenizer, facts.name  # the high-resolution tier came with Claude 4.7


def test_the_current_lineup_carries_the_rules_the_issue_names() -> None:
    """Fable 5.1 thinks always and forces no tool; Opus 4.7 on refuse sampling; Haiku 4.5 takes one of two."""
    fable = model_facts("claude-fable-5-1")
    assert (fable.thinking, fable.forced_tool, fable.structured_outputs) == (("adaptive",), False, True)
    for model in (
        "claude-opus-4-7",
        "claude-opus-4-8",
        "claude-opus-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
    ):
        assert model_facts(model).sampling == "none", model
    assert model_facts("claude-haiku-4-5").sampling == "temperature_or_top_p"
    assert model_facts("claude-opus-4-7").image_long_edge == 2576
    assert model_facts("claude-opus-4-6").image_long_edge == 1568
    assert model_table().api_versions.takes_sampling("2023-06-01")
    assert not model_table().api_versions.takes_sampling("2026-10-21")


def test_a_typo_in_an_entry_is_an_error_not_a_silently_missing_rule() -> None:
    """An entry with an unknown key does not load: a rule cannot be lost to a misspelling."""
    from pipeline.catalog import models

    base = {"context_window": 1, "nonstreaming_max_tokens": 1, "newer_tokenizer": False}
    with pytest.raises(ValueError, match="unknown keys \\['forced_tools'\\]"):
        models._facts({"ids": ["x"], "forced_tools": False}, base, known=True)
