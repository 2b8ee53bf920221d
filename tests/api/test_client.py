"""MessagesClient against scripted ``httpx.MockTransport`` handlers: retries, errors, streams, pauses.

No network and no real waiting: the client gets a fake clock whose ``sleep`` records each delay and
moves the clock to the sleeper's deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import tenacity

from fakes import FakeClock
from pipeline.api import client as client_module
from pipeline.api.classify import classify, html_summary, parse_retry_after
from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.api.ratelimit import PauseGate, RateLimits
from pipeline.api.retry import RetryDetails, RetryPolicy
from pipeline.errors import ApiError, FatalApiError, PermanentApiError, RetryableApiError
from pipeline.records import ToolCall, Usage
from pipeline.wire import MessagePayload
from scripted import (
    START,
    STREAM_EVENTS,
    ScriptedApi,
    Step,
    api_error,
    raising,
    reply,
    sse_lines,
    stream,
)

KEY = "sk-ant-api03-SECRET-0123456789abcdef-do-not-leak"
BASE = "http://api.test"


def payload(text: str = "hi", *, stream: bool = False) -> MessagePayload:
    """A minimal Messages payload."""
    body: MessagePayload = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }
    if stream:
        body["stream"] = True
    return body


class Harness:
    """A client wired to a script, a fake clock and a retry recorder."""

    def __init__(
        self,
        script: ScriptedApi,
        *,
        clock: FakeClock | None = None,
        on_retry: Callable[[RetryDetails], None] | None = None,
        **config: Any,
    ) -> None:
        self.script = script
        self.clock = clock or FakeClock()
        self.retries: list[RetryDetails] = []
        self.config = ClientConfig(**{"base_url": BASE, "api_key": KEY, **config})

        def record(details: RetryDetails) -> None:
            self.retries.append(details)
            if on_retry is not None:
                on_retry(details)

        self.client = MessagesClient(
            self.config,
            transport=httpx.MockTransport(script),
            sleep=self.clock.sleep,
            on_retry=record,
            clock=self.clock,
        )

    async def send(self, body: MessagePayload | None = None) -> Any:
        """Open the client, send one payload, close it."""
        async with self.client:
            return await self.client.send(body or payload(), input_tokens=10)

    async def fail(self, body: MessagePayload | None = None) -> ApiError:
        """Send, expecting an ApiError, and return it."""
        with pytest.raises(ApiError) as caught:
            await self.send(body)
        error: ApiError = caught.value
        return error


# ---------------------------------------------------------------- classification (pure)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529, 599])
def test_retryable_statuses(status: int) -> None:
    """408, 409, 429 and every 5xx are retryable."""
    assert type(classify(status, {}, b"")) is RetryableApiError


@pytest.mark.parametrize("status", [400, 404, 413, 422, 418])
def test_permanent_statuses(status: int) -> None:
    """400, 404, 413, 422 and other 4xx are permanent."""
    assert type(classify(status, {}, b"")) is PermanentApiError


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, "authentication_error"), (402, "billing_error"), (403, "permission_error")],
)
def test_fatal_statuses(status: int, error_type: str) -> None:
    """401, 402 and 403 are fatal, with the API's type derived from the status when the body is empty."""
    error = classify(status, {}, b"")
    assert type(error) is FatalApiError
    assert error.error_type == error_type


def test_spend_limit_429_is_fatal() -> None:
    """A 429 whose error.details.error_code is enforced_spend_limit_reached is fatal."""
    body = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "spend limit",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
    }
    error = classify(429, {}, json.dumps(body).encode())
    assert type(error) is FatalApiError
    assert error.retry_after is None


def test_x_should_retry_overrides_status() -> None:
    """x-should-retry false makes a 500 permanent, true makes a 400 retryable; a 401 stays fatal."""
    assert type(classify(500, {"x-should-retry": "false"}, b"")) is PermanentApiError
    assert type(classify(400, {"x-should-retry": "true"}, b"")) is RetryableApiError
    assert type(classify(401, {"x-should-retry": "true"}, b"")) is FatalApiError


def test_json_error_body_fields() -> None:
    """error.type, error.message and request_id come from the JSON body; the header request-id wins."""
    body = json.dumps(
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_b",
        }
    )
    error = classify(529, {}, body)
    assert (error.error_type, error.message, error.request_id) == ("overloaded_error", "Overloaded", "req_b")
    assert classify(529, {"request-id": "req_h"}, body).request_id == "req_h"
    assert str(error) == "HTTP 529 overloaded_error: Overloaded"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (429, "rate_limit_error"),
        (529, "overloaded_error"),
        (503, "api_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
    ],
)
def test_error_type_derived_from_status(status: int, error_type: str) -> None:
    """Without a JSON body the error type is the one the API uses for that status."""
    assert classify(status, {}, b"oops").error_type == error_type


def test_html_error_page_becomes_one_line() -> None:
    """An HTML page from a proxy becomes ``HTML error page: <title>``."""
    page = (
        "<html><head><title>503 Service Unavailable</title></head>\n"
        "<body><center><h1>503 Service Unavailable</h1></center><hr><center>nginx</center></body></html>\n"
    )
    error = classify(503, {"content-type": "text/html"}, page.encode())
    assert error.message == "HTML error page: 503 Service Unavailable"
    assert "\n" not in str(error)
    assert type(error) is RetryableApiError


def test_html_without_title_uses_visible_text_truncated() -> None:
    """An untitled page uses its text without tags or scripts, cut to about 200 characters."""
    page = (
        "<html><script>var x = 1;</script><body><p>Bad &amp; gateway</p>"
        + "<p>word</p>" * 200
        + "</body></html>"
    )
    summary = html_summary(page)
    assert summary.startswith("Bad & gateway word")
    assert len(summary) <= 200
    assert "var x" not in summary


def test_plain_text_and_empty_bodies() -> None:
    """Plain text is flattened to one line; an empty body names the status phrase."""
    assert classify(502, {}, b"upstream\nconnect error").message == "upstream connect error"
    assert classify(502, {}, b"").message == "502 Bad Gateway (empty body)"


def test_parse_retry_after_headers() -> None:
    """retry-after-ms wins over retry-after; seconds may be a float; zero and junk mean no advice."""
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after": "90"}) == 90.0
    assert parse_retry_after({"retry-after": "0"}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_parse_retry_after_http_date() -> None:
    """An HTTP-date retry-after is the time until that date; a past date is no advice."""
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}, now=now) is None


def test_classify_carries_retry_after() -> None:
    """A 429 with retry-after carries it as ``retry_after``."""
    assert classify(429, {"retry-after": "3"}, b"").retry_after == 3.0


# ---------------------------------------------------------------- success


async def test_success_anthropic_shape_and_request_headers() -> None:
    """A 200 Message parses; the request goes to /v1/messages with x-api-key, version and JSON body."""
    h = Harness(ScriptedApi(reply()))
    sent = await h.send()
    assert sent.reply.text == "ok"
    assert sent.reply.usage == Usage(input_tokens=12, output_tokens=3)
    assert sent.reply.request_id == "req_test"
    assert sent.attempts == 1
    assert sent.latency_ms >= 0
    (request,) = h.script.requests
    assert str(request.url) == f"{BASE}/v1/messages"
    assert request.method == "POST"
    assert request.headers["x-api-key"] == KEY
    assert "authorization" not in request.headers
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == payload()
    assert (h.client.requests_sent, h.client.retries) == (1, 0)


async def test_success_openai_shape() -> None:
    """An OpenAI-like reply from a compatible provider parses into the same Reply."""
    body = {
        "id": "c1",
        "object": "chat.completion",
        "model": "claude-sonnet-4.5",
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"id": "call_1", "function": {"name": "tag", "arguments": '{"a": 1}'}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 4},
        "meta": {"usage": {"credits_used": 1}},
    }
    sent = await Harness(ScriptedApi(reply(body=body))).send()
    assert sent.reply.tool_calls == (ToolCall("call_1", "tag", '{"a":1}'),)
    assert sent.reply.stop_reason == "tool_use"
    assert sent.reply.usage == Usage(input_tokens=9, output_tokens=4)


async def test_bearer_auth_and_base_url_with_slash() -> None:
    """auth="bearer" sends Authorization: Bearer and no x-api-key; a trailing slash in base_url is fine."""
    script = ScriptedApi(reply())
    h = Harness(script, auth="bearer", base_url=BASE + "/", anthropic_version="2026-10-21")
    await h.send()
    (request,) = script.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "x-api-key" not in request.headers
    assert request.headers["anthropic-version"] == "2026-10-21"
    assert str(request.url) == f"{BASE}/v1/messages"


async def test_shared_http_client_carries_no_key_and_explicit_limits() -> None:
    """The shared client (used for image downloads) has no credentials and the configured timeout."""
    h = Harness(ScriptedApi(reply()), timeout_s=33.0)
    async with h.client:
        http = h.client.http
        assert KEY not in str(dict(http.headers))
        assert http.timeout == httpx.Timeout(33.0, connect=10.0)
    with pytest.raises(RuntimeError, match="async with"):
        _ = h.client.http


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
async def test_retryable_status_then_success(status: int) -> None:
    """Each retryable status is retried; attempts and the retries counter count it."""
    h = Harness(ScriptedApi(reply(status, {"error": {"message": "x"}}), reply(status, {}), reply()))
    sent = await h.send()
    assert sent.attempts == 3
    assert (h.client.requests_sent, h.client.retries) == (3, 2)
    assert [d.attempt for d in h.retries] == [1, 2]
    assert all(d.error.status == status and isinstance(d.error, RetryableApiError) for d in h.retries)


async def test_backoff_is_exponential_with_jitter() -> None:
    """Without retry-after, waits grow from 0.5 s doubling, jittered between half and all of that."""
    h = Harness(ScriptedApi(api_error(529, "overloaded_error")), max_attempts=6)
    await h.fail()
    waits = [d.wait_s for d in h.retries]
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    assert h.clock.sleeps == waits  # 529 without retry-after pauses nobody else: one sleep per retry


async def test_backoff_is_capped() -> None:
    """Backoff never exceeds 30 s (or max_retry_wait_s when lower)."""
    h = Harness(ScriptedApi(api_error(500, "api_error")), max_attempts=12)
    await h.fail()
    assert max(d.wait_s for d in h.retries) <= 30.0
    h = Harness(ScriptedApi(api_error(500, "api_error")), max_attempts=12, max_retry_wait_s=3.0)
    await h.fail()
    assert max(d.wait_s for d in h.retries) <= 3.0


async def test_html_503_then_success() -> None:
    """A proxy's HTML 503 is retried and described in one line."""
    page = "<html><head><title>503 Service Unavailable</title></head>\n<body><h1>503</h1><p>nginx</p></body>"
    h = Harness(ScriptedApi(reply(503, text=page, headers={"content-type": "text/html"}), reply()))
    sent = await h.send()
    assert sent.attempts == 2
    (details,) = h.retries
    assert details.error.message == "HTML error page: 503 Service Unavailable"
    assert str(details.error) == "HTTP 503 api_error: HTML error page: 503 Service Unavailable"


@pytest.mark.parametrize(
    ("exc_type", "error_type"),
    [
        (httpx.ReadTimeout, "timeout_error"),
        (httpx.ConnectTimeout, "timeout_error"),
        (httpx.PoolTimeout, "timeout_error"),
        (httpx.ConnectError, "connection_error"),
        (httpx.RemoteProtocolError, "connection_error"),
        (httpx.ReadError, "connection_error"),
    ],
)
async def test_transport_failures_are_retried(exc_type: type[httpx.TransportError], error_type: str) -> None:
    """Timeouts and connection failures (refused, reset, dropped) are retried with status None."""
    h = Harness(ScriptedApi(raising(exc_type, "peer closed connection"), reply()))
    sent = await h.send()
    assert sent.attempts == 2
    (details,) = h.retries
    assert (details.error.status, details.error.error_type) == (None, error_type)
    assert exc_type.__name__ in details.error.message


async def test_garbled_200_is_a_retryable_parse_error() -> None:
    """A 200 that is not JSON, or JSON that is not a Message, is retried as parse_error."""
    h = Harness(
        ScriptedApi(reply(200, text="<html>captive portal</html>"), reply(200, {"hello": 1}), reply())
    )
    sent = await h.send()
    assert sent.attempts == 3
    assert [d.error.error_type for d in h.retries] == ["parse_error", "parse_error"]


async def test_error_body_with_200_maps_by_type() -> None:
    """An error JSON served with status 200 is classified by its error.type."""
    h = Harness(
        ScriptedApi(
            reply(200, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            reply(),
        )
    )
    assert (await h.send()).attempts == 2
    assert h.retries[0].error.error_type == "overloaded_error"


async def test_retry_after_ms_preferred_over_retry_after() -> None:
    """retry-after-ms wins over retry-after."""
    h = Harness(
        ScriptedApi(api_error(429, "rate_limit_error", retry_after_ms="1500", retry_after="9"), reply())
    )
    await h.send()
    assert [d.wait_s for d in h.retries] == [1.5]


async def test_long_retry_after_is_honoured_up_to_the_cap() -> None:
    """A retry-after above 60 s is honoured (unlike the SDK) but capped at max_retry_wait_s."""
    h = Harness(ScriptedApi(api_error(529, "overloaded_error", retry_after="90"), reply()))
    await h.send()
    assert [d.wait_s for d in h.retries] == [90.0]
    h = Harness(
        ScriptedApi(api_error(529, "overloaded_error", retry_after="500"), reply()), max_retry_wait_s=45.0
    )
    await h.send()
    assert [d.wait_s for d in h.retries] == [45.0]


async def test_retry_after_http_date() -> None:
    """retry-after as an HTTP date waits until that date."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    h = Harness(ScriptedApi(api_error(503, "api_error", retry_after=when), reply()))
    await h.send()
    (details,) = h.retries
    assert 28.0 < details.wait_s <= 30.0


async def test_x_should_retry_false_on_500_is_not_retried() -> None:
    """x-should-retry: false turns a 500 into a permanent error after one request."""
    h = Harness(ScriptedApi(api_error(500, "api_error", x_should_retry="false"), reply()))
    error = await h.fail()
    assert type(error) is PermanentApiError
    assert len(h.script.requests) == 1
    assert error.attempts == 1


async def test_x_should_retry_true_on_400_is_retried() -> None:
    """x-should-retry: true makes a 400 retryable."""
    h = Harness(ScriptedApi(api_error(400, "invalid_request_error", x_should_retry="true"), reply()))
    assert (await h.send()).attempts == 2


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
    ],
)
async def test_permanent_errors_send_exactly_once(status: int, error_type: str) -> None:
    """400, 404, 413 and 422 raise PermanentApiError after exactly one request."""
    h = Harness(ScriptedApi(api_error(status, error_type, "bad image"), reply()))
    error = await h.fail()
    assert type(error) is PermanentApiError
    assert (error.status, error.error_type, error.attempts, error.request_id) == (
        status,
        error_type,
        1,
        "req_test",
    )
    assert len(h.script.requests) == 1
    assert h.client.retries == 0


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(401, "authentication_error"), (403, "permission_error"), (402, "billing_error")],
)
async def test_fatal_errors(status: int, error_type: str) -> None:
    """401, 403 and 402 raise FatalApiError after one request."""
    h = Harness(ScriptedApi(api_error(status, error_type), reply()))
    error = await h.fail()
    assert type(error) is FatalApiError
    assert error.error_type == error_type
    assert len(h.script.requests) == 1


async def test_spend_limit_429_is_fatal_and_not_retried() -> None:
    """The spend-cap 429 is fatal, sent once, and pauses nobody."""
    body = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "spend limit reached",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
    }
    h = Harness(ScriptedApi(reply(429, body), reply()))
    async with h.client:
        with pytest.raises(FatalApiError, match="spend limit") as caught:
            await h.client.send(payload(), input_tokens=10)
        assert not h.client.gate.paused
    assert caught.value.attempts == 1
    assert len(h.script.requests) == 1
    assert h.clock.sleeps == []


async def test_exhaustion_raises_the_last_retryable_error() -> None:
    """After max_attempts failures the last RetryableApiError is raised with attempts == max_attempts."""
    h = Harness(
        ScriptedApi(
            api_error(529, "overloaded_error", "first"),
            api_error(500, "api_error", "second"),
            api_error(503, "api_error", "last"),
        ),
        max_attempts=4,
    )
    error = await h.fail()
    assert type(error) is RetryableApiError
    assert (error.status, error.message, error.attempts) == (503, "last", 4)
    assert len(h.script.requests) == 4
    assert (h.client.requests_sent, h.client.retries) == (4, 3)


@pytest.mark.parametrize(("first_takes_s", "retried"), [(9.8, False), (5.0, True)])
async def test_total_time_counts_from_the_first_attempt(
    monkeypatch: pytest.MonkeyPatch, first_takes_s: float, retried: bool
) -> None:
    """No retry starts whose wait would end past ``max_total_s`` after the first attempt began,
    however long that first attempt took (the policy's budget is the whole call's)."""
    h = Harness(ScriptedApi(api_error(529, "overloaded_error"), reply()))
    clock = types.SimpleNamespace(monotonic=h.clock, perf_counter=time.perf_counter)
    monkeypatch.setattr(tenacity, "time", clock)  # tenacity's clock is the harness's fake one
    monkeypatch.setattr(client_module, "time", clock)
    h.client._policy = RetryPolicy(max_attempts=8, max_total_s=10.0)  # first wait: 0.25-0.5 s

    async def slow_529(request: httpx.Request) -> httpx.Response:
        h.clock.now += first_takes_s
        return await api_error(529, "overloaded_error")(request)

    h.script.steps[0] = slow_529
    if retried:
        assert (await h.send()).attempts == 2
    else:
        error = await h.fail()
        assert (error.status, error.attempts, h.retries) == (529, 1, [])


async def test_permanent_after_retries_counts_all_attempts() -> None:
    """A permanent error after retries carries the number of attempts made."""
    h = Harness(
        ScriptedApi(
            api_error(529, "overloaded_error"),
            api_error(529, "overloaded_error"),
            api_error(400, "invalid_request_error"),
        )
    )
    error = await h.fail()
    assert type(error) is PermanentApiError
    assert error.attempts == 3


# ---------------------------------------------------------------- the shared pause


async def test_429_retry_after_pauses_a_concurrent_sender() -> None:
    """A 429 with retry-after holds a second sender until the first one's resume time."""
    clock = FakeClock()
    arrivals: list[tuple[str, float]] = []
    retried = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        tag = json.loads(request.content)["messages"][0]["content"][0]["text"]
        arrivals.append((tag, clock.now))
        if arrivals == [("a", 0.0)]:
            return await api_error(429, "rate_limit_error", retry_after="2")(request)
        return await reply()(request)

    h = Harness(ScriptedApi(handler), clock=clock, on_retry=lambda details: retried.set())
    async with h.client:
        first = asyncio.create_task(h.client.send(payload("a"), input_tokens=1))
        await retried.wait()  # the 429 has been seen and the gate closed
        assert h.client.gate.resume_at == 2.0
        second = await h.client.send(payload("b"), input_tokens=1)
        assert (await first).attempts == 2
    assert second.attempts == 1
    first_b = next(at for tag, at in arrivals if tag == "b")
    assert first_b >= 2.0  # without the gate it would have gone out at 0.0
    # one sleep is the retrying sender's backoff, the other the second sender waiting at the gate
    assert clock.sleeps == [2.0, 2.0]


async def test_clients_handed_one_gate_share_the_pause_of_a_429() -> None:
    """Two clients handed one PauseGate and RateLimits: a 429 answered to one holds the other's sends."""
    clock = FakeClock()
    arrivals: list[tuple[str, float]] = []
    retried = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        tag = json.loads(request.content)["messages"][0]["content"][0]["text"]
        arrivals.append((tag, clock.now))
        if arrivals == [("a", 0.0)]:
            return await api_error(429, "rate_limit_error", retry_after="3")(request)
        return await reply()(request)

    gate = PauseGate(clock=clock, sleep=clock.sleep)
    limits = RateLimits(clock=clock)
    config = ClientConfig(base_url=BASE, api_key=KEY, slow_start=False)
    transport = httpx.MockTransport(ScriptedApi(handler))

    def client(**extra: Any) -> MessagesClient:
        return MessagesClient(
            config, transport=transport, sleep=clock.sleep, clock=clock, limits=limits, gate=gate, **extra
        )

    one, two = client(on_retry=lambda details: retried.set()), client()
    async with one, two:
        assert one.gate is gate
        assert two.gate is gate
        assert two.limits is limits
        first = asyncio.create_task(one.send(payload("a"), input_tokens=1))
        await retried.wait()  # client one has seen its 429
        second = await two.send(payload("b"), input_tokens=1)
        assert (await first).attempts == 2
    assert second.attempts == 1
    assert next(at for tag, at in arrivals if tag == "b") >= 3.0  # held by the other client's 429


async def test_429_without_retry_after_pauses_for_the_backoff() -> None:
    """A 429 with no retry-after still closes the gate, for the backoff ceiling."""
    h = Harness(ScriptedApi(api_error(429, "rate_limit_error"), reply()))
    async with h.client:
        await h.client.send(payload(), input_tokens=1)
        assert h.client.gate.resume_at == 0.5


async def test_slow_start_sends_one_request_until_the_server_has_answered() -> None:
    """With no limits known, the first request goes alone; the others follow its answer, not a burst."""
    events: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        events.append("sent")
        for _ in range(5):
            await asyncio.sleep(0)
        events.append("answered")
        return await reply()(request)

    h = Harness(ScriptedApi(handler), concurrency=4)
    async with h.client:
        await asyncio.gather(*(h.client.send(payload(), input_tokens=1) for _ in range(30)))
        assert not h.client.limits.slow_start  # a fast server: the ramp outgrew what 4 slots can send
    assert events[:3] == ["sent", "answered", "sent"]
    off = Harness(ScriptedApi(handler), concurrency=4, slow_start=False)
    events.clear()
    async with off.client:
        await asyncio.gather(*(off.client.send(payload(), input_tokens=1) for _ in range(4)))
    assert events[:4] == ["sent"] * 4  # without it, every slot opens at once


async def test_concurrency_bounds_requests_in_flight() -> None:
    """No more than ``concurrency`` requests are in flight at once."""
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1
        return await reply()(request)

    h = Harness(ScriptedApi(handler), concurrency=2)
    async with h.client:
        sent = await asyncio.gather(*(h.client.send(payload(), input_tokens=1) for _ in range(6)))
    assert len(sent) == 6
    assert peak == 2


async def test_rate_limits_are_settled_with_real_usage() -> None:
    """With token limits set, each reply's usage feeds the output estimator."""
    h = Harness(
        ScriptedApi(reply()),
        requests_per_minute=600,
        input_tokens_per_minute=60_000,
        output_tokens_per_minute=60_000,
    )
    async with h.client:
        await h.client.send(payload(), input_tokens=5)
        assert h.client.limits.output_estimator.seen == 1
        assert h.client.limits.output_estimator.total == 3


# ---------------------------------------------------------------- streams


async def test_stream_assembles_text_tools_and_usage() -> None:
    """A streamed reply joins text deltas, parses input_json_delta and merges usage."""
    script = ScriptedApi(stream(*STREAM_EVENTS))
    sent = await Harness(script).send(payload(stream=True))
    assert sent.reply.text == "Hi there"
    assert sent.reply.tool_calls == (ToolCall("toolu_1", "tag", '{"tags":["a","b"]}'),)
    assert sent.reply.usage == Usage(input_tokens=20, output_tokens=17)
    assert sent.reply.stop_reason == "tool_use"
    assert sent.reply.request_id == "req_s"
    assert script.requests[0].headers["accept"] == "text/event-stream"
    assert json.loads(script.requests[0].content)["stream"] is True


async def test_stream_error_event_is_retried_then_succeeds() -> None:
    """An overloaded_error event after the 200 is retryable (as a 529) and retried."""
    error = ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    h = Harness(ScriptedApi(stream(START, error), stream(*STREAM_EVENTS)))
    sent = await h.send(payload(stream=True))
    assert sent.attempts == 2
    (details,) = h.retries
    assert type(details.error) is RetryableApiError
    assert (details.error.status, details.error.error_type) == (529, "overloaded_error")


async def test_stream_error_event_invalid_request_is_permanent() -> None:
    """An invalid_request_error event after the 200 is permanent."""
    error = ("error", {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}})
    h = Harness(ScriptedApi(stream(START, error)))
    assert type(await h.fail(payload(stream=True))) is PermanentApiError


async def test_stream_cut_short_is_retried() -> None:
    """A stream that ends before message_stop is a retryable connection_error."""
    h = Harness(ScriptedApi(stream(*STREAM_EVENTS[:4]), stream(*STREAM_EVENTS)))
    sent = await h.send(payload(stream=True))
    assert sent.attempts == 2
    assert h.retries[0].error.error_type == "connection_error"
    assert "ended early" in h.retries[0].error.message


async def test_stream_dropped_mid_body_is_retried() -> None:
    """A connection dropped in the middle of the event stream is retried as connection_error."""

    async def dropping(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            yield sse_lines(*STREAM_EVENTS[:3]).encode()
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    h = Harness(ScriptedApi(dropping, stream(*STREAM_EVENTS)))
    sent = await h.send(payload(stream=True))
    assert sent.attempts == 2
    assert (h.retries[0].error.status, h.retries[0].error.error_type) == (None, "connection_error")


async def test_stream_request_answered_with_plain_json() -> None:
    """A server that ignores ``stream`` and answers a JSON Message is still understood."""
    sent = await Harness(ScriptedApi(reply())).send(payload(stream=True))
    assert sent.reply.text == "ok"


async def test_stream_error_status_is_classified() -> None:
    """A non-200 answer to a streaming request is classified like any other."""
    h = Harness(ScriptedApi(api_error(529, "overloaded_error"), stream(*STREAM_EVENTS)))
    assert (await h.send(payload(stream=True))).attempts == 2


# ---------------------------------------------------------------- logging and secrets


async def test_retry_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Each retry logs attempt, status, error type and wait on the pipeline.client logger."""
    caplog.set_level(logging.INFO, logger="pipeline.client")
    await Harness(ScriptedApi(api_error(529, "overloaded_error", "Overloaded"), reply())).send()
    (record,) = [r for r in caplog.records if r.name == "pipeline.client"]
    assert record.levelno == logging.INFO
    text = record.getMessage()
    assert "attempt 1/8 failed: HTTP 529 overloaded_error: Overloaded" in text
    assert "retrying in" in text
    assert "req_test" in text


ECHO = f"<html><title>Bad gateway</title><body>x-api-key: {KEY}</body></html>"
LEAKY_PATHS: list[Step] = [
    api_error(401, "authentication_error", f"invalid x-api-key {KEY}"),
    api_error(403, "permission_error"),
    api_error(400, "invalid_request_error", f"echo {KEY}"),
    api_error(529, "overloaded_error"),
    api_error(429, "rate_limit_error", retry_after="1"),
    reply(502, text=f"upstream said Authorization: Bearer {KEY}"),
    reply(503, text=ECHO.replace("<title>Bad gateway</title>", "")),
    reply(200, text=f"not json {KEY}"),
    raising(httpx.ConnectError, "Connection refused"),
    raising(httpx.ReadTimeout, "timed out"),
    stream(START),
    stream(START, ("error", {"type": "error", "error": {"type": "overloaded_error", "message": KEY}})),
]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
async def test_key_never_in_messages_logs_or_reprs(
    auth: str, streamed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """On every error path the API key appears in no message, str, repr, retry detail or log line."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for step in LEAKY_PATHS:
        h = Harness(ScriptedApi(step), auth=auth, max_attempts=2)
        error = await h.fail(payload(stream=streamed))
        seen += [error.message, str(error), repr(error), repr(error.args)]
        seen += [repr(d) for d in h.retries]
        seen += [repr(h.config), repr(h.client), str(h.config)]
    assert seen
    for text in [*seen, caplog.text]:
        assert KEY not in text
    assert any("[redacted]" in text for text in seen)  # the echoed key was blanked, not the whole message


async def test_client_must_be_open() -> None:
    """Sending outside ``async with`` fails fast."""
    client = MessagesClient(ClientConfig(base_url=BASE, api_key=KEY))
    with pytest.raises(RuntimeError, match="async with"):
        await client.send(payload(), input_tokens=1)


def test_config_rejects_nonsense() -> None:
    """max_attempts and concurrency below 1 are refused."""
    with pytest.raises(ValueError, match="max_attempts"):
        ClientConfig(base_url=BASE, api_key=KEY, max_attempts=0)
    with pytest.raises(ValueError, match="concurrency"):
        ClientConfig(base_url=BASE, api_key=KEY, concurrency=0)
