"""``pipeline estimate``: what a job will cost, worked out before anything is spent.

Owns: the offline walk over the rows still to do (after resume: rows an earlier run settled are
left out), images as they will be sent after resizing, the likely input tokens of each request
(:mod:`pipeline.payloads.tokens`), requests saved by dedupe, output tokens at ``max_tokens`` and at a typical
length, and the dollars for realtime and batch mode with and without prompt caching. With
``exact``, a sample of the requests is counted by the free ``/v1/messages/count_tokens`` endpoint
and the costs use the local estimate corrected by what the sample showed. Never calls
``/v1/messages``; image URLs are not fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.catalog.prices import CacheTtl, Price, describe_price, price_for
from pipeline.dryrun.validate import row_problem
from pipeline.errors import OutputError
from pipeline.job.spec import JobSpec
from pipeline.payloads.build import system_text
from pipeline.payloads.prepare import Prepared, open_job_input, prepare_rows
from pipeline.payloads.tokens import RequestTokens, min_cacheable_tokens, request_tokens
from pipeline.records import Usage
from pipeline.results.store import NOT_RETRIED_BY_DEFAULT, ResultStore
from pipeline.rows.media import offline_loader
from pipeline.rows.reader import SourcedRow, iter_rows
from pipeline.wire import MessagePayload

# Share of max_tokens assumed for a typical answer when no earlier results say better.
TYPICAL_OUTPUT_SHARE = 0.25
DEFAULT_SAMPLE = 20
# count_tokens has its own limit; 100 a minute is the lowest published tier (reference §6).
COUNT_TOKENS_PER_MINUTE = 100.0
MAX_PROBLEMS = 5


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
    """What prompt caching would do for this job's shared prefix (tools and system)."""

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
            return "prompt caching: nothing to cache (no system prompt or tools)"
        if self.minimum is None:
            return f"prompt caching: minimum cacheable length for {model} unknown; assumed cacheable"
        if not self.cacheable:
            return (
                f"prompt caching: the shared prefix (~{self.prefix_tokens:,} tokens of system and tools) "
                f"is shorter than the {self.minimum:,}-token minimum for {model}, so it would not be cached"
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
    prefix_tokens: int  # system and tools, over all requests
    image_tokens: int
    cache: CacheOutlook
    max_tokens: int
    output_typical_per_request: float
    output_typical_source: str
    price: Price | None
    priced_as: str
    exact: ExactCheck | None = None
    cache_ttl: str = "5m"

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


@dataclass(slots=True)
class _Walk:
    """Running totals over the rows still to do."""

    rows_total: int = 0
    rows_done: int = 0
    rows_to_do: int = 0
    unsendable: int = 0
    problems: list[str] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)  # request keys (16 bytes each: memory stays small)
    requests: int = 0
    shared: int = 0
    images: int = 0
    remote_images: int = 0
    pixels: int = 0
    largest: tuple[int, int] | None = None
    text: int = 0
    prefix: int = 0
    image_tokens: int = 0
    # hash of the prefix (system and tools) -> (its tokens, requests that share it)
    prefixes: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    sample: list[tuple[MessagePayload, int]] = field(default_factory=list)
    sample_seen: int = 0


def estimate_job(
    spec: JobSpec,
    input_pattern: str,
    output: Path,
    *,
    limit: int | None = None,
    exact_base_url: str | None = None,
    api_key: str = "",
    sample: int = DEFAULT_SAMPLE,
) -> Estimate:
    """Estimate ``spec``'s cost; with ``exact_base_url``, count a sample of requests there."""
    request = spec.request
    table = open_job_input(spec, input_pattern)
    settled, typical = _earlier_results(output, request.fingerprint())
    walk = _Walk()
    rng = random.Random(0)  # the same sample every time for the same input
    asyncio.run(_walk_rows(spec, iter_rows(table, limit=limit), settled, walk, rng, sample))
    exact = None
    if exact_base_url is not None and walk.sample:
        exact = asyncio.run(_count_sample(spec, exact_base_url, api_key, walk.sample))
    requests = walk.requests
    if typical is None:
        per_request = request.max_tokens * TYPICAL_OUTPUT_SHARE
        source = f"assumed {TYPICAL_OUTPUT_SHARE:.0%} of max_tokens"
    else:
        per_request, source = typical
    price = price_for(request.model, spec.prices)
    return Estimate(
        job=spec.name,
        model=request.model,
        rows_total=walk.rows_total,
        rows_done=walk.rows_done,
        rows_to_do=walk.rows_to_do,
        rows_unsendable=walk.unsendable,
        problems=tuple(walk.problems),
        requests=requests,
        rows_shared=walk.shared,
        dedupe=request.dedupes,
        images=walk.images,
        remote_images=walk.remote_images,
        image_max_edge=request.image_max_edge,
        image_max_pixels=request.image_max_pixels,
        largest_image=walk.largest,
        mean_image_pixels=walk.pixels // walk.images if walk.images else 0,
        text_tokens=walk.text,
        prefix_tokens=walk.prefix,
        image_tokens=walk.image_tokens,
        cache=_cache_outlook(request.cache, request.model, walk.prefixes),
        max_tokens=request.max_tokens,
        output_typical_per_request=per_request,
        output_typical_source=source,
        price=price,
        priced_as=describe_price(price, request.model),
        exact=exact,
        cache_ttl=request.cache_ttl,
    )


def _cache_outlook(enabled: bool, model: str, prefixes: Mapping[bytes, tuple[int, int]]) -> CacheOutlook:
    minimum = min_cacheable_tokens(model)
    requests = sum(count for _, count in prefixes.values())
    total = sum(tokens * count for tokens, count in prefixes.values())
    write = read = 0
    for tokens, count in prefixes.values():
        if tokens and (minimum is None or tokens >= minimum):
            write += tokens
            read += tokens * (count - 1)
    return CacheOutlook(
        enabled=enabled,
        prefix_tokens=round(total / requests) if requests else 0,
        minimum=minimum,
        distinct_prefixes=len(prefixes),
        write_tokens=write,
        read_tokens=read,
    )


def _earlier_results(output: Path, fingerprint: str) -> tuple[dict[str, str], tuple[float, str] | None]:
    """Rows an earlier run settled (row_id -> row hash), and the mean answer length it saw.

    Read without writing anything: journals of an interrupted run count too. Uses the default retry
    rule (``run`` without ``--retry-errors``).
    """
    if not output.is_dir():
        return {}, None
    frame = ResultStore(output).snapshot()
    if frame is None or frame.is_empty():
        return {}, None
    try:
        same = frame.filter(pl.col("request_fingerprint") == fingerprint)
        error_type = pl.col("error_type").fill_null("")
        keep = (pl.col("status") == "ok") | (error_type.is_in(list(NOT_RETRIED_BY_DEFAULT)))
        hashes = pl.col("row_hash").fill_null("") if "row_hash" in frame.columns else pl.lit("")
        settled = same.filter(keep).select("row_id", hashes.alias("row_hash"))
        answered = same.filter((pl.col("status") == "ok") & (pl.col("output_tokens") > 0))
    except pl.exceptions.PolarsError as exc:
        raise OutputError(f"cannot read the results in {output}: {exc}") from None
    typical = None
    if answered.height:
        mean = float(answered["output_tokens"].mean())  # type: ignore[arg-type]
        typical = (mean, f"the mean of {answered.height:,} earlier answers")
    return dict(zip(settled["row_id"].to_list(), settled["row_hash"].to_list(), strict=True)), typical


async def _walk_rows(
    spec: JobSpec,
    rows: Iterator[SourcedRow],
    settled: dict[str, str],
    walk: _Walk,
    rng: random.Random,
    sample: int,
) -> None:
    request = spec.request

    def remote() -> None:
        walk.remote_images += 1

    def wanted(sourced: SourcedRow) -> bool:
        walk.rows_total += 1
        if settled.get(sourced.row.row_id) == sourced.row.content_hash:
            walk.rows_done += 1
            return False
        walk.rows_to_do += 1
        return True

    async def count(prepared: Prepared) -> None:
        _count_request(walk, prepared, rng, sample)

    load = offline_loader(request.image_root, remote)
    await prepare_rows(request, rows, load, count, wanted=wanted, keys=request.dedupes, keep_images=True)


def _count_request(walk: _Walk, prepared: Prepared, rng: random.Random, sample: int) -> None:
    """Add one prepared row to the totals: its tokens, images, cache prefix and the sample."""
    payload = prepared.payload
    if prepared.error is not None or payload is None:
        walk.unsendable += 1
        if len(walk.problems) < MAX_PROBLEMS and prepared.error is not None:
            walk.problems.append(row_problem(prepared.row, prepared.error))
        return
    if prepared.key is not None:
        key = bytes.fromhex(prepared.key)[:16]
        if key in walk.seen:
            walk.shared += 1  # answered by the identical request of an earlier row: costs nothing
            return
        walk.seen.add(key)
    walk.requests += 1
    images = prepared.images
    tokens: RequestTokens = request_tokens(payload, images)
    walk.text += tokens.text
    walk.prefix += tokens.prefix
    walk.image_tokens += tokens.images
    prefix_text = system_text(payload) + json.dumps(payload.get("tools", []), sort_keys=True)
    prefix = hashlib.sha256(prefix_text.encode("utf-8", "surrogatepass")).digest()[:16]
    _, seen = walk.prefixes.get(prefix, (0, 0))
    walk.prefixes[prefix] = (tokens.prefix, seen + 1)
    for image in images:
        walk.images += 1
        walk.pixels += image.width * image.height
        if walk.largest is None or image.width * image.height > walk.largest[0] * walk.largest[1]:
            walk.largest = (image.width, image.height)
    # reservoir sampling: an even sample of every request, whatever the input's length
    walk.sample_seen += 1
    if len(walk.sample) < sample:
        walk.sample.append((payload, tokens.total))
    elif (slot := rng.randrange(walk.sample_seen)) < sample:
        walk.sample[slot] = (payload, tokens.total)


async def _count_sample(
    spec: JobSpec, base_url: str, api_key: str, sample: list[tuple[MessagePayload, int]]
) -> ExactCheck:
    # count_tokens has a limit of its own: pace to it, not to the job's Messages limits
    config = replace(
        ClientConfig.for_job(spec, base_url=base_url, api_key=api_key, concurrency=4),
        requests_per_minute=COUNT_TOKENS_PER_MINUTE,
        input_tokens_per_minute=None,
        output_tokens_per_minute=None,
    )
    async with MessagesClient(config) as client:
        counted = await asyncio.gather(*(client.count_tokens(payload) for payload, _ in sample))
    local = [tokens for _, tokens in sample]
    worst = max(
        abs(mine - theirs) / max(theirs, 1) * 100.0 for mine, theirs in zip(local, counted, strict=True)
    )
    return ExactCheck(
        sampled=len(sample), local_tokens=sum(local), counted_tokens=sum(counted), worst_row_pct=worst
    )


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
    return "\n".join(lines)


def estimate_json(estimate: Estimate) -> str:
    """The estimate as one line of JSON."""
    return json.dumps(estimate.to_dict())


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"
