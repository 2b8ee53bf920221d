"""What ``pipeline estimate`` found, as a record (tokens, requests, dollars) and as text or JSON.

Pure: the walk that fills it is :mod:`pipeline.dryrun.estimate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.catalog.prices import CacheTtl, Price
from pipeline.records import Usage

# Share of max_tokens assumed for a typical answer when no earlier results say better.
TYPICAL_OUTPUT_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class ExactCheck:
    """The local estimate against ``count_tokens`` on a sample of requests."""

    sampled: int
    local_tokens: int
    counted_tokens: int
    worst_row_pct: float  # the largest per-request difference, in percent of the counted figure

    @property
    def off_pct(self) -> float:
        """How far the local estimate was off over the sample (positive: it guessed high)."""
        return 100.0 * (self.local_tokens - self.counted_tokens) / max(self.counted_tokens, 1)

    @property
    def ratio(self) -> float:
        """Counted tokens per locally estimated token."""
        return self.counted_tokens / max(self.local_tokens, 1)


@dataclass(frozen=True, slots=True)
class Costs:
    """Dollars for one output assumption: realtime and batch, without and with prompt caching."""

    realtime: float
    realtime_cached: float
    batch: float
    batch_cached: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready, rounded to a hundredth of a cent."""
        return {
            "realtime": round(self.realtime, 4),
            "realtime_cached": round(self.realtime_cached, 4),
            "batch": round(self.batch, 4),
            "batch_cached": round(self.batch_cached, 4),
        }


@dataclass(frozen=True, slots=True)
class CacheOutlook:
    """What prompt caching would do for this job's shared prefix (tools, system and examples)."""

    enabled: bool  # the job sets cache = true
    prefix_tokens: int  # mean prefix per request
    minimum: int | None  # the model's minimum cacheable prefix (None: unknown)
    distinct_prefixes: int
    write_tokens: int  # first request of each cacheable prefix
    read_tokens: int  # every later request of a cacheable prefix

    @property
    def cacheable(self) -> bool:
        """Whether any prefix is long enough to be cached."""
        return self.write_tokens > 0

    def note(self, model: str) -> str:
        """One line about caching for people."""
        if self.prefix_tokens == 0:
            return "prompt caching: nothing to cache (no system prompt, tools or examples)"
        if self.minimum is None:
            return f"prompt caching: minimum cacheable length for {model} unknown; assumed cacheable"
        if not self.cacheable:
            return (
                f"prompt caching: the shared prefix (~{self.prefix_tokens:,} tokens of system, tools and"
                f" examples) is shorter than the {self.minimum:,}-token minimum for {model}, so it would"
                " not be cached"
            )
        state = "on (cache = true)" if self.enabled else "off; set cache = true in [request]"
        distinct = "" if self.distinct_prefixes == 1 else f" ({self.distinct_prefixes:,} distinct)"
        return (
            f"prompt caching {state}: the ~{self.prefix_tokens:,}-token prefix{distinct} is written to the "
            f"cache once ({self.write_tokens:,} tokens) and read from it {self.read_tokens:,} tokens"
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """Everything ``pipeline estimate`` reports."""

    job: str
    model: str
    rows_total: int
    rows_done: int
    rows_to_do: int
    rows_unsendable: int
    problems: tuple[str, ...]
    requests: int
    rows_shared: int
    dedupe: bool
    images: int
    remote_images: int
    image_max_edge: int
    image_max_pixels: int | None
    largest_image: tuple[int, int] | None
    mean_image_pixels: int
    text_tokens: int  # prompt text and framing, over all requests
    prefix_tokens: int  # system, tools and examples, over all requests
    image_tokens: int
    cache: CacheOutlook
    max_tokens: int
    output_typical_per_request: float
    output_typical_source: str
    price: Price | None
    priced_as: str
    exact: ExactCheck | None = None
    cache_ttl: str = "5m"
    example_turns: int = 0
    example_tokens: int = 0  # the examples' share of each request's prefix (text and images)
    model_facts: str = ""  # where the model's rules came from

    @property
    def input_tokens(self) -> int:
        """Input tokens over all requests, as the local estimate has them."""
        return self.text_tokens + self.prefix_tokens + self.image_tokens

    @property
    def scale(self) -> float:
        """The correction ``--exact`` found (1 without it)."""
        return self.exact.ratio if self.exact is not None else 1.0

    @property
    def output_max(self) -> int:
        """Output tokens if every answer ran to ``max_tokens``."""
        return self.requests * self.max_tokens

    @property
    def output_typical(self) -> int:
        """Output tokens at the typical answer length."""
        return round(self.requests * self.output_typical_per_request)

    def costs(self, output_tokens: int) -> Costs | None:
        """Dollars at ``output_tokens`` of output, or None when no price is known."""
        price = self.price
        if price is None:
            return None
        scale = self.scale
        total = round(self.input_tokens * scale)
        plain = Usage(input_tokens=total, output_tokens=output_tokens)
        write = round(self.cache.write_tokens * scale)
        read = round(self.cache.read_tokens * scale)
        cached = Usage(
            input_tokens=total - write - read,
            output_tokens=output_tokens,
            cache_creation_input_tokens=write,
            cache_read_input_tokens=read,
        )
        ttl: CacheTtl = "1h" if self.cache_ttl == "1h" else "5m"
        return Costs(
            realtime=price.cost_usd(plain),
            realtime_cached=price.cost_usd(cached, cache_ttl=ttl),
            batch=price.cost_usd(plain, batch=True),
            batch_cached=price.cost_usd(cached, batch=True, cache_ttl=ttl),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        typical = self.costs(self.output_typical)
        at_max = self.costs(self.output_max)
        return {
            "job": self.job,
            "model": self.model,
            "rows": {
                "total": self.rows_total,
                "done": self.rows_done,
                "to_do": self.rows_to_do,
                "unsendable": self.rows_unsendable,
                "shared": self.rows_shared,
            },
            "problems": list(self.problems),
            "requests": self.requests,
            "dedupe": self.dedupe,
            "images": {
                "count": self.images,
                "urls_not_fetched": self.remote_images,
                "max_edge": self.image_max_edge,
                "max_pixels": self.image_max_pixels,
                "largest": list(self.largest_image) if self.largest_image else None,
                "mean_pixels": self.mean_image_pixels,
            },
            "input_tokens": {
                "total": self.input_tokens,
                "text": self.text_tokens,
                "system_and_tools": self.prefix_tokens,
                "examples_per_request": self.example_tokens,
                "images": self.image_tokens,
                "corrected": round(self.input_tokens * self.scale) if self.exact else None,
            },
            "output_tokens": {
                "at_max_tokens": self.output_max,
                "typical": self.output_typical,
                "typical_per_request": round(self.output_typical_per_request, 2),
                "typical_from": self.output_typical_source,
            },
            "cache": {
                "enabled": self.cache.enabled,
                "ttl": self.cache_ttl,
                "prefix_tokens": self.cache.prefix_tokens,
                "min_cacheable_tokens": self.cache.minimum,
                "cacheable": self.cache.cacheable,
                "write_tokens": self.cache.write_tokens,
                "read_tokens": self.cache.read_tokens,
            },
            "cost_usd": {
                "typical": typical.to_dict() if typical else None,
                "at_max_tokens": at_max.to_dict() if at_max else None,
            },
            "priced_as": self.priced_as,
            "model_facts": self.model_facts,
            "exact": None
            if self.exact is None
            else {
                "sampled": self.exact.sampled,
                "local_tokens": self.exact.local_tokens,
                "counted_tokens": self.exact.counted_tokens,
                "off_pct": round(self.exact.off_pct, 1),
                "worst_row_pct": round(self.exact.worst_row_pct, 1),
            },
        }

    def __str__(self) -> str:
        """What ``pipeline estimate`` prints."""
        return estimate_text(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and Jupyter show the command's text, not the record's fields."""
        printer.text(str(self))


def estimate_text(estimate: Estimate) -> str:
    """The estimate as a few lines and a table, for people."""
    e = estimate
    lines = [f"{e.job}: {e.rows_to_do:,} rows to do of {e.rows_total:,} ({e.rows_done:,} already done)"]
    if e.rows_unsendable:
        lines.append(f"  {e.rows_unsendable:,} rows cannot be sent (not counted):")
        lines.extend(f"    {problem}" for problem in e.problems)
    sharing = f", {e.rows_shared:,} rows share an identical request (dedupe)" if e.rows_shared else ""
    if not e.requests:
        lines.append("nothing to send: every row is done or cannot be sent; cost $0")
        return "\n".join(lines)
    lines.append(f"requests: {e.requests:,}{sharing}")
    if e.images or e.remote_images:
        limits = f"long edge {e.image_max_edge} px"
        if e.image_max_pixels is not None:
            limits += f", at most {e.image_max_pixels:,} pixels"
        largest = f"{e.largest_image[0]}x{e.largest_image[1]}" if e.largest_image else "-"
        lines.append(
            f"images: {e.images:,} after resizing ({limits}): largest {largest}, "
            f"mean {e.mean_image_pixels / 1e6:.2f} MP"
            + (f"; {e.remote_images:,} URLs not fetched (not counted)" if e.remote_images else "")
        )
    lines.append(
        f"input tokens: {e.input_tokens:,} ({e.text_tokens:,} prompt text, {e.prefix_tokens:,} system and "
        f"tools, {e.image_tokens:,} images)"
    )
    if e.example_turns:
        lines.append(
            f"examples: {e.example_turns} turns, ~{e.example_tokens:,} tokens in every request's shared"
            " prefix (counted with system and tools)"
        )
    if e.exact is not None:
        x = e.exact
        lines.append(
            f"count_tokens on {x.sampled} sampled requests: {x.counted_tokens:,} tokens, local estimate "
            f"{x.local_tokens:,} ({x.off_pct:+.1f} %, worst request {x.worst_row_pct:.1f} %); "
            f"costs use the corrected {round(e.input_tokens * e.scale):,}"
        )
    lines.append(
        f"output tokens: {e.output_max:,} at max_tokens ({e.max_tokens:,} a request), "
        f"{e.output_typical:,} typical ({e.output_typical_per_request:,.1f} a request, "
        f"{e.output_typical_source})"
    )
    lines.append(e.cache.note(e.model))
    typical, at_max = e.costs(e.output_typical), e.costs(e.output_max)
    if typical is None or at_max is None:
        lines.append(f"cost: unknown ({e.priced_as})")
        return "\n".join(lines)
    rows = [
        ("", "realtime", "batch"),
        ("typical output", _usd(typical.realtime), _usd(typical.batch)),
        ("  with caching", _usd(typical.realtime_cached), _usd(typical.batch_cached)),
        ("output at max_tokens", _usd(at_max.realtime), _usd(at_max.batch)),
        ("  with caching", _usd(at_max.realtime_cached), _usd(at_max.batch_cached)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines.append("")
    for label, realtime, batch in rows:
        lines.append(f"  {label:<{widths[0]}}  {realtime:>{widths[1]}}  {batch:>{widths[2]}}")
    lines.append("")
    if e.cache.cacheable:
        lines.append("with caching: every later request is assumed to hit; batch-mode hits are best effort")
    lines.append(f"prices: {e.priced_as}")
    lines.append(f"model rules: {e.model_facts}")
    return "\n".join(lines)


def estimate_json(estimate: Estimate) -> str:
    """The estimate as one line of JSON."""
    return json.dumps(estimate.to_dict())


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"
