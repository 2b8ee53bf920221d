"""The cluster's limiter and registry, run in this event loop: what every worker's client is admitted by.

The actors are plain classes; ``Handle`` calls their methods as Ray would (``.remote`` returns an
awaitable), so several ``MessagesClient``s with ``SharedBudgets`` and ``SharedGate`` share one
``Limiter`` exactly as the workers of a run do, without a cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.cluster.limiter import Limiter, LimiterSettings, SendingStopped, SharedBudgets, SharedGate
from pipeline.cluster.registry import LEAD, Outcome, Registry
from pipeline.records import Result, Row
from scripted import ScriptedApi, api_error, reply

KEY = "sk-ant-test-limiter-0123456789"


class _Method:
    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.call(*args))


class Handle:
    """An actor handle whose method calls run in this loop (the actor's methods are coroutines)."""

    def __init__(self, actor: object) -> None:
        self._actor = actor

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._actor, name))


def settings(**limits: Any) -> LimiterSettings:
    values = {"requests_per_minute": None, "input_tokens_per_minute": None, "output_tokens_per_minute": None}
    return LimiterSettings(**{**values, **limits}, concurrency=8, slow_start=False)


def worker(
    limiter: Handle,
    transport: httpx.AsyncBaseTransport,
    lost: Callable[[], bool] = lambda: False,
    concurrency: int = 8,
    **options: Any,
) -> MessagesClient:
    """One worker's client, admitted by the shared limiter (as sender.Sending makes it)."""
    budgets = SharedBudgets(limiter, lost=lost)
    client = MessagesClient(
        ClientConfig(base_url="http://api.test", api_key=KEY, max_attempts=3, concurrency=concurrency),
        transport=transport,
        limits=budgets,
        gate=SharedGate(budgets),
        **options,
    )
    budgets.watch(client)
    return client


def payload(text: str) -> Any:
    return {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": text}]}


async def settle() -> None:
    """Let the notes queued this turn reach the limiter."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_429_on_one_worker_pauses_every_worker() -> None:
    """Worker one is told to wait 1 s; worker two, sending next, waits too (the pause is the limiter's)."""
    arrivals: list[tuple[str, float]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        arrivals.append((json.loads(request.content)["messages"][0]["content"], time.monotonic()))
        if len(arrivals) == 1:
            return await api_error(429, "rate_limit_error", retry_after="1")(request)
        return await reply()(request)

    limiter = Handle(Limiter(settings()))
    transport = httpx.MockTransport(ScriptedApi(handler))
    retried = asyncio.Event()
    one = worker(limiter, transport, on_retry=lambda details: retried.set())
    two = worker(limiter, transport)
    async with one, two:
        first = asyncio.create_task(one.send(payload("one"), input_tokens=1))
        await retried.wait()  # worker one has its 429 and has noted the pause
        await settle()
        second = await two.send(payload("two"), input_tokens=1)
        assert (await first).attempts == 2
    assert second.attempts == 1
    refused_at = arrivals[0][1]
    sent_by_two = next(at for text, at in arrivals if text == "two")
    assert sent_by_two - refused_at >= 0.9  # held by worker one's 429, not sent at once
    stats = await limiter.stats.remote()
    assert stats.throttled == 1
    assert stats.admitted == 3
    assert stats.in_flight == 0
    assert stats.requests == 3  # every HTTP request of both workers, counted where the limit is
    assert stats.retries == 1


async def test_limits_a_response_states_retune_the_limiter_for_every_worker() -> None:
    """A reply stating 60 requests/min, seen by worker one, sets the one pace that admits worker two too."""

    async def handler(request: httpx.Request) -> httpx.Response:
        answer = await reply()(request)
        answer.headers["anthropic-ratelimit-requests-limit"] = "60"
        return answer

    actor = Limiter(settings(requests_per_minute=600))
    limiter = Handle(actor)
    transport = httpx.MockTransport(ScriptedApi(handler))
    one = worker(limiter, transport)
    async with one:
        assert (await limiter.stats.remote()).requests_per_minute == 600
        await one.send(payload("one"), input_tokens=1)
        await settle()
    assert (await limiter.stats.remote()).requests_per_minute == 60


async def test_a_stopped_limiter_sends_nothing_more() -> None:
    """Once the limiter is stopped (a signal, a fatal error elsewhere), a send raises and sends nothing."""
    api = ScriptedApi(reply())
    limiter = Handle(Limiter(settings()))
    client = worker(limiter, httpx.MockTransport(api))
    await limiter.stop.remote("SIGTERM")
    async with client:
        with pytest.raises(SendingStopped, match="SIGTERM"):
            await client.send(payload("late"), input_tokens=1)
    assert api.bodies() == []
    assert (await limiter.stats.remote()).stopping == "SIGTERM"


def result(row_id: str) -> Result:
    return Result(row=Row(0, row_id, {}), status="ok", finished_at=datetime.now(UTC), fingerprint="f")


async def test_requests_queued_on_a_lost_node_are_never_sent() -> None:
    """One request in flight and three queued behind it when the node is lost: only that one is paid.

    A sender queues a whole batch at its client's slots; Ray runs the batch again elsewhere, so any
    row admitted here after the loss would be paid twice.
    """
    sent: list[str] = []
    arrived, answer = asyncio.Event(), asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["messages"][0]["content"])
        arrived.set()
        await answer.wait()
        return await reply()(request)

    node_lost = False
    limiter = Handle(Limiter(settings()))
    client = worker(limiter, httpx.MockTransport(ScriptedApi(handler)), lost=lambda: node_lost, concurrency=1)
    async with client:
        sends = [asyncio.create_task(client.send(payload(f"row {i}"), input_tokens=1)) for i in range(4)]
        await arrived.wait()
        node_lost = True
        answer.set()
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert sent == ["row 0"]
    assert not isinstance(outcomes[0], BaseException)  # the request in flight ends (and is journalled)
    assert all(isinstance(outcome, SendingStopped) for outcome in outcomes[1:])
    await settle()
    stats = await limiter.stats.remote()
    assert stats.in_flight == 0  # an admission refused after the loss gave its reservation back
    assert stats.requests == 1


async def test_identical_requests_wait_for_their_leader_wherever_it_is() -> None:
    """The first row with a key leads; the others wait for its result; later ones copy it at once."""
    registry = Registry()
    assert await registry.share("k", "a") == LEAD
    waiting = asyncio.create_task(registry.share("k", "b"))
    await settle()
    assert not waiting.done()
    assert await registry.share("k", "a") == LEAD  # the leader's batch run again: it leads again
    leader = result("a")
    await registry.settle("k", leader)
    assert await waiting is leader
    assert await registry.share("k", "c") is leader


async def test_a_leader_that_gives_up_leaves_its_followers_unanswered() -> None:
    """A leader stopped before its answer: the rows waiting for it get nothing (a rerun sends them)."""
    registry = Registry()
    assert await registry.share("k", "a") == LEAD
    waiting = asyncio.create_task(registry.share("k", "b"))
    await settle()
    await registry.abandon("k")
    assert await waiting is None
    assert await registry.share("k", "b") == LEAD


async def test_rows_answered_are_remembered_until_the_driver_has_read_them() -> None:
    """A batch run again learns which of its rows are journalled; rows the driver read are forgotten."""
    registry = Registry()
    await registry.answered([Outcome("1", "ok"), Outcome("2", "error", "overloaded_error")])
    assert await registry.begin(["1", "2", "3"]) == {
        "1": Outcome("1", "ok"),
        "2": Outcome("2", "error", "overloaded_error"),
    }
    await registry.consumed(["1"])
    assert list(await registry.begin(["1", "2", "3"])) == ["2"]
