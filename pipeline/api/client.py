"""The only module that talks to the Messages endpoint: one request per call, paced, retried, typed.

:class:`MessagesClient` owns the run's ``httpx.AsyncClient`` (explicit ``Timeout`` and ``Limits``),
the rate limiters and the shared pause (:mod:`pipeline.api.ratelimit`). :meth:`MessagesClient.send`
waits for the pause and the budgets, posts one payload (streamed when it asks for ``stream``),
retries what can be retried with tenacity, and returns a :class:`~pipeline.records.Sent` or raises:

- :class:`~pipeline.errors.PermanentApiError`: this request will never succeed; no retry.
- :class:`~pipeline.errors.FatalApiError`: no request can succeed (bad key, spend cap); stop the run.
- the last :class:`~pipeline.errors.RetryableApiError` once ``max_attempts`` are used up.

Every error carries ``.attempts``. The API key travels only in the request headers of the Messages
endpoint: never in the shared client's defaults (the runner downloads images with it), a message,
a log line or a repr. :func:`classify` (pure) turns a failed response into the right error; reply
bodies and event streams are parsed by :mod:`pipeline.api.replies`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from pipeline.api.classify import (
    _describe,
    _parse_error,
    classify,
    error_from_event,
    one_line,
)
from pipeline.api.ratelimit import Pacer, PauseGate, RateLimits, loop_clock
from pipeline.api.replies import SseDecoder, StreamAssembler, parse_message
from pipeline.errors import ApiError, RetryableApiError
from pipeline.records import Reply, Sent
from pipeline.wire import MessagePayload

__all__ = ["ClientConfig", "MessagesClient", "RetryDetails", "classify"]

log = logging.getLogger("pipeline.client")

USER_AGENT = "pipeline/0.1 (+httpx)"
# what /v1/messages/count_tokens takes (reference §9): no max_tokens, sampling or stream
COUNT_TOKENS_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
CONNECT_TIMEOUT_S = 10.0
# connections beyond the Messages requests, for the image downloads that share the pool
DOWNLOAD_HEADROOM = 32
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where requests go, how they authenticate, and how hard the client may push.

    :param base_url: the server root; requests go to ``{base_url}/v1/messages``.
    :param api_key: sent as ``x-api-key`` or ``Authorization: Bearer``; never shown in a repr.
    :param max_attempts: attempts per request, the first included.
    :param concurrency: requests in flight at once; also sizes the connection pool.
    :param max_retry_wait_s: the longest single wait, whether the server asked for it or backoff chose it.
    :param slow_start: while the server states no rate limits, open with one request and ramp the pace
        up until the first 429 (:mod:`pipeline.api.ratelimit`), instead of opening with a full burst.
    """

    base_url: str
    api_key: str = field(repr=False)
    auth: Literal["x-api-key", "bearer"] = "x-api-key"
    anthropic_version: str = "2023-06-01"
    timeout_s: float = 120.0
    max_attempts: int = 8
    concurrency: int = 16
    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    max_retry_wait_s: float = 120.0
    slow_start: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    @property
    def endpoint(self) -> str:
        """The Messages URL."""
        return f"{self.base_url.rstrip('/')}/v1/messages"


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What the retry hook receives before each wait.

    :param attempt: the attempt that just failed (1 for the first request).
    :param wait_s: how long the client will wait before the next attempt.
    :param error: the failure being retried.
    """

    attempt: int
    wait_s: float
    error: ApiError


class MessagesClient:
    """Sends Messages requests for one run. Use as ``async with MessagesClient(config) as client``.

    :param transport: an ``httpx`` transport; tests pass ``httpx.MockTransport``.
    :param sleep: what retries and the shared pause wait with; tests pass a recorder.
    :param on_retry: called with a :class:`RetryDetails` before every retry wait.
    :param clock: monotonic seconds for the shared pause (default: the running loop's clock).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_retry: Callable[[RetryDetails], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self._sleep = sleep
        self._on_retry = on_retry
        self._clock = clock
        self._random = random.Random()
        self._http: httpx.AsyncClient | None = None
        self._limits: RateLimits | None = None
        self._gate: PauseGate | None = None
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
        self._http = httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(config.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=config.concurrency + DOWNLOAD_HEADROOM,
                max_keepalive_connections=config.concurrency,
            ),
            # no auth here: this client also fetches image URLs, which must never see the key
            headers={"user-agent": USER_AGENT},
            # image hosts redirect; the Messages request itself opts out (see _exchange)
            follow_redirects=True,
        )
        self._limits = RateLimits(
            requests_per_minute=config.requests_per_minute,
            input_tokens_per_minute=config.input_tokens_per_minute,
            output_tokens_per_minute=config.output_tokens_per_minute,
            clock=self._clock,
            slow_start=config.slow_start,
            concurrency=config.concurrency,
        )
        self._gate = PauseGate(clock=self._clock or loop_clock(), sleep=self._sleep)
        self._slots = asyncio.Semaphore(config.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The shared ``httpx`` client (open only inside ``async with``); it carries no credentials."""
        return self._require_open()[0]

    @property
    def gate(self) -> PauseGate:
        """The pause every send honours."""
        return self._require_open()[1]

    @property
    def limits(self) -> RateLimits:
        """The run's request and token budgets."""
        return self._require_open()[2]

    def _require_open(self) -> tuple[httpx.AsyncClient, PauseGate, RateLimits, asyncio.Semaphore]:
        if self._http is None or self._gate is None or self._limits is None or self._slots is None:
            raise RuntimeError("MessagesClient is not open: use it inside `async with`")
        return self._http, self._gate, self._limits, self._slots

    async def send(self, payload: MessagePayload, *, input_tokens: int) -> Sent:
        """Send one request, retrying what can be retried; see the module docstring for what it raises.

        :param input_tokens: the caller's estimate, acquired from the input budget before sending.
        """
        self._require_open()  # fail before any waiting, not after the first backoff
        retrying = self._retrying()
        sent: Sent | None = None
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                reply, latency_ms = await self._attempt(payload, input_tokens, number)
                sent = Sent(reply=reply, attempts=number, latency_ms=latency_ms)
        assert sent is not None  # tenacity either ran the block to success or raised
        return sent

    async def count_tokens(self, payload: MessagePayload) -> int:
        """Input tokens of ``payload`` as ``/v1/messages/count_tokens`` counts them (free, no answer).

        Only the fields that endpoint takes are sent. Paced by ``requests_per_minute`` (give the
        endpoint's own limit, reference §6) and retried like :meth:`send`; raises the same errors.
        """
        self._require_open()
        if self._count_pacer is None and self.config.requests_per_minute is not None:
            # its own bucket: count_tokens has a limit apart from the Messages limits (reference §6)
            self._count_pacer = Pacer(self.config.requests_per_minute)
        body = {key: value for key, value in payload.items() if key in COUNT_TOKENS_FIELDS}
        retrying = self._retrying()
        counted = 0
        async for attempt in retrying:
            with attempt:
                counted = await self._count_once(body, attempt.retry_state.attempt_number)
        return counted

    def _retrying(self) -> AsyncRetrying:
        """The retry policy of every request: retryable errors only, bounded attempts, server-led waits."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableApiError),
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    async def _count_once(self, body: dict[str, Any], number: int) -> int:
        http, gate, _, slots = self._require_open()
        async with slots:
            await gate.wait()
            if self._count_pacer is not None:
                await self._count_pacer.acquire(1)
            self.requests_sent += 1
            url = f"{self.config.base_url.rstrip('/')}/v1/messages/count_tokens"
            try:
                try:
                    response = await http.post(
                        url, json=body, headers=self._request_headers(stream=False), follow_redirects=False
                    )
                except httpx.TimeoutException as exc:
                    raise RetryableApiError(
                        self._describe_timeout(exc), status=None, error_type="timeout_error"
                    ) from exc
                except httpx.TransportError as exc:
                    raise RetryableApiError(
                        _describe(exc), status=None, error_type="connection_error"
                    ) from exc
                request_id = response.headers.get("request-id")
                if not response.is_success:
                    raise classify(response.status_code, response.headers, response.content)
                try:
                    counted = json.loads(response.content)["input_tokens"]
                except (ValueError, TypeError, KeyError):
                    counted = None
                if not isinstance(counted, int) or isinstance(counted, bool):
                    raise _parse_error("count_tokens reply has no integer input_tokens", 200, request_id)
            except ApiError as error:
                error.attempts = number
                self._redact(error)
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
            started = time.perf_counter()
            try:
                reply = await self._exchange(payload)
            except ApiError as error:
                error.attempts = number
                self._redact(error)
                if isinstance(error, RetryableApiError) and error.error_type == "rate_limit_error":
                    limits.throttled()
                self._pause_all(error, number)
                raise
            else:
                latency_ms = (time.perf_counter() - started) * 1000.0
                limits.answered(latency_ms / 1000.0)
            finally:
                limits.release(reservation)
        # outside the slot: paying a usage debt needs no connection
        await limits.settle(reservation, reply.usage)
        return reply, latency_ms

    async def _exchange(self, payload: MessagePayload) -> Reply:
        """POST the payload and read the reply; every failure comes out as an ``ApiError``."""
        stream = bool(payload.get("stream"))
        headers = self._request_headers(stream=stream)
        url = self.config.endpoint
        try:
            # no redirects: httpx would carry x-api-key to whatever host a redirect names
            if stream:
                async with self.http.stream(
                    "POST", url, json=payload, headers=headers, follow_redirects=False
                ) as response:
                    self.limits.learn(response.headers)
                    return await self._read_stream(response)
            response = await self.http.post(url, json=payload, headers=headers, follow_redirects=False)
            self.limits.learn(response.headers)
            return self._read_reply(response.status_code, response.headers, response.content)
        except httpx.TimeoutException as exc:
            raise RetryableApiError(
                self._describe_timeout(exc), status=None, error_type="timeout_error"
            ) from exc
        except httpx.TransportError as exc:
            # refused, reset or dropped mid-reply (RemoteProtocolError): the next attempt may get through
            raise RetryableApiError(_describe(exc), status=None, error_type="connection_error") from exc
        except httpx.DecodingError as exc:
            raise RetryableApiError(_describe(exc), status=None, error_type="parse_error") from exc

    def _describe_timeout(self, exc: httpx.TimeoutException) -> str:
        if isinstance(exc, httpx.ConnectTimeout):
            limit = f"no connection within {CONNECT_TIMEOUT_S:g} s"
        elif isinstance(exc, httpx.PoolTimeout):
            limit = f"no free pooled connection within {self.config.timeout_s:g} s"
        else:
            limit = f"timeout {self.config.timeout_s:g} s"
        return f"{_describe(exc)} ({limit})"

    def _request_headers(self, *, stream: bool) -> dict[str, str]:
        config = self.config
        headers = {
            "anthropic-version": config.anthropic_version,
            "accept": "text/event-stream" if stream else "application/json",
        }
        if config.auth == "bearer":
            headers["authorization"] = f"Bearer {config.api_key}"
        else:
            headers["x-api-key"] = config.api_key
        return headers

    def _read_reply(self, status: int, headers: httpx.Headers, body: bytes) -> Reply:
        request_id = headers.get("request-id")
        if not 200 <= status < 300:
            raise classify(status, headers, body)
        try:
            data = json.loads(body)
        except ValueError:
            raise _parse_error(
                f"reply is not JSON: {one_line(body.decode('utf-8', 'replace'), 80)!r}", status, request_id
            ) from None
        if not isinstance(data, dict):
            raise _parse_error(f"reply is a JSON {type(data).__name__}, not an object", status, request_id)
        if data.get("type") == "error":
            raise error_from_event(data, request_id)
        try:
            return parse_message(data, request_id)
        except (ValueError, TypeError) as exc:
            raise _parse_error(str(exc), status, request_id) from None

    async def _read_stream(self, response: httpx.Response) -> Reply:
        status, headers = response.status_code, response.headers
        if not response.is_success or "json" in headers.get("content-type", ""):
            # an error, or a server that ignored `stream` and sent the whole Message as JSON
            return self._read_reply(status, headers, await response.aread())
        request_id = headers.get("request-id")
        decoder = SseDecoder()
        assembler = StreamAssembler(request_id)
        try:
            async for line in response.aiter_lines():
                if (event := decoder.feed(line)) is not None:
                    assembler.feed_sse(event)
                    if assembler.done:
                        break  # nothing after message_stop matters; don't wait for the server to close
            else:
                if (event := decoder.flush()) is not None:
                    assembler.feed_sse(event)
        except (ValueError, TypeError) as exc:
            raise _parse_error(f"bad stream event: {one_line(str(exc), 120)}", status, request_id) from None
        return assembler.finish()

    def _wait(self, state: RetryCallState) -> float:
        """The server's delay when it gave one (capped), else jittered exponential backoff."""
        error = _failure(state)
        if error.retry_after is not None:
            return min(error.retry_after, self.config.max_retry_wait_s)
        ceiling = self._backoff_ceiling(state.attempt_number)
        # "equal" jitter: never less than half the ceiling, so a storm of 529s still spreads out
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _backoff_ceiling(self, attempt: int) -> float:
        exponent = min(attempt - 1, 16)  # 0.5 s doubling; the cap is reached long before 2**16
        return min(BACKOFF_BASE_S * 2.0**exponent, BACKOFF_CAP_S, self.config.max_retry_wait_s)

    def _before_sleep(self, state: RetryCallState) -> None:
        error = _failure(state)
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        self.retries += 1
        log.info(
            "attempt %d/%d failed: %s; retrying in %.2f s%s",
            state.attempt_number,
            self.config.max_attempts,
            error,
            wait_s,
            f" (request-id {error.request_id})" if error.request_id else "",
        )
        if self._on_retry is not None:
            self._on_retry(RetryDetails(attempt=state.attempt_number, wait_s=wait_s, error=error))

    def _pause_all(self, error: ApiError, attempt: int) -> None:
        """A 429, or any answer with ``retry-after``, holds every sender, not just this one."""
        if not isinstance(error, RetryableApiError):
            return
        if error.retry_after is not None:
            pause = min(error.retry_after, self.config.max_retry_wait_s)
        elif error.status == 429:
            pause = self._backoff_ceiling(attempt)
        else:
            return
        log.debug("pausing all requests for %.2f s after HTTP %s", pause, error.status)
        self.gate.pause(pause)

    def _redact(self, error: ApiError) -> None:
        """Blank the key out of a message built from server text (a proxy may echo request headers)."""
        key = self.config.api_key
        if key and key in error.message:
            error.message = error.message.replace(key, REDACTED)
            error.args = (error.message,)


# --------------------------------------------------------------------------- classification


def _failure(state: RetryCallState) -> ApiError:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    # the retry predicate admits only RetryableApiError, so this holds whenever tenacity asks
    assert isinstance(error, ApiError), error
    return error
