"""What tokens cost: the price table shipped with the package, a job's override, and usage -> dollars.

Owns: reading ``data/prices.toml`` (with the date it was read and its source), matching a model id
to its price (exact name or name plus a date suffix; an unknown model has no price rather than a
guessed one), and the batch and prompt-cache multipliers. Pure apart from reading the data file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any, Literal

from pipeline.job.spec import PricesSpec
from pipeline.records import Usage

PER_TOKEN = 1e-6  # prices are quoted per million tokens
_DATE_SUFFIX = re.compile(r"-\d{8}$")
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
    """The shipped price table."""

    read_on: str
    source: str
    prices: tuple[tuple[tuple[str, ...], Price], ...]

    def find(self, model: str) -> Price | None:
        """The price of ``model``, or None when the table does not know it (never a guess)."""
        wanted = normalise_model(model)
        for names, price in self.prices:
            if wanted in names:
                return replace(price, model=model)
        undated = _DATE_SUFFIX.sub("", wanted)
        for names, price in self.prices:
            if undated in names:
                return replace(price, model=model)
        return None


def normalise_model(model: str) -> str:
    """``anthropic/claude-sonnet-4.5`` (AI/ML API spelling) -> ``claude-sonnet-4-5``."""
    name = model.strip().lower().removeprefix("anthropic/")
    return name.replace(".", "-")


@cache
def price_book() -> PriceBook:
    """The price table shipped in ``pipeline/data/prices.toml``."""
    text = resources.files("pipeline").joinpath("data/prices.toml").read_text(encoding="utf-8")
    raw: dict[str, Any] = tomllib.loads(text)
    source = f"{raw['source']} (read {raw['read_on']})"
    multipliers = {
        key: float(raw[key])
        for key in (
            "batch_multiplier",
            "cache_write_5m_multiplier",
            "cache_write_1h_multiplier",
            "cache_read_multiplier",
        )
    }
    prices = tuple(
        (
            tuple(entry["names"]),
            Price(
                model=entry["names"][0],
                input=float(entry["input"]),
                output=float(entry["output"]),
                source=source,
                **multipliers,
            ),
        )
        for entry in raw["model"]
    )
    return PriceBook(read_on=str(raw["read_on"]), source=str(raw["source"]), prices=prices)


def price_for(model: str, override: PricesSpec | None = None) -> Price | None:
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
