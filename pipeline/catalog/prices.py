"""What tokens cost: the price table shipped with the package, a job's override, and usage -> dollars.

Owns: a model's price from the model table (``data/models.toml``, with the date it was read and
its source page; an unknown model has no price rather than a guessed one), a job's ``[prices]``
override, and the batch and prompt-cache multipliers. Pure apart from reading the data file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Literal, Protocol

from pipeline.catalog.models import model_table
from pipeline.records import Usage

PER_TOKEN = 1e-6  # prices are quoted per million tokens
CacheTtl = Literal["5m", "1h"]


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million tokens for one model, and where the figures came from."""

    model: str
    input: float
    output: float
    batch_multiplier: float = 0.5
    cache_write_5m_multiplier: float = 1.25
    cache_write_1h_multiplier: float = 2.0
    cache_read_multiplier: float = 0.1
    source: str = ""

    def cost_usd(self, usage: Usage, *, batch: bool = False, cache_ttl: CacheTtl = "5m") -> float:
        """The dollars ``usage`` costs at this price (batch halves every part; caching stacks on it)."""
        scale = self.batch_multiplier if batch else 1.0
        base_in = self.input * scale
        write = self.cache_write_1h_multiplier if cache_ttl == "1h" else self.cache_write_5m_multiplier
        dollars = (
            usage.input_tokens * base_in
            + usage.cache_creation_input_tokens * base_in * write
            + usage.cache_read_input_tokens * base_in * self.cache_read_multiplier
            + usage.output_tokens * self.output * scale
        )
        return dollars * PER_TOKEN


@dataclass(frozen=True, slots=True)
class PriceBook:
    """The shipped prices: every model of the model table that has one."""

    read_on: str
    source: str

    def find(self, model: str) -> Price | None:
        """The price of ``model``, or None when the table does not know it (never a guess)."""
        facts = model_table().find(model)
        if facts is None or facts.price_input is None or facts.price_output is None:
            return None
        multipliers = model_table().multipliers
        read = multipliers["cache_read"]
        if facts.cache_read_price is not None and facts.price_input:
            read = facts.cache_read_price / facts.price_input
        page = next((url for url in facts.sources if "pricing" in url), self.source)
        return Price(
            model=model,
            input=facts.price_input,
            output=facts.price_output,
            batch_multiplier=multipliers["batch"],
            cache_write_5m_multiplier=multipliers["cache_write_5m"],
            cache_write_1h_multiplier=multipliers["cache_write_1h"],
            cache_read_multiplier=read,
            source=f"{page} (read {self.read_on})",
        )


@cache
def price_book() -> PriceBook:
    """The prices shipped in ``pipeline/data/models.toml``."""
    table = model_table()
    return PriceBook(read_on=table.read_on, source=table.multiplier_sources[0])


class PriceOverride(Protocol):
    """A job's own prices (the ``[prices]`` table): dollars per MTok, and optionally the batch share."""

    @property
    def input(self) -> float: ...
    @property
    def output(self) -> float: ...
    @property
    def batch_multiplier(self) -> float | None: ...


def price_for(model: str, override: PriceOverride | None = None) -> Price | None:
    """The job's ``[prices]`` override when it has one, else the shipped price of ``model`` (or None)."""
    if override is None:
        return price_book().find(model)
    price = Price(model, input=override.input, output=override.output, source="the job's [prices] table")
    if override.batch_multiplier is not None:
        price = replace(price, batch_multiplier=override.batch_multiplier)
    return price


def describe_price(price: Price | None, model: str) -> str:
    """One line saying which prices a cost used, or that none is known."""
    if price is None:
        return f"no price known for model {model!r}; set [prices] input and output in the job"
    return f"${price.input:g}/${price.output:g} per MTok in/out for {model}, from {price.source}"
