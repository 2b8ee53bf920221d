"""The sandbox's aiohttp application: routes, the per-request pipeline, and the statistics it keeps.

Each ``POST /v1/messages`` goes through, in order: auth and headers, the spend cap, body size and
JSON, URL and file sources resolved (:mod:`~pipeline.sandbox.sources`), validation, the model (404
for one the table lacks, where the preset has ``/v1/models``) and its rules
(:mod:`pipeline.sandbox.rules`), rate limits, latency, then the fault drawn at arrival or the
answer (refused or cut short when the seeded ``refusal_rate`` / ``truncation_rate`` say so). Only
answers count in ``answers_ok`` and ``ok_by_request``; refused requests are not billed, as on the
hosted API. ``GET /v1/models`` and ``/v1/models/{id}`` answer from the model table
(:mod:`pipeline.sandbox.models`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, deque
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from pipeline.sandbox.answers import (
    Answer,
    anthropic_message,
    make_answer,
    new_id,
    openai_completion,
    request_digest,
)
from pipeline.sandbox.apierrors import JSON_TYPE, RequestError, decode_json, error_body, read_body
from pipeline.sandbox.batches import BatchStore, add_batch_routes
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.faults import FaultDice, status_fault
from pipeline.sandbox.files import FileStore, add_file_routes, has_files_beta
from pipeline.sandbox.limits import RateLimiter, TokenBucket, retry_after
from pipeline.sandbox.models import add_model_routes, known_facts
from pipeline.sandbox.rules import check_known_model, check_rules
from pipeline.sandbox.sources import FetchTally, references, resolve_sources
from pipeline.sandbox.sse import anthropic_events, error_event, message_start, openai_chunks
from pipeline.sandbox.tokens import CACHE_TTL_S, min_cacheable_tokens
from pipeline.sandbox.validate import ParsedRequest, parse_request

MAX_BODY_BYTES = 32 * 1024 * 1024
LOG_LENGTH = 10_000


class SandboxState:
    """Counters, dice and limiter of one sandbox; ``snapshot`` may be called from any thread."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.dice = FaultDice(config)
        self.limiter = RateLimiter(config)
        self.send_limit_headers = config.ratelimit_headers and self.limiter.active
        self._lock = threading.Lock()
        self._started = time.monotonic()
        # answers since start; unlike the stats, /_sandbox/reset does not lift the spend cap
        self._answers_lifetime = 0
        self.batches = BatchStore(config)  # the Message Batches endpoints' state (sandbox/batches.py)
        self.files = FileStore()  # the Files API's uploads (sandbox/files.py); not cleared by reset
        self.fetches = FetchTally()  # URL sources fetched (sandbox/sources.py)
        self.session: aiohttp.ClientSession | None = None  # for URL sources, open while the app runs
        # the prompt cache: prefix key -> when it expires (monotonic seconds)
        self._prompt_cache: dict[str, float] = {}
        rpm = config.count_tokens_per_minute
        self.count_tokens_bucket = None if rpm is None else TokenBucket(rpm, config.burst_s, time.monotonic())
        self.reset()

    def cache_usage(self, parsed: ParsedRequest) -> tuple[int, int]:
        """(cache write, cache read) tokens for a request, looked up when it starts (prompt caching).

        A prefix below the model's minimum is not cached (both 0). A hit refreshes the entry's TTL.
        """
        if parsed.cache_key is None or parsed.cache_prefix_tokens < min_cacheable_tokens(parsed.model):
            return (0, 0)
        now = time.monotonic()
        with self._lock:
            expires = self._prompt_cache.get(parsed.cache_key)
            if expires is not None and expires > now:
                self._prompt_cache[parsed.cache_key] = now + CACHE_TTL_S[parsed.cache_ttl]
                return (0, parsed.cache_prefix_tokens)
        return (parsed.cache_prefix_tokens, 0)

    def cache_write(self, parsed: ParsedRequest) -> None:
        """Store a request's prefix once its answer starts: only then can others read it
        (build-with-claude/prompt-caching: the cache exists once the first response has started)."""
        if parsed.cache_key is not None:
            with self._lock:
                self._prompt_cache[parsed.cache_key] = time.monotonic() + CACHE_TTL_S[parsed.cache_ttl]

    def reset(self) -> None:
        """Zero every statistic."""
        with self._lock:
            self.requests_total = 0
            self.count_tokens_total = 0
            self.models_total = 0  # GET /v1/models and /v1/models/{id}
            self.by_status: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.rate_limited = 0
            self.answers_ok = 0
            self.ok_by_request: Counter[str] = Counter()
            self.message_body_bytes = 0  # bytes of every /v1/messages body received
            # bounded logs (seconds since start) so tests can check when requests arrived around a 429
            self.arrivals: deque[float] = deque(maxlen=LOG_LENGTH)
            self.throttles: deque[tuple[float, float]] = deque(maxlen=LOG_LENGTH)

    def snapshot(self) -> dict[str, Any]:
        """The statistics as plain JSON-ready data (the ``GET /_sandbox/stats`` body)."""
        with self._lock:
            return {
                "requests_total": self.requests_total,
                "count_tokens_total": self.count_tokens_total,
                "models_total": self.models_total,
                "by_status": dict(self.by_status),
                "faults": dict(self.faults),
                "rate_limited": self.rate_limited,
                "answers_ok": self.answers_ok,
                "ok_by_request": dict(self.ok_by_request),
                "arrivals": [round(t, 4) for t in self.arrivals],
                "throttles": [[round(t, 4), wait] for t, wait in self.throttles],
                "batches": self.batches.snapshot(),
                "files": self.files.snapshot(),
                "url_fetches": self.fetches.snapshot(),
                "message_body_bytes": self.message_body_bytes,
            }

    def spend_exhausted(self) -> bool:
        """Whether the configured number of answers has been given."""
        limit = self.config.spend_limit_after
        return limit is not None and self._answers_lifetime >= limit

    def record_body(self, size: int) -> None:
        """Count the bytes of a request body received."""
        with self._lock:
            self.message_body_bytes += size

    async def resolved(self, request: web.Request, body: Any) -> Any:
        """``body`` with URL and file sources replaced by what they stand for (see sandbox/sources)."""
        if self.session is None and references(body)[0]:
            # made on the first URL source, in the app's loop; no proxy from the environment applies
            self.session = aiohttp.ClientSession(trust_env=False)
        return await resolve_sources(
            body, store=self.files, tally=self.fetches, beta=has_files_beta(request), session=self.session
        )

    def record_request(self) -> None:
        """Count one arriving ``/v1/messages`` request and log when it came."""
        with self._lock:
            self.requests_total += 1
            self.arrivals.append(time.monotonic() - self._started)

    def record_throttle(self, retry_after_s: float) -> None:
        """Log a 429 and the wait it asked for."""
        with self._lock:
            self.throttles.append((time.monotonic() - self._started, retry_after_s))

    def record_models(self) -> None:
        """Count one Models request."""
        with self._lock:
            self.models_total += 1

    def record_count_tokens(self) -> None:
        """Count one ``count_tokens`` request (kept apart: it is free and has its own limits)."""
        with self._lock:
            self.count_tokens_total += 1

    def record_status(self, status: int, *, fault: str | None = None, rate_limited: bool = False) -> None:
        """Count a response by status, and the fault or rate limit behind it."""
        with self._lock:
            self.by_status[str(status)] += 1
            if fault is not None:
                self.faults[fault] += 1
            if rate_limited:
                self.rate_limited += 1

    def record_fault(self, fault: str) -> None:
        """Count a fault that sends no status (drop) or whose status is counted later (slow)."""
        with self._lock:
            self.faults[fault] += 1

    def record_answer(self, digest: str, answer: Answer) -> None:
        """Count a paid answer and charge its output tokens."""
        self.limiter.charge_output(answer.output_tokens)
        with self._lock:
            self._answers_lifetime += 1
            self.answers_ok += 1
            self.ok_by_request[digest] += 1
            self.by_status["200"] += 1


STATE = web.AppKey("sandbox_state", SandboxState)


def create_app(config: SandboxConfig) -> web.Application:
    """The sandbox as an aiohttp application (serve it with an ``AppRunner``)."""
    # one byte over the cap still reaches us, so oversized bodies get the API's 413, not aiohttp's
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = SandboxState(config)
    app.on_cleanup.append(_close_session)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_get("/_sandbox/stats", _stats)
    app.router.add_post("/_sandbox/reset", _reset)
    add_batch_routes(app, app[STATE].batches, _authenticate, app[STATE].resolved)
    add_file_routes(app, app[STATE].files, config, _authenticate)
    if config.models_api:
        add_model_routes(app, _model_handler)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def _close_session(app: web.Application) -> None:
    session, app[STATE].session = app[STATE].session, None
    if session is not None:
        await session.close()


def _model_handler(body: Any) -> Any:
    """A ``/v1/models`` route: authenticated, the body function's JSON, or the API's error shape."""

    async def handle(request: web.Request) -> web.Response:
        request_id = new_id("req")
        request.app[STATE].record_models()
        try:
            _authenticate(request, request.app[STATE].config)
            return _json(200, body(request), {"request-id": request_id})
        except RequestError as err:
            return _json(
                err.status, error_body(err.error_type, err.message, request_id), {"request-id": request_id}
            )

    return handle


def request_betas(request: web.Request) -> frozenset[str]:
    """The ``anthropic-beta`` names of a request (comma-separated, as the SDK joins them)."""
    header = request.headers.get("anthropic-beta", "")
    return frozenset(name.strip() for name in header.split(",") if name.strip())


def check_model(body: dict[str, Any], model: str, config: SandboxConfig, version: str) -> None:
    """The model exists (where the preset has ``/v1/models``) and the body keeps its rules."""
    facts = check_known_model(model) if config.models_api else known_facts(model)
    check_rules(body, facts, version=version, versioned=config.models_api)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].snapshot())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"reset": True})


async def _not_found(request: web.Request) -> web.Response:
    request_id = new_id("req")
    body = error_body("not_found_error", f"Not found: {request.method} {request.path}", request_id)
    return _json(404, body, {"request-id": request_id})


def _json(status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type=JSON_TYPE, headers=headers
    )


def _authenticate(request: web.Request, config: SandboxConfig) -> None:
    """Check the key header named by ``config.auth``, then ``anthropic-version``."""
    api_key = request.headers.get("x-api-key") if config.auth in ("any", "x-api-key") else None
    if not api_key and config.auth in ("any", "bearer"):
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        api_key = token.strip() if scheme.lower() == "bearer" else None
    label = "bearer token" if config.auth == "bearer" else "x-api-key"
    if not api_key:
        header = "Authorization: Bearer" if config.auth == "bearer" else "x-api-key"
        raise RequestError(f"{header} header is required", status=401, error_type="authentication_error")
    if config.api_key is not None and api_key != config.api_key:
        raise RequestError(f"invalid {label}", status=401, error_type="authentication_error")
    if not request.headers.get("anthropic-version"):
        raise RequestError("anthropic-version: header is required")


async def _read_json(request: web.Request) -> Any:
    """The decoded JSON body, or the API's 413/400 for oversized, non-JSON or malformed bodies."""
    raw = await read_body(request, MAX_BODY_BYTES)
    request.app[STATE].record_body(len(raw))
    return decode_json(raw)


def _refuse(
    state: SandboxState,
    err: RequestError,
    request_id: str,
    headers: dict[str, str],
    *,
    rate_limited: bool = False,
) -> web.Response:
    state.record_status(err.status, rate_limited=rate_limited)
    body = error_body(err.error_type, err.message, request_id, err.details)
    return _json(err.status, body, _with_limits(state, headers))


def _spend_cap(config: SandboxConfig) -> RequestError:
    return RequestError(
        "This organization has reached its spend limit (sandbox: spend_limit_after="
        f"{config.spend_limit_after} answers); no request will succeed until the limit is raised.",
        status=429,
        error_type="rate_limit_error",
        details={"error_code": "enforced_spend_limit_reached"},
    )


async def _count_tokens(request: web.Request) -> web.Response:
    state = request.app[STATE]
    request_id = new_id("req")
    headers = {"request-id": request_id}
    state.record_count_tokens()
    if not state.config.count_tokens_supported:
        return await _not_found(request)
    try:
        _authenticate(request, state.config)
        bucket = state.count_tokens_bucket
        if bucket is not None:
            # its own requests-per-minute limit, apart from the Messages limits (https://platform.claude.com/docs/en/api/rate-limits)
            bucket.refill(time.monotonic())
            wait = bucket.wait_for(1.0)
            if wait > 0:
                headers["retry-after"] = str(retry_after(wait))
                raise RequestError(
                    f"count_tokens rate limit exceeded (sandbox: {state.config.count_tokens_per_minute:g}"
                    f" requests per minute); retry after {headers['retry-after']} s.",
                    status=429,
                    error_type="rate_limit_error",
                )
            bucket.level -= 1.0
        body = await state.resolved(request, await _read_json(request))
        parsed = parse_request(body, count_tokens=True, betas=request_betas(request))
    except RequestError as err:
        return _json(err.status, error_body(err.error_type, err.message, request_id, err.details), headers)
    return _json(200, {"input_tokens": parsed.input_tokens}, headers)


async def _messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    config = state.config
    request_id = new_id("req")
    # drawn at arrival, before any await, so the fault sequence follows arrival order
    fault = state.dice.fault()
    delay = state.dice.latency_s()
    bad_tool_input = state.dice.tool_violation()
    refuse, truncate = state.dice.refusal(), state.dice.truncation()
    state.record_request()
    headers = {"request-id": request_id}
    rate_limited = False
    try:
        _authenticate(request, config)
        if state.spend_exhausted():
            raise _spend_cap(config)
        body = await _read_json(request)
        body = await state.resolved(request, body)
        parsed = parse_request(body, betas=request_betas(request))
        check_model(body, parsed.model, config, request.headers.get("anthropic-version", ""))
        if not config.tool_choice_supported and "tool_choice" in body:
            # what a server without tool_choice does with it is its own affair; a 400 makes it visible
            raise RequestError(f"tool_choice: not supported by this server (sandbox preset {config.preset})")
        if config.reject_marker and config.reject_marker in parsed.last_user_text:
            raise RequestError("messages.0.content: the sandbox refuses this content (reject_marker)")
        cache_write, cache_read = state.cache_usage(parsed)
        if state.limiter.active:
            # cache reads do not count against the input-token limit (https://platform.claude.com/docs/en/api/rate-limits)
            wait = state.limiter.admit(parsed.input_tokens - cache_read)
            if wait is not None:
                rate_limited = True
                headers["retry-after"] = str(retry_after(wait))
                state.record_throttle(retry_after(wait))
                raise RequestError(
                    f"This request would exceed your organization's rate limit (sandbox: "
                    f"{_limits_text(config)}); retry after {headers['retry-after']} s.",
                    status=429,
                    error_type="rate_limit_error",
                )
    except RequestError as err:
        return _refuse(state, err, request_id, headers, rate_limited=rate_limited)
    if delay > 0:
        await asyncio.sleep(delay)
    if fault == "stream_error" and not parsed.stream:
        fault = "529"  # an in-stream error needs a stream; the nearest non-stream failure is overload
    if fault in ("529", "500", "html503"):
        state.record_status(503 if fault == "html503" else int(fault), fault=fault)
        return status_fault(fault, request_id, _with_limits(state, headers))
    if fault == "drop":
        state.record_fault(fault)
        if request.transport is not None:
            request.transport.abort()  # no status line at all: the client sees a dropped connection
        # never sent; aiohttp notices the closed transport and drops this quietly
        return web.Response(status=499)
    if fault == "slow":
        state.record_fault(fault)
        # the server may cancel this handler on disconnect or shutdown; the sleep must not hold either up
        await asyncio.sleep(config.slow_s)
        if request.transport is None or request.transport.is_closing():
            return web.Response(status=499)  # the client gave up: nobody receives (or pays for) an answer
    if state.spend_exhausted():
        # re-checked here: answers may have completed while this request waited
        return _refuse(state, _spend_cap(config), request_id, headers)
    # only answers need the digest; for a large image request it is the costliest step after decoding
    digest = request_digest(body)
    cached = (cache_write, cache_read)
    if parsed.stream:
        return await _stream(
            request,
            state,
            parsed,
            digest,
            headers,
            cached,
            error=fault == "stream_error",
            bad=bad_tool_input,
            refuse=refuse,
            truncate=truncate,
        )
    answer = make_answer(parsed, digest, bad_tool_input=bad_tool_input, refuse=refuse, truncate=truncate)
    answer = _cached(answer, cached, parsed.cache_ttl)
    state.cache_write(parsed)
    state.record_answer(digest, answer)
    if config.shape == "openai":
        return _json(200, openai_completion(answer, int(time.time())), _with_limits(state, headers))
    return _json(200, anthropic_message(answer), _with_limits(state, headers))


def _cached(answer: Answer, cached: tuple[int, int], ttl: str) -> Answer:
    """The answer with its input split into uncached, cache-write and cache-read tokens."""
    write, read = cached
    if not write and not read:
        return answer
    return replace(
        answer,
        input_tokens=answer.input_tokens - write - read,
        cache_creation_input_tokens=write,
        cache_read_input_tokens=read,
        cache_ttl=ttl,
    )


def _with_limits(state: SandboxState, headers: dict[str, str]) -> dict[str, str]:
    if state.send_limit_headers:
        headers.update(state.limiter.headers())
    return headers


def _limits_text(config: SandboxConfig) -> str:
    limits = {
        "requests_per_minute": config.requests_per_minute,
        "input_tokens_per_minute": config.input_tokens_per_minute,
        "output_tokens_per_minute": config.output_tokens_per_minute,
    }
    return ", ".join(f"{name}={value:g}" for name, value in limits.items() if value is not None)


async def _stream(
    request: web.Request,
    state: SandboxState,
    parsed: ParsedRequest,
    digest: str,
    headers: dict[str, str],
    cached: tuple[int, int],
    *,
    error: bool,
    bad: bool = False,
    refuse: bool = False,
    truncate: bool = False,
) -> web.StreamResponse:
    """A 200 event stream: the whole answer, or (``error``) a start followed by an overload event."""
    openai = state.config.shape == "openai"
    response = web.StreamResponse(status=200, headers=_with_limits(state, headers))
    response.content_type = "text/event-stream"
    response.headers["cache-control"] = "no-cache"
    if error:
        state.record_status(200, fault="stream_error")
        await response.prepare(request)
        if openai:
            failure = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
            await response.write(f"data: {json.dumps(failure)}\n\n".encode())
        else:
            await response.write(message_start(new_id("msg"), "sandbox:" + parsed.model, parsed.input_tokens))
            await response.write(error_event("overloaded_error", "Overloaded"))
        await response.write_eof()
        return response
    answer = make_answer(parsed, digest, bad_tool_input=bad, refuse=refuse, truncate=truncate)
    answer = _cached(answer, cached, parsed.cache_ttl)
    state.cache_write(parsed)
    state.record_answer(digest, answer)
    await response.prepare(request)
    if openai:
        await response.write(openai_chunks(answer, int(time.time())))
    else:
        await response.write(message_start(answer.message_id, answer.model, answer.input_tokens, cached))
        await response.write(anthropic_events(answer))
    await response.write_eof()
    return response
