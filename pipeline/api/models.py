"""The Models endpoint: what ``GET /v1/models/{id}`` says about a job's model, read once a day per output.

:func:`run_model_facts` gives a run (realtime or batch) the facts its checks use, and says where they
came from (``ModelFacts.source``):

- a provider without Anthropic's ``/v1/models`` (``Provider.models_api``): the shipped table;
- an answer cached in ``OUTPUT/.models.json`` for the same server and model, younger than a day;
- else a fresh ``GET /v1/models/{id}`` (retried like every call, :mod:`pipeline.api.retry`), whose
  answer is cached atomically; a 404 while ``GET /v1/models`` (the list) answers means the server
  has no such model, and the run is refused up front (:class:`~pipeline.errors.SpecError`, with the
  nearest ids the table knows); a 404 from a server without the list (a proxy that forwards only
  ``/v1/messages``) falls back to the table; any other
  failure but a rejected key (401, which stops the run as every request would) falls back to the
  cached answer however old, then to the table, and says so.

:func:`offline_model_facts` is what ``validate`` and ``estimate`` use: never a request; the cached
answer for the job's base URL when there is one, else the table. :func:`checked_job` and
:func:`checked_job_offline` are what every command calls before anything is sent: the facts, the
job checked against them (:mod:`pipeline.job.rules`, a ``SpecError`` for the first problem, the
warnings logged) and the job with its answer mechanism decided for the model. The key travels only in the
request headers built by :class:`~pipeline.api.config.ClientConfig`; the cache holds the answer body,
the server URL and the time, never a header.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from pipeline.api.classify import classify, parse_failure, transport_failure
from pipeline.api.config import CONNECT_TIMEOUT_S, ClientConfig
from pipeline.api.retry import RetryPolicy
from pipeline.atomic import write_text
from pipeline.catalog.capabilities import facts_from_model_info
from pipeline.catalog.models import ModelFacts, model_facts, model_table
from pipeline.errors import ApiError, FatalApiError, OutputError, PermanentApiError, SpecError
from pipeline.job.rules import check_job, job_warnings, plan_request

if TYPE_CHECKING:
    from pipeline.job.spec import JobSpec

log = logging.getLogger("pipeline.run")

CACHE_FILE = ".models.json"
MAX_AGE_S = 24 * 3600.0  # an answer older than a day is asked again
# the model's facts are worth a short wait, not a run's worth of retries: past this the table stands in
MAX_ATTEMPTS = 3
MAX_TOTAL_S = 60.0


async def checked_job(
    spec: JobSpec,
    config: ClientConfig,
    output: Path,
    *,
    mode: str = "realtime",
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[JobSpec, ModelFacts]:
    """A run's job checked against its model's facts (from :func:`run_model_facts`), ready to send.

    :raises SpecError: the job breaks one of the model's rules, or the model does not exist.
    """
    facts = await run_model_facts(spec, config, output, transport=transport)
    check_job(spec, facts, mode=mode)
    for note in job_warnings(spec, facts):
        log.warning("%s", note)
    return spec.model_copy(update={"request": plan_request(spec.request, facts)}), facts


def checked_job_offline(spec: JobSpec, output: Path | None) -> tuple[JobSpec, ModelFacts]:
    """``validate`` and ``estimate``: the job checked against the cached answer or the table (the
    warnings, :func:`pipeline.job.rules.job_warnings`, are the caller's to show)."""
    facts = offline_model_facts(spec, output)
    check_job(spec, facts)
    return spec.model_copy(update={"request": plan_request(spec.request, facts)}), facts


def table_facts(spec: JobSpec, why: str = "") -> ModelFacts:
    """The shipped table's facts for the job's model, with a source saying so (and why, when given)."""
    facts = model_facts(spec.request.model)
    source = f"the shipped model table (read {model_table().read_on})"
    if not facts.known:
        source += f", which does not know {spec.request.model!r}: no model rule is checked"
    return replace(facts, source=source + (f"; {why}" if why else ""))


def offline_model_facts(spec: JobSpec, output: Path | None) -> ModelFacts:
    """Facts without any request: a cached ``/v1/models`` answer for the job's server, else the table."""
    if not spec.api.preset.models_api:
        return table_facts(spec, f"provider {spec.api.provider!r} has no /v1/models")
    if output is not None:
        entry = _read_cache(output).get(_key(spec.api.base_url, spec.request.model))
        if entry is not None:
            return _cached_facts(spec.request.model, entry, offline=True)
    return table_facts(spec)


async def run_model_facts(
    spec: JobSpec,
    config: ClientConfig,
    output: Path,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    now: Callable[[], float] = time.time,
) -> ModelFacts:
    """The facts a run checks its job against (see the module docstring).

    :raises SpecError: the server answers 404 for the model.
    :raises FatalApiError: the server rejects the key (401).
    """
    model = spec.request.model
    if not spec.api.preset.models_api:
        return table_facts(spec, f"provider {spec.api.provider!r} has no /v1/models")
    cache = _read_cache(output)
    key = _key(config.base_url, model)
    entry = cache.get(key)
    if entry is not None and now() - float(entry.get("fetched_at", 0)) < MAX_AGE_S:
        return _cached_facts(model, entry, offline=False)
    url = config.url(f"/v1/models/{quote(model, safe='')}")
    try:
        info = await _fetch(config, url, transport=transport, sleep=sleep)
    except FatalApiError as exc:
        if exc.status != 403:
            raise
        return _fallback(spec, entry, f"GET {url} was refused ({exc})")
    except PermanentApiError as exc:
        if exc.status != 404:
            return _fallback(spec, entry, f"GET {url} failed ({exc})")
        if await _lists_models(config, transport=transport, sleep=sleep):
            raise SpecError(_unknown_model(spec, url, exc)) from None
        return _fallback(spec, entry, f"{config.base_url} has no /v1/models")
    except ApiError as exc:
        return _fallback(spec, entry, f"GET {url} failed ({exc})")
    cache[key] = {"base_url": config.base_url, "model": model, "fetched_at": now(), "info": info}
    try:
        write_text(output / CACHE_FILE, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OutputError as exc:
        log.warning("%s; the model's facts are not cached", exc)
    return facts_from_model_info(info, f"GET /v1/models/{model} at {config.base_url}")


def _fallback(spec: JobSpec, entry: dict[str, Any] | None, why: str) -> ModelFacts:
    if entry is not None:
        facts = _cached_facts(spec.request.model, entry, offline=False)
        facts = replace(facts, source=f"{facts.source} ({why})")
    else:
        facts = table_facts(spec, why)
    log.warning("model facts from %s", facts.source)
    return facts


def _cached_facts(model: str, entry: dict[str, Any], *, offline: bool) -> ModelFacts:
    when = datetime.fromtimestamp(float(entry.get("fetched_at", 0)), UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = entry.get("base_url", "?")
    how = "as cached" if offline else "cached"
    return facts_from_model_info(entry.get("info") or {}, f"GET /v1/models/{model} at {where}, {how} {when}")


async def _fetch(
    config: ClientConfig,
    url: str,
    *,
    transport: httpx.AsyncBaseTransport | None,
    sleep: Callable[[float], Awaitable[None]],
) -> dict[str, Any]:
    info: dict[str, Any] = {}
    async with config.open_http(transport) as http:
        async for attempt in _policy(config).retrying(sleep=sleep):
            with attempt:
                info = await _get_once(http, config, url, attempt.retry_state.attempt_number)
    return info


async def _lists_models(
    config: ClientConfig,
    *,
    transport: httpx.AsyncBaseTransport | None,
    sleep: Callable[[float], Awaitable[None]],
) -> bool:
    """Whether the server answers ``GET /v1/models`` (so its 404 for one model means: no such model)."""
    url = config.url("/v1/models?limit=1")
    try:
        async with config.open_http(transport) as http:
            async for attempt in _policy(config).retrying(sleep=sleep):
                with attempt:
                    await _get_once(http, config, url, attempt.retry_state.attempt_number, listing=True)
    except ApiError:
        return False
    return True


async def _get_once(
    http: httpx.AsyncClient, config: ClientConfig, url: str, number: int, *, listing: bool = False
) -> dict[str, Any]:
    try:
        try:
            response = await http.get(url, headers=config.headers(), follow_redirects=False)
        except httpx.TransportError as exc:
            raise transport_failure(
                exc, timeout_s=config.timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S
            ) from exc
        if not response.is_success:
            raise classify(response.status_code, response.headers, response.content)
        try:
            info = json.loads(response.content)
        except ValueError:
            info = None
        shaped = isinstance(info, dict) and (
            isinstance(info.get("data"), list) if listing else isinstance(info.get("id"), str)
        )
        if not shaped or not isinstance(info, dict):
            raise parse_failure("the /v1/models answer is not a ModelInfo", response.status_code)
    except ApiError as error:
        error.attempts = number
        config.redact(error)
        raise
    return info


def _policy(config: ClientConfig) -> RetryPolicy:
    """The one retry policy, held to a few attempts: a fallback exists, a run should not wait for this."""
    policy = config.retry_policy()
    return replace(policy, max_attempts=min(policy.max_attempts, MAX_ATTEMPTS), max_total_s=MAX_TOTAL_S)


def _unknown_model(spec: JobSpec, url: str, error: ApiError) -> str:
    model = spec.request.model
    known = [model_id for facts in model_table().models for model_id in facts.ids]
    near = difflib.get_close_matches(model, [k for k in known if k != model], n=2, cutoff=0.75)
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    return (
        f"{spec.source}: request.model: {model!r} is not a model at {spec_base(url)} (GET {url}: {error});"
        f" check the id{hint}"
    )


def spec_base(url: str) -> str:
    """The server part of a ``.../v1/models/...`` URL."""
    return url.split("/v1/models/", 1)[0]


def _key(base_url: str, model: str) -> str:
    return f"{base_url.rstrip('/')} {model}"


def _read_cache(output: Path) -> dict[str, Any]:
    path = output / CACHE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: it is only a cache
    return raw if isinstance(raw, dict) else {}
