"""Pacing, token budgets and the shared pause, on a patched loop clock: nothing here sleeps for real."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiolimiter import AsyncLimiter

from fakes import FakeClock
from pipeline.ratelimit import OutputEstimator, Pacer, PauseGate, RateLimits, Reservation
from pipeline.records import Usage


class LoopTime:
    """The running loop's ``time()`` replaced by a number the test moves, as aiolimiter's tests do.

    The loop's scheduler reads the same ``time()``, so aiolimiter's wake-up timers fire exactly when
    the test moves the clock past them, and never on their own.
    """

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def run_for(self, seconds: float, step: float = 0.05) -> None:
        """Advance the clock in steps, letting every ready task run at each step."""
        for _ in range(round(seconds / step)):
            self.now = round(self.now + step, 9)
            await settle()


@contextmanager
def patched_loop_time() -> Iterator[LoopTime]:
    """Patch ``loop.time`` of the running loop for the duration of the block."""
    loop = asyncio.get_running_loop()
    clock = LoopTime()
    loop.time = clock  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        del loop.time  # back to the class's method


async def settle(rounds: int = 30) -> None:
    """Let ready tasks and wake-up callbacks run without moving the clock."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def acquisition_times(pacer: Pacer, clock: LoopTime, count: int, seconds: float) -> list[float]:
    """When each of ``count`` concurrent one-unit acquisitions got through, over ``seconds`` of fake time."""
    times: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        times.append(clock.now)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await settle()
    await clock.run_for(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return times


async def test_600_per_minute_paces_just_under_ten_per_second() -> None:
    """At 600/min the bucket releases half a second (about 5) at once, then refills at 98.5 % of 10/s."""
    with patched_loop_time() as clock:
        times = await acquisition_times(Pacer(600), clock, count=80, seconds=4.0)
    assert sum(1 for t in times if t == 0.0) == 4  # capacity 4.925: a half-second burst, not a minute's 600
    steady = sum(1 for t in times if 1.0 <= t < 3.0)
    assert 19 <= steady <= 20  # 9.85/s
    assert 43 <= len(times) <= 45  # 4 + 9.85/s over 4 s


async def test_below_60_per_minute_spaces_single_requests() -> None:
    """At 30/min the bucket holds one request and refills one every ~2.03 s (98.5 % of the rate)."""
    with patched_loop_time() as clock:
        times = await acquisition_times(Pacer(30), clock, count=10, seconds=6.5)
    assert times == pytest.approx([0.0, 2.03, 4.06, 6.09], abs=0.07)  # the fake clock steps 0.05 s


def test_bucket_is_half_a_second_of_the_paced_rate() -> None:
    """Capacity is half a second of 98.5 % of the rate, never below 1."""
    assert Pacer(600).capacity == pytest.approx(4.925)
    assert Pacer(30_000).capacity == pytest.approx(246.25)
    assert Pacer(30).capacity == 1


async def test_amount_over_capacity_is_acquired_in_chunks() -> None:
    """An amount above the bucket does not raise (plain aiolimiter does) and waits as long as it needs."""
    with pytest.raises(ValueError, match="maximum capacity"):
        await AsyncLimiter(10, 1).acquire(35)
    with patched_loop_time() as clock:
        pacer = Pacer(600)
        task = asyncio.create_task(pacer.acquire(35))
        await settle()
        assert not task.done()
        await clock.run_for(2.9)
        assert not task.done()  # 35 units at 9.85/s after a 4.925-unit start: done at about 3.05 s
        await clock.run_for(0.3)
        assert task.done()
        await task


async def test_zero_amount_is_free() -> None:
    """Acquiring nothing returns at once."""
    with patched_loop_time():
        await asyncio.wait_for(Pacer(60).acquire(0), timeout=1)


def test_output_estimate_starts_at_max_tokens_then_follows_the_mean() -> None:
    """The estimate is max_tokens until a reply is seen, then the mean plus 20 %, capped at max_tokens."""
    estimator = OutputEstimator()
    assert estimator.estimate(4096) == 4096
    estimator.observe(100)
    assert estimator.estimate(4096) == 120
    estimator.observe(200)
    assert estimator.estimate(4096) == 180
    patient = OutputEstimator(warmup=3)
    patient.observe(100)
    assert patient.estimate(4096) == 4096
    assert estimator.estimate(50) == 50
    assert OutputEstimator(warmup=0).estimate(10) == 10  # no data yet: max_tokens, at least 1


class RecordingPacer(Pacer):
    """A pacer that records what was asked of it and never waits."""

    def __init__(self) -> None:
        super().__init__(60_000)
        self.acquired: list[float] = []

    async def acquire(self, amount: float = 1.0) -> None:
        self.acquired.append(amount)


def recording_limits() -> tuple[RateLimits, RecordingPacer, RecordingPacer, RecordingPacer]:
    """RateLimits whose three pacers record instead of waiting."""
    limits = RateLimits(requests_per_minute=1, input_tokens_per_minute=1, output_tokens_per_minute=1)
    requests, inputs, outputs = RecordingPacer(), RecordingPacer(), RecordingPacer()
    limits.requests, limits.input_tokens, limits.output_tokens = requests, inputs, outputs
    return limits, requests, inputs, outputs


async def test_estimates_are_acquired_before_and_shortfalls_after() -> None:
    """Estimates are taken before sending; real input (cache writes included) and output beyond them after."""
    limits, requests, inputs, outputs = recording_limits()
    reservation = await limits.acquire(input_tokens=1000, max_tokens=256)
    assert reservation == Reservation(1000, 256)
    assert (requests.acquired, inputs.acquired, outputs.acquired) == ([1], [1000], [256])
    await limits.settle(
        reservation, Usage(input_tokens=900, output_tokens=300, cache_creation_input_tokens=300)
    )
    assert inputs.acquired == [1000, 200]  # 900 + 300 cache writes - 1000
    assert outputs.acquired == [256, 44]


async def test_shorter_replies_shrink_the_output_reservation() -> None:
    """After a short reply the output reservation follows real replies instead of holding max_tokens."""
    limits, _, _, outputs = recording_limits()
    for _ in range(3):
        reservation = await limits.acquire(input_tokens=10, max_tokens=4096)
        await limits.settle(reservation, Usage(input_tokens=10, output_tokens=50))
    assert outputs.acquired[0] == 4096
    assert outputs.acquired[1:3] == [60, 60]


async def test_no_limits_means_no_waiting() -> None:
    """With every limit left out, acquire and settle return at once."""
    limits = RateLimits()
    reservation = await limits.acquire(input_tokens=10**9, max_tokens=10**6)
    await limits.settle(reservation, Usage(input_tokens=10**10, output_tokens=10**10))


async def test_gate_without_pause_does_not_sleep() -> None:
    """An unpaused gate lets senders straight through."""
    clock = FakeClock()
    gate = PauseGate(clock=clock, sleep=clock.sleep)
    await gate.wait()
    assert clock.sleeps == []
    assert not gate.paused


async def test_gate_sleeps_once_until_resume_at() -> None:
    """A paused gate is one sleep to resume_at; a shorter later pause does not cut it short."""
    clock = FakeClock()
    gate = PauseGate(clock=clock, sleep=clock.sleep)
    gate.pause(5.0)
    gate.pause(1.0)
    assert gate.resume_at == 5.0
    await gate.wait()
    assert clock.sleeps == [5.0]
    assert clock.now == 5.0


async def test_gate_holds_every_waiter() -> None:
    """All senders waiting on a pause resume at the same time, not one by one."""
    clock = FakeClock()
    gate = PauseGate(clock=clock, sleep=clock.sleep)
    gate.pause(3.0)
    await asyncio.gather(*(gate.wait() for _ in range(4)))
    assert clock.sleeps == [3.0] * 4
    assert clock.now == 3.0


async def test_gate_extended_during_the_sleep_sleeps_again() -> None:
    """A pause that grows while a sender sleeps makes it sleep the extra time too."""
    clock = FakeClock()

    async def sleep(delay: float) -> None:
        await clock.sleep(delay)
        if len(clock.sleeps) == 1:
            gate.pause(2.0)  # another 429 arrived meanwhile

    gate = PauseGate(clock=clock, sleep=sleep)
    gate.pause(1.0)
    await gate.wait()
    assert clock.sleeps == [1.0, 2.0]
    assert clock.now == 3.0


async def test_gate_does_not_loop_on_a_sleep_that_keeps_time_still() -> None:
    """A test sleep that does not move the clock ends the wait after one sleep instead of spinning."""
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    gate = PauseGate(clock=lambda: 0.0, sleep=record)
    gate.pause(4.0)
    await gate.wait()
    assert sleeps == [4.0]


def test_learned_limits_lower_the_pace_but_never_raise_it_past_the_job() -> None:
    """Server-stated limits replace missing or higher ones; the job's own limit stays a ceiling."""
    limits = RateLimits(requests_per_minute=100)
    prefix = "anthropic-ratelimit-"
    limits.learn({f"{prefix}requests-limit": "60", f"{prefix}output-tokens-limit": "8000"})
    assert limits.requests is not None
    assert limits.requests.per_minute == 60
    assert limits.output_tokens is not None
    assert limits.output_tokens.per_minute == 8000
    assert limits.input_tokens is None
    limits.learn({"anthropic-ratelimit-requests-limit": "4000"})
    assert limits.requests.per_minute == 100
    limits.learn({f"{prefix}requests-limit": "junk", f"{prefix}input-tokens-limit": "-5"})
    assert limits.requests.per_minute == 100
    assert limits.input_tokens is None


def test_aimd_paces_under_the_accepted_rate_after_a_429_then_probes_up() -> None:
    """Without stated limits, a 429 sets the pace just under what was accepted; quiet spells raise it."""
    clock = FakeClock()
    limits = RateLimits(clock=clock)
    for _ in range(100):  # 100 answers over 10 s: the server accepts 600/min
        clock.now += 0.1
        limits.answered()
    limits.throttled()
    cut = limits.adaptive_rpm
    assert cut == pytest.approx(540, rel=0.02)
    assert limits.requests is not None
    assert limits.requests.per_minute == cut
    limits.throttled()  # the same burst of 429s: no second cut inside the cooldown
    assert limits.adaptive_rpm == cut
    clock.now += 3.0
    limits.answered()
    assert limits.adaptive_rpm == pytest.approx(cut * 1.03)


def test_aimd_waits_for_an_answer_before_cutting() -> None:
    """429s before any answer (the opening burst) leave the pace alone: there is no rate to measure."""
    clock = FakeClock()
    limits = RateLimits(clock=clock)
    clock.now += 0.1
    limits.throttled()
    assert limits.adaptive_rpm is None
    assert limits.requests is None


def test_aimd_stays_off_when_the_server_states_its_limits() -> None:
    """A server that sends anthropic-ratelimit-*-limit headers is followed, not guessed at."""
    clock = FakeClock()
    limits = RateLimits(clock=clock)
    limits.learn({"anthropic-ratelimit-requests-limit": "300"})
    clock.now += 3
    limits.answered()
    limits.throttled()
    assert limits.adaptive_rpm is None
    assert limits.requests is not None
    assert limits.requests.per_minute == 300


def test_aimd_never_exceeds_the_job_limit() -> None:
    """The job's requests_per_minute stays a ceiling for the adaptive pace."""
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=100, clock=clock)
    for _ in range(50):
        clock.now += 0.05
        limits.answered()
    limits.throttled()
    assert limits.adaptive_rpm == 100
