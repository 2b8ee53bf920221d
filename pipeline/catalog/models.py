"""What each model is: the one table of model facts, shipped as data (``pipeline/data/models.toml``).

Owns: reading the table (every entry with the public pages it was read from and the date), matching
a model id to its entry (exact, without a date suffix, or in the AI/ML API spelling), and the
defaults for ids the table does not know. The job checks (:mod:`pipeline.job.rules`), the token
estimators (the pipeline's and the sandbox's, which stay separate on purpose), the price table and
the sandbox's model rules all read their facts here; what ``GET /v1/models`` says overrides part
of an entry at run time (:mod:`pipeline.catalog.capabilities`). Pure apart from reading the data
file once.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

_DATE_SUFFIX = re.compile(r"-\d{8}$")

Sampling = Literal["any", "temperature_or_top_p", "none"]
# output_config.effort levels, lowest first (https://platform.claude.com/docs/en/build-with-claude/effort)
EFFORT_LEVELS = ("low", "medium", "high", "xhigh", "max")
# thinking.type values (anthropic-sdk-python 2.15.0 types/thinking_config_param.py)
THINKING_TYPES = ("adaptive", "enabled", "disabled", "between_tools")
# the types that turn thinking off
THINKING_OFF = frozenset({"disabled", "between_tools"})


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """One model's facts (see the keys in ``data/models.toml``).

    ``known`` is False for the defaults (an id neither the table nor ``/v1/models`` knows): then no
    rule is checked against the model. ``source`` says where the facts came from, for messages.
    """

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
    display_name: str | None = None
    released: str | None = None
    lifecycle: str | None = None  # active | deprecated | retired; None when the table does not say
    retires_at: str | None = None
    sampling: Sampling = "any"
    thinking: tuple[str, ...] = THINKING_TYPES
    thinking_default: Literal["off", "adaptive"] = "off"
    thinking_display: Literal["summarized", "omitted"] = "summarized"
    thinking_off_max_effort: str | None = None
    forced_tool: bool = True
    structured_outputs: bool = False
    effort: tuple[str, ...] = ()
    image_input: bool = True
    pdf_input: bool = True
    prefill: bool = True
    batch: bool = True
    inference_geo: bool = True
    source: str = "the shipped model table"

    @property
    def name(self) -> str:
        """The entry's first id, the name it is shown by."""
        return self.ids[0] if self.ids else "unknown model"

    def thinks_by_default(self) -> bool:
        """Whether a request that leaves ``thinking`` out thinks (adaptive by default)."""
        return self.thinking_default != "off"


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Every known model, the defaults for the others, and the price multipliers."""

    read_on: str
    default: ModelFacts
    models: tuple[ModelFacts, ...]
    multipliers: dict[str, float]
    multiplier_sources: tuple[str, ...]
    api_versions: ApiVersions
    budget_tokens_min: int = 1024
    thinking_top_p_min: float = 0.95
    rule_sources: tuple[str, ...] = ()

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


@dataclass(frozen=True, slots=True)
class ApiVersions:
    """The ``anthropic-version`` values the table knows, and the one from which sampling is refused."""

    known: tuple[str, ...]
    sampling_removed_in: str
    sources: tuple[str, ...] = ()

    def takes_sampling(self, version: str) -> bool:
        """Whether requests sent with ``version`` may carry temperature, top_p or top_k at all.

        Versions are dates (``YYYY-MM-DD``), so they compare as text.
        """
        return version < self.sampling_removed_in


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
    versions = raw["api_versions"]
    rules = raw["rules"]
    return ModelTable(
        read_on=str(raw["read_on"]),
        default=default,
        models=tuple(_facts(entry, base, known=True) for entry in raw["model"]),
        multipliers=multipliers,
        multiplier_sources=tuple(raw["multipliers"].get("sources", ())),
        api_versions=ApiVersions(
            known=tuple(versions["known"]),
            sampling_removed_in=str(versions["sampling_removed_in"]),
            sources=tuple(versions.get("sources", ())),
        ),
        budget_tokens_min=int(rules["budget_tokens_min"]),
        thinking_top_p_min=float(rules["thinking_top_p_min"]),
        rule_sources=tuple(rules.get("sources", ())),
    )


def model_facts(model: str) -> ModelFacts:
    """Shortcut: ``model_table().facts(model)``."""
    return model_table().facts(model)


_KEYS = frozenset({
    "ids", "display_name", "released", "lifecycle", "retires_at", "context_window", "max_output",
    "nonstreaming_max_tokens", "newer_tokenizer", "image_long_edge", "image_max_tokens",
    "min_cache_tokens", "price", "sampling", "thinking", "thinking_default", "thinking_display",
    "thinking_off_max_effort", "forced_tool", "structured_outputs", "effort", "image_input", "pdf_input",
    "prefill", "batch", "inference_geo", "sources",
})  # fmt: skip


def _facts(entry: dict[str, Any], base: dict[str, Any], *, known: bool) -> ModelFacts:
    unknown = sorted(set(entry) - _KEYS)
    if unknown:  # a typo in the table must not silently drop a rule
        raise ValueError(f"data/models.toml: entry {entry.get('ids')} has unknown keys {unknown}")
    price = entry.get("price") or {}

    def pick(key: str) -> Any:
        return entry.get(key, base.get(key))

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
        display_name=entry.get("display_name"),
        released=entry.get("released"),
        lifecycle=entry.get("lifecycle"),
        retires_at=entry.get("retires_at"),
        sampling=pick("sampling"),
        thinking=tuple(pick("thinking")),
        thinking_default=pick("thinking_default"),
        thinking_display=pick("thinking_display"),
        thinking_off_max_effort=pick("thinking_off_max_effort"),
        forced_tool=bool(pick("forced_tool")),
        structured_outputs=bool(pick("structured_outputs")),
        effort=tuple(pick("effort")),
        image_input=bool(pick("image_input")),
        pdf_input=bool(pick("pdf_input")),
        prefill=bool(pick("prefill")),
        batch=bool(pick("batch")),
        inference_geo=bool(pick("inference_geo")),
    )
