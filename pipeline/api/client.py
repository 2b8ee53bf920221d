"""The only module that talks to the Messages endpoint: one request per call, paced, retried, typed.

:class:`MessagesClient` owns the run's connections (the API requests' own pool, whose carrier is
:mod:`pipeline.api.transport`, and an ``httpx.AsyncClient`` with explicit ``Timeout`` and
``Limits`` for image downloads), the rate limiters and the shared pause
(:mod:`pipeline.api.ratelimit`). :meth:`MessagesClient.send` waits for the pause and the budgets,
posts one payload (streamed when it asks for ``stream``), retries what can be retried with
tenacity, and returns a :class:`~pipeline.records.Sent` or raises:

- :class:`~pipeline.errors.PermanentApiError`: this request will never succeed; no retry.
- :class:`~pipeline.errors.FatalApiError`: no request can succeed (bad key, spend cap); stop the run.
- the last :class:`~pipeline.errors.RetryableApiError` once ``max_attempts`` are used up.

Every error carries ``.attempts``. The API key travels only in the request headers of the Messages
endpoint: never in a client's defaults (the runner downloads images with the ``httpx`` one), a
message, a log line or a repr. Failures are typed by :mod:`pipeline.api.classify`, retried by the
policy of :mod:`pipeline.api.retry` (shared with the Batches endpoints), and reply bodies and event
streams are parsed by :mod:`pipeline.api.replies`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from tenacity import AsyncRetrying

from pipeline.api.admission import Budgets, Gate
from pipeline.api.classify import classify, error_from_event, one_line, parse_failure, transport_failure
from pipeline.api.config import CONNECT_TIMEOUT_S, ClientConfig
from pipeline.api.ratelimit import Pacer, PauseGate, RateLimits, loop_clock
from pipeline.api.replies import SseDecoder, StreamAssembler, parse_message
from pipeline.api.retry import RetryDetails
from pipeline.api.transport import Answer, Carrier, encode_json, open_carrier
from pipeline.errors import ApiError, RetryableApiError
from pipeline.records import Reply, Sent
from pipeline.wire import MessagePayload

__all__ = ["ClientConfig", "MessagesClient", "RetryDetails"]

log = logging.getLogger("pipeline.client")

# what /v1/messages/count_tokens takes (https://platform.claude.com/docs/en/build-with-claude/token-counting;
# anthropic-sdk-python 2.15.0 message_count_tokens_params.py): no max_tokens, sampling or stream
COUNT_TOKENS_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
)
# connections beyond the Messages requests, for the image downloads that share the pool
DOWNLOAD_HEADROOM = 32


class MessagesClient:
    """Sends Messages requests for one run. Use as ``async with MessagesClient(config) as client``.

    :param transport: an ``httpx`` transport; tests pass ``httpx.MockTransport``.
    :param sleep: what retries and the shared pause wait with; tests pass a recorder.
    :param on_retry: called with a :class:`RetryDetails` before every retry wait.
    :param clock: monotonic seconds for the shared pause and for latencies (default: the running loop's
        clock for the pause, a high-resolution timer for latencies).
    :param limits: budgets shared with other clients (:mod:`pipeline.api.admission`), instead of the
        client's own ``RateLimits`` built from ``config``.
    :param gate: a pause shared with other clients, instead of the client's own ``PauseGate``.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[RetryDetails], None] | None = None,
        clock: Callable[[], float] | None = None,
        limits: Budgets | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.config = config
        self._shared_limits = limits
        self._shared_gate = gate
        self._transport = transport
        self._sleep = sleep
        self._on_retry = on_retry
        self._clock = clock
        self._policy = config.retry_policy()
        self._http: httpx.AsyncClient | None = None
        self._wire: Carrier | None = None
        self._limits: Budgets | None = None
        self._gate: Gate | None = None
        self._slots: asyncio.Semaphore | None = None
        self._count_pacer: Pacer | None = None
        self.requests_sent = 0  # HTTP requests started, retries included
        self.retries = 0  # waits before another attempt

    def __repr__(self) -> str:
        return (
            f"MessagesClient({self.config.endpoint!r}, requests_sent={self.requests_sent}, "
            f"retries={self.retries})"
        )

    async def __aenter__(self) -> MessagesClient:
        config = self.config
        self._http = config.open_http(
            self._transport,
            limits=httpx.Limits(
                max_connections=config.concurrency + DOWNLOAD_HEADROOM,
                max_keepalive_connections=config.concurrency,
            ),
            # this client fetches image URLs; image hosts redirect (the API requests opt out: _exchange)
            follow_redirects=True,
        )
        # what carries the API requests: aiohttp's pool, or the test's transport through self._http
        self._wire = open_carrier(config, self._http, pooled=self._transport is None)
        self._limits = self._shared_limits
        if self._limits is None:
            self._limits = RateLimits(
                requests_per_minute=config.requests_per_minute,
                input_tokens_per_minute=config.input_tokens_per_minute,
                output_tokens_per_minute=config.output_tokens_per_minute,
                clock=self._clock,
                slow_start=config.slow_start,
                concurrency=config.concurrency,
            )
        self._gate = self._shared_gate
        if self._gate is None:
            self._gate = PauseGate(clock=self._clock or loop_clock(), sleep=self._sleep)
        self._slots = asyncio.Semaphore(config.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        wire, self._wire = self._wire, None
        http, self._http = self._http, None
        if wire is not None:
            await wire.aclose()
        if http is not None:
            await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The ``httpx`` client for image downloads (open only inside ``async with``); it carries no
        credentials. The API requests have a connection pool of their own (:mod:`pipeline.api.transport`)."""
        return self._require_open()[0]

    @property
    def gate(self) -> Gate:
        """The pause every send honours."""
        return self._require_open()[1]

    @property
    def limits(self) -> Budgets:
        """The run's request and token budgets."""
        return self._require_open()[2]

    def _require_open(self) -> tuple[httpx.AsyncClient, Gate, Budgets, asyncio.Semaphore]:
        if self._http is None or self._gate is None or self._limits is None or self._slots is None:
            raise RuntimeError("MessagesClient is not open: use it inside `async with`")
        return self._http, self._gate, self._limits, self._slots

    @property
    def _carrier(self) -> Carrier:
        if self._wire is None:
            raise RuntimeError("MessagesClient is not open: use it inside `async with`")
        return self._wire

    async def send(self, payload: MessagePayload, *, input_tokens: int) -> Sent:
        """Send one request, retrying what can be retried; see the module docstring for what it raises.

        :param input_tokens: the caller's estimate, acquired from the input budget before sending.
        """
        self._require_open()  # fail before any waiting, not after the first backoff
        started = time.monotonic()  # tenacity's clock, for the policy's max_total_s
        try:
            reply, latency_ms = await self._attempt(payload, input_tokens, 1)
        except RetryableApiError as error:
            failed = error
        else:
            return Sent(reply=reply, attempts=1, latency_ms=latency_ms)
        # The first attempt runs outside tenacity: setting up its loop cost more than the rest of a
        # successful send. Once it has failed retryably, tenacity takes that failure as its own
        # attempt 1 (started when it really started) and decides as it always has: same policy.
        sent: Sent | None = None
        async for attempt in self._retrying():
            with attempt:
                number = attempt.retry_state.attempt_number
                if number == 1:
                    attempt.retry_state.start_time = started
                    raise failed
                reply, latency_ms = await self._attempt(payload, input_tokens, number)
                sent = Sent(reply=reply, attempts=number, latency_ms=latency_ms)
        assert sent is not None  # tenacity either ran the block to success or raised
        return sent

    async def count_tokens(self, payload: MessagePayload) -> int:
        """Input tokens of ``payload`` as ``/v1/messages/count_tokens`` counts them (free, no answer).

        Only the fields that endpoint takes are sent. Paced by ``requests_per_minute`` (give the
        endpoint's own limit, see the rate-limits docs) and retried like :meth:`send`; raises the same errors.
        """
        self._require_open()
        if self._count_pacer is None and self.config.requests_per_minute is not None:
            # its own bucket: count_tokens has a limit apart from the Messages limits (rate-limits docs)
            self._count_pacer = Pacer(self.config.requests_per_minute)
        body = {key: value for key, value in payload.items() if key in COUNT_TOKENS_FIELDS}
        counted = 0
        async for attempt in self._retrying():
            with attempt:
                counted = await self._count_once(body, attempt.retry_state.attempt_number)
        return counted

    def _retrying(self) -> AsyncRetrying:
        """The retry loop of every request (:mod:`pipeline.api.retry`): one policy for every endpoint."""
        return self._policy.retrying(sleep=self._sleep, before_sleep=self._before_sleep)

    async def _count_once(self, body: dict[str, Any], number: int) -> int:
        _, gate, _, slots = self._require_open()
        async with slots:
            await gate.wait()
            if self._count_pacer is not None:
                await self._count_pacer.acquire(1)
            self.requests_sent += 1
            url = self.config.url("/v1/messages/count_tokens")
            try:
                try:
                    async with self._carrier.post(url, encode_json(body), self._json_headers()) as answer:
                        status, headers, content = answer.status, answer.headers, await answer.read()
                except (httpx.TransportError, httpx.DecodingError) as exc:
                    raise self._transport_failure(exc) from exc
                request_id = headers.get("request-id")
                if not 200 <= status < 300:
                    raise classify(status, headers, content)
                try:
                    counted = json.loads(content)["input_tokens"]
                except (ValueError, TypeError, KeyError):
                    counted = None
                if not isinstance(counted, int) or isinstance(counted, bool):
                    raise parse_failure("count_tokens reply has no integer input_tokens", 200, request_id)
            except ApiError as error:
                error.attempts = number
                self.config.redact(error)
                self._pause_all(error, number)
                raise
        return counted

    async def _attempt(self, payload: MessagePayload, input_tokens: int, number: int) -> tuple[Reply, float]:
        """One attempt: wait for the pause and the budgets, then one HTTP exchange."""
        _, gate, limits, slots = self._require_open()
        async with slots:
            while True:
                await gate.wait()
                max_tokens = payload["max_tokens"]
                reservation = await limits.acquire(input_tokens=input_tokens, max_tokens=max_tokens)
                if not gate.paused:
                    break
                limits.release(reservation)
                # A 429 arrived while this request waited for budget. Sending the moment the pause
                # ends would release every such request at once, a burst the server refuses again:
                # queue behind the pause and take budget afresh instead.
            self.requests_sent += 1
            started = self._elapsed()
            try:
                reply = await self._exchange(payload)
            except ApiError as error:
                error.attempts = number
                self.config.redact(error)
                if isinstance(error, RetryableApiError) and error.error_type == "rate_limit_error":
                    limits.throttled()
                self._pause_all(error, number)
                raise
            else:
                latency_ms = (self._elapsed() - started) * 1000.0
                limits.answered(latency_ms / 1000.0)
            finally:
                limits.release(reservation)
        # outside the slot: paying a usage debt needs no connection
        await limits.settle(reservation, reply.usage)
        return reply, latency_ms

    async def _exchange(self, payload: MessagePayload) -> Reply:
        """POST the payload and read the reply; every failure comes out as an ``ApiError``."""
        stream = bool(payload.get("stream"))
        headers = self._json_headers(accept="text/event-stream" if stream else "application/json")
        try:
            # never follows a redirect: it would carry x-api-key to whatever host the redirect names
            async with self._carrier.post(self.config.endpoint, encode_json(payload), headers) as answer:
                self.limits.learn(answer.headers)
                if stream:
                    return await self._read_stream(answer)
                return self._read_reply(answer.status, answer.headers, await answer.read())
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # timed out, refused, reset or dropped mid-reply: the next attempt may get through
            raise self._transport_failure(exc) from exc

    def _json_headers(self, *, accept: str = "application/json") -> dict[str, str]:
        return {**self.config.headers(accept=accept), "content-type": "application/json"}

    def _transport_failure(self, exc: httpx.HTTPError) -> RetryableApiError:
        return transport_failure(exc, timeout_s=self.config.timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S)

    def _read_reply(self, status: int, headers: Mapping[str, str], body: bytes) -> Reply:
        request_id = headers.get("request-id")
        if not 200 <= status < 300:
            raise classify(status, headers, body)
        try:
            data = json.loads(body)
        except ValueError:
            raise parse_failure(
                f"reply is not JSON: {one_line(body.decode('utf-8', 'replace'), 80)!r}", status, request_id
            ) from None
        if not isinstance(data, dict):
            raise parse_failure(f"reply is a JSON {type(data).__name__}, not an object", status, request_id)
        if data.get("type") == "error":
            raise error_from_event(data, request_id)
        try:
            return parse_message(data, request_id)
        except (ValueError, TypeError) as exc:
            raise parse_failure(str(exc), status, request_id) from None

    async def _read_stream(self, answer: Answer) -> Reply:
        status, headers = answer.status, answer.headers
        if not 200 <= status < 300 or "json" in headers.get("content-type", ""):
            # an error, or a server that ignored `stream` and sent the whole Message as JSON
            return self._read_reply(status, headers, await answer.read())
        request_id = headers.get("request-id")
        decoder = SseDecoder()
        assembler = StreamAssembler(request_id)
        try:
            async for line in answer.lines():
                if (event := decoder.feed(line)) is not None:
                    assembler.feed_sse(event)
                    if assembler.done:
                        break  # nothing after message_stop matters; don't wait for the server to close
            else:
                if (event := decoder.flush()) is not None:
                    assembler.feed_sse(event)
        except (ValueError, TypeError) as exc:
            raise parse_failure(f"bad stream event: {one_line(str(exc), 120)}", status, request_id) from None
        return assembler.finish()

    def _elapsed(self) -> float:
        """Seconds on the client's clock: the injected one (tests), else a high-resolution timer."""
        return self._clock() if self._clock is not None else time.perf_counter()

    def _before_sleep(self, details: RetryDetails) -> None:
        self.retries += 1
        error = details.error
        log.info(
            "attempt %d/%d failed: %s; retrying in %.2f s%s",
            details.attempt,
            self.config.max_attempts,
            error,
            details.wait_s,
            f" (request-id {error.request_id})" if error.request_id else "",
        )
        if self._on_retry is not None:
            self._on_retry(details)

    def _pause_all(self, error: ApiError, attempt: int) -> None:
        """A 429, or any answer with ``retry-after``, holds every sender, not just this one."""
        if not isinstance(error, RetryableApiError):
            return
        if error.retry_after is not None:
            pause = min(error.retry_after, self._policy.max_wait_s)
        elif error.status == 429:
            pause = self._policy.backoff_ceiling(attempt)
        else:
            return
        log.debug("pausing all requests for %.2f s after HTTP %s", pause, error.status)
        self.gate.pause(pause)
