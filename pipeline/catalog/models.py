"""What each model is: the one table of model facts, shipped as data (``pipeline/data/models.toml``).

Owns: reading the table (every entry with the public pages it was read from and the date), matching
a model id to its entry (exact, without a date suffix, or in the AI/ML API spelling), and the
defaults for ids the table does not know. The job checks, the token estimators (the pipeline's and
the sandbox's, which stay separate on purpose) and the price table all read their facts here.
Pure apart from reading the data file once.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

_DATE_SUFFIX = re.compile(r"-\d{8}$")


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """One model's facts (see the keys in ``data/models.toml``); ``known`` is False for the defaults."""

    ids: tuple[str, ...]
    known: bool
    context_window: int
    nonstreaming_max_tokens: int
    newer_tokenizer: bool
    image_long_edge: int
    image_max_tokens: int
    max_output: int | None = None
    min_cache_tokens: int | None = None
    price_input: float | None = None
    price_output: float | None = None
    cache_read_price: float | None = None  # dollars per MTok when not the usual multiplier of input
    sources: tuple[str, ...] = ()
    pdf_input: bool = True

    @property
    def name(self) -> str:
        """The entry's first id, the name it is shown by."""
        return self.ids[0] if self.ids else "unknown model"


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Every known model, the defaults for the others, and the price multipliers."""

    read_on: str
    default: ModelFacts
    models: tuple[ModelFacts, ...]
    multipliers: dict[str, float]
    multiplier_sources: tuple[str, ...]

    def find(self, model: str) -> ModelFacts | None:
        """The entry for ``model``, or None when the table does not know it (never a guess by prefix)."""
        wanted = normalise_model(model)
        for candidate in (wanted, _DATE_SUFFIX.sub("", wanted)):
            for facts in self.models:
                if candidate in facts.ids:
                    return facts
        return None

    def facts(self, model: str) -> ModelFacts:
        """The entry for ``model``, or the defaults (``known`` False) when there is none."""
        return self.find(model) or self.default


def normalise_model(model: str) -> str:
    """``anthropic/claude-sonnet-4.5`` (AI/ML API spelling) -> ``claude-sonnet-4-5``."""
    name = model.strip().lower().removeprefix("anthropic/")
    return name.replace(".", "-")


@cache
def model_table() -> ModelTable:
    """The table shipped in ``pipeline/data/models.toml``, read once."""
    text = resources.files("pipeline").joinpath("data/models.toml").read_text(encoding="utf-8")
    raw: dict[str, Any] = tomllib.loads(text)
    base = raw["default"]
    default = _facts({**base, "ids": []}, base, known=False)
    multipliers = {key: float(value) for key, value in raw["multipliers"].items() if key != "sources"}
    return ModelTable(
        read_on=str(raw["read_on"]),
        default=default,
        models=tuple(_facts(entry, base, known=True) for entry in raw["model"]),
        multipliers=multipliers,
        multiplier_sources=tuple(raw["multipliers"].get("sources", ())),
    )


def model_facts(model: str) -> ModelFacts:
    """Shortcut: ``model_table().facts(model)``."""
    return model_table().facts(model)


def _facts(entry: dict[str, Any], base: dict[str, Any], *, known: bool) -> ModelFacts:
    price = entry.get("price") or {}
    return ModelFacts(
        ids=tuple(entry["ids"]),
        known=known,
        context_window=int(entry.get("context_window", base["context_window"])),
        nonstreaming_max_tokens=int(entry.get("nonstreaming_max_tokens", base["nonstreaming_max_tokens"])),
        newer_tokenizer=bool(entry.get("newer_tokenizer", base["newer_tokenizer"])),
        image_long_edge=int(entry.get("image_long_edge", base["image_long_edge"])),
        image_max_tokens=int(entry.get("image_max_tokens", base["image_max_tokens"])),
        max_output=entry.get("max_output"),
        min_cache_tokens=entry.get("min_cache_tokens"),
        price_input=price.get("input"),
        price_output=price.get("output"),
        cache_read_price=price.get("cache_read"),
        sources=tuple(entry.get("sources", ())),
        pdf_input=bool(entry.get("pdf_input", base.get("pdf_input", True))),
    )
