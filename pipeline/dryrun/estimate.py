"""``pipeline estimate``: what a job will cost, worked out before anything is spent.

Owns: the offline walk over the rows still to do (after resume: rows an earlier run settled are
left out), images as they will be sent after resizing, the likely input tokens of each request
(:mod:`pipeline.payloads.tokens`), requests saved by dedupe, output tokens at ``max_tokens`` and at a typical
length, and the dollars for realtime and batch mode with and without prompt caching. With
``exact``, a sample of the requests is counted by the free ``/v1/messages/count_tokens`` endpoint
and the costs use the local estimate corrected by what the sample showed. Never calls
``/v1/messages``; images behind URLs or in object storage are counted, not fetched, unless
``fetch``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.api.models import checked_job_offline
from pipeline.catalog.prices import describe_price, price_for
from pipeline.dryrun.costs import TYPICAL_OUTPUT_SHARE, CacheOutlook, Estimate, ExactCheck
from pipeline.dryrun.validate import row_problem
from pipeline.errors import OutputError
from pipeline.job.request import RequestSpec
from pipeline.job.spec import JobSpec
from pipeline.payloads.build import system_text
from pipeline.payloads.prepare import Prepared, open_job_input, prepare_examples, prepare_rows
from pipeline.payloads.tokens import (
    RequestTokens,
    image_tokens,
    min_cacheable_tokens,
    request_tokens,
    text_tokens,
)
from pipeline.results.outputs import is_remote_output, reading
from pipeline.results.store import RerunPolicy, settled_rows
from pipeline.rows.media import Loader, download_client, offline_loader, online_loader
from pipeline.rows.memory import InputSource
from pipeline.rows.reader import SourcedRow, iter_rows
from pipeline.rows.storage import ObjectStorage, StorageSettings
from pipeline.wire import MessagePayload

DEFAULT_SAMPLE = 20
# count_tokens has its own limit; 100 a minute is the lowest published tier (https://platform.claude.com/docs/en/api/rate-limits).
COUNT_TOKENS_PER_MINUTE = 100.0
MAX_PROBLEMS = 5


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
    example_tokens: int = 0


def estimate_job(
    spec: JobSpec,
    source: InputSource,
    output: Path | str,
    *,
    limit: int | None = None,
    exact_base_url: str | None = None,
    api_key: str = "",
    sample: int = DEFAULT_SAMPLE,
    fetch: bool = False,
    sandbox_answers: bool = False,
) -> Estimate:
    """Estimate ``spec``'s cost; with ``exact_base_url``, count a sample of requests there.

    :param fetch: download images behind URLs and in object storage too (else they are counted).
    :param sandbox_answers: whether rows the sandbox answered count as done (only when the run
        being estimated goes to a server on this machine; see ``results.store.settled_rows``).
    :raises SpecError: the job breaks its model's rules (checked offline: a cached ``/v1/models``
        answer in ``output``, else the shipped table).
    """
    spec, facts = checked_job_offline(spec, None if is_remote_output(output) else Path(output))
    request = spec.request
    storage = ObjectStorage(StorageSettings.from_spec(spec.storage))
    try:
        table = open_job_input(spec, source, storage)
        settled, typical = _earlier_results(output, request, storage, spec, sandbox_answers=sandbox_answers)
        walk = _Walk()
        rng = random.Random(0)  # the same sample every time for the same input
        rows = iter_rows(table, limit=limit)
        asyncio.run(_walk_rows(spec, rows, settled, walk, rng, sample, storage if fetch else None))
    finally:
        storage.close()
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
        image_max_edge=request.image_edge,
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
        example_turns=len(request.examples),
        example_tokens=walk.example_tokens,
        model_facts=facts.source,
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


def _earlier_results(
    output: Path | str, request: RequestSpec, storage: ObjectStorage, spec: JobSpec, *, sandbox_answers: bool
) -> tuple[dict[str, str], tuple[float, str] | None]:
    """Rows an earlier run settled (row_id -> row hash), and the mean answer length it saw.

    Read without writing anything: journals of an interrupted run count too. Uses the default retry
    rule (``run`` without ``--retry-errors``).
    """
    if not is_remote_output(output) and not Path(output).is_dir():
        return {}, None
    with reading(output, storage, spec.storage) as (store, _):
        frame = store.snapshot()
    if frame is None or frame.is_empty():
        return {}, None
    try:
        settled = settled_rows(frame.lazy(), request, RerunPolicy(), sandbox_answers=sandbox_answers)
        legacy = request.legacy_fingerprint()
        fingerprints = [request.fingerprint(), *([legacy] if legacy else [])]
        answered = frame.filter(
            pl.col("request_fingerprint").is_in(fingerprints)
            & (pl.col("status") == "ok")
            & (pl.col("output_tokens") > 0)
        )
    except pl.exceptions.PolarsError as exc:
        raise OutputError(f"cannot read the results in {output}: {exc}") from None
    typical = None
    if answered.height:
        mean = float(answered["output_tokens"].mean())  # type: ignore[arg-type]
        typical = (mean, f"the mean of {answered.height:,} earlier answers")
    return settled, typical


async def _walk_rows(
    spec: JobSpec,
    rows: Iterator[SourcedRow],
    settled: dict[str, str],
    walk: _Walk,
    rng: random.Random,
    sample: int,
    fetching: ObjectStorage | None = None,
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

    load: Loader = offline_loader(request.image_root, remote)
    if request.examples:
        prefix = await prepare_examples(request)
        text = "".join(turn.text for turn in request.examples)
        walk.example_tokens = text_tokens(text, request.model) + sum(
            image_tokens(image.width, image.height, request.model) for image in prefix.images
        )
    if fetching is None:
        await prepare_rows(request, rows, load, count, wanted=wanted, keys=request.dedupes, keep_images=True)
        return
    async with download_client() as http:
        load = online_loader(http, root=request.image_root, timeout_s=spec.limits.timeout_s, storage=fetching)
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
    tokens: RequestTokens = request_tokens(payload, images, prepared.prefix_images)
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
