"""Prices: the shipped table, model matching, job overrides and the batch and cache multipliers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.catalog.prices import price_book, price_for
from pipeline.job.spec import parse_job
from pipeline.records import Usage

MTOK = 1_000_000


def test_shipped_table_says_when_and_where_it_was_read() -> None:
    """The price data carries the date it was read and its source."""
    book = price_book()
    assert book.read_on.startswith("20")
    assert book.source.startswith("https://platform.claude.com/docs/")


@pytest.mark.parametrize(
    ("model", "dollars_in", "dollars_out"),
    [
        ("claude-haiku-4-5", 1.0, 5.0),
        ("claude-haiku-4-5-20251001", 1.0, 5.0),
        ("anthropic/claude-sonnet-4.5", 3.0, 15.0),
        ("claude-opus-4-5-20251101", 5.0, 25.0),
        ("claude-opus-4-20250514", 15.0, 75.0),
        ("claude-fable-5", 10.0, 50.0),
    ],
)
def test_models_match_by_name_or_dated_name(model: str, dollars_in: float, dollars_out: float) -> None:
    """A model id matches its family exactly or with a date suffix, never a longer family name."""
    price = price_for(model)
    assert price is not None
    assert (price.input, price.output) == (dollars_in, dollars_out)


@pytest.mark.parametrize("model", ["claude-mythos-9", "gpt-4o", "claude-opus-4-9", "llama3"])
def test_unknown_model_has_no_price(model: str) -> None:
    """A model the table does not list gets no price rather than a neighbour's."""
    assert price_for(model) is None


def test_cost_applies_batch_and_cache_multipliers() -> None:
    """Cache writes cost 1.25x input (2x for 1h), reads 0.1x, and batch halves everything."""
    price = price_for("claude-sonnet-4-5")
    assert price is not None
    usage = Usage(
        input_tokens=MTOK, output_tokens=MTOK, cache_creation_input_tokens=MTOK, cache_read_input_tokens=MTOK
    )
    assert price.cost_usd(usage) == pytest.approx(3 + 15 + 3.75 + 0.30)
    assert price.cost_usd(usage, batch=True) == pytest.approx((3 + 15 + 3.75 + 0.30) / 2)
    assert price.cost_usd(usage, cache_ttl="1h") == pytest.approx(3 + 15 + 6 + 0.30)


def test_job_prices_override_the_table(tmp_path: Path) -> None:
    """A job's [prices] table prices a model the table lacks, with the default batch discount."""
    spec = parse_job(
        {
            "name": "x",
            "input": "in.csv",
            "output": "out",
            "request": {"model": "my-local-model", "max_tokens": 10, "prompt": "{a}"},
            "prices": {"input": 0.2, "output": 0.4},
        },
        tmp_path / "job.toml",
    )
    price = price_for(spec.request.model, spec.prices)
    assert price is not None
    assert price.cost_usd(Usage(MTOK, MTOK)) == pytest.approx(0.6)
    assert price.cost_usd(Usage(MTOK, MTOK), batch=True) == pytest.approx(0.3)
    assert "[prices]" in price.source
