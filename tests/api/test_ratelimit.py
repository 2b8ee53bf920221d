"""Pacing, token budgets and the shared pause, on a patched loop clock: nothing here sleeps for real."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from aiolimiter import AsyncLimiter

from fakes import FakeClock
from pipeline.api import ratelimit
from pipeline.api.ratelimit import BURST_S, OutputEstimator, Pacer, PauseGate, RateLimits, Reservation
from pipeline.records import Usage
from pipeline.sandbox.limits import TokenBucket


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


async def test_600_per_minute_paces_exactly_ten_per_second() -> None:
    """At 600/min the bucket releases half a second (5) at once, then refills at exactly 10/s."""
    with patched_loop_time() as clock:
        times = await acquisition_times(Pacer(600), clock, count=80, seconds=4.0)
    assert sum(1 for t in times if t == 0.0) == 5  # capacity 5: a half-second burst, not a minute's 600
    steady = sum(1 for t in times if 1.0 <= t < 3.0)
    assert steady == 20  # 10/s
    assert 44 <= len(times) <= 45  # 5 + 10/s over 4 s


async def test_below_60_per_minute_spaces_single_requests() -> None:
    """At 30/min both buckets hold one request, so each 2 s interval keeps 0.1 s for jitter: 2.1 s."""
    with patched_loop_time() as clock:
        times = await acquisition_times(Pacer(30), clock, count=10, seconds=6.5)
    assert times == pytest.approx([0.0, 2.1, 4.2, 6.3], abs=0.051)  # the fake clock steps 0.05 s


def test_only_rates_under_120_per_minute_give_up_anything_for_jitter() -> None:
    """From 120/min the server's bucket holds half a second more than the pacer's: exact pacing;
    below, the interval grows by the slack missing to 0.1 s (at most that)."""
    for per_minute in (120, 600, 30_000):
        assert ratelimit._bucket_shape(per_minute, 1.0)[1] == pytest.approx(BURST_S)
    assert ratelimit._bucket_shape(90, 1.0) == (1.0, pytest.approx(60 / 90))  # 0.33 s of slack
    assert ratelimit._bucket_shape(60, 1.0) == (1.0, pytest.approx(1.1))  # none: all 0.1 s added
    assert ratelimit._bucket_shape(50, 1.0) == (1.0, pytest.approx(1.3))


async def test_a_guessed_rate_is_paced_a_little_under() -> None:
    """A rate the client estimated itself (slow start, AIMD) is paced at 98.5 % of it."""
    with patched_loop_time() as clock:
        times = await acquisition_times(Pacer(30, share=0.985), clock, count=10, seconds=6.5)
    assert times == pytest.approx([0.0, 2.03, 4.06, 6.09], abs=0.07)


def test_bucket_is_half_a_second_of_the_paced_rate() -> None:
    """Capacity is half a second of the paced rate, never below 1."""
    assert Pacer(600).capacity == pytest.approx(5.0)
    assert Pacer(30_000).capacity == pytest.approx(250.0)
    assert Pacer(30_000, share=0.985).capacity == pytest.approx(246.25)
    assert Pacer(30).capacity == 1
    with pytest.raises(ValueError, match="share"):
        Pacer(600, share=1.5)


async def paced_arrivals(per_minute: float, seconds: float, jitter_s: float, seed: int) -> list[float]:
    """When requests paced by a real :class:`Pacer` under endless demand reach the server.

    Each leaves when the pacer lets it (the fake clock steps 10 ms, so departures also bunch) and
    arrives after a random delay in ``[0, jitter_s]``: network and server jitter.
    """
    rng = random.Random(seed)
    arrivals: list[float] = []
    with patched_loop_time() as clock:
        pacer = Pacer(per_minute)

        async def sender() -> None:
            while True:
                await pacer.acquire()
                arrivals.append(clock.now + rng.uniform(0.0, jitter_s))

        senders = [asyncio.create_task(sender()) for _ in range(64)]
        await settle()
        for _ in range(round(seconds / 0.01)):
            clock.now = round(clock.now + 0.01, 9)
            await settle(5)
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    return sorted(arrivals)


def served(arrivals: list[float], per_minute: float, burst_s: float) -> tuple[list[float], int]:
    """Replay arrivals into the sandbox's bucket (the hosted API's shape): (accepted times, 429s)."""
    bucket = TokenBucket(per_minute, burst_s, now=0.0)
    accepted, refused = [], 0
    for t in arrivals:
        bucket.refill(t)
        if bucket.wait_for(1.0) > 0:
            refused += 1
        else:
            bucket.level -= 1.0
            accepted.append(t)
    return accepted, refused


@pytest.mark.parametrize(
    ("per_minute", "jitter_s", "share"),
    [(600, 0.1, 0.995), (600, 0.4, 0.995), (6000, 0.04, 0.995), (60, 0.1, 0.9)],
)
async def test_a_known_limit_is_used_whole_without_a_429_despite_jitter(
    per_minute: int, jitter_s: float, share: float
) -> None:
    """Paced at exactly the limit, arrivals jittered by less than the half second of slack between the
    pacer's bucket and the server's one-second bucket get no 429, and the server accepts the whole rate
    (at 60/min, where both buckets hold one request, 1.1 s intervals: 90.9 %)."""
    seconds = 40.0
    arrivals = await paced_arrivals(per_minute, seconds, jitter_s, seed=per_minute)
    accepted, refused = served(arrivals, per_minute, burst_s=1.0)
    assert refused == 0
    steady = sum(1 for t in accepted if 10.0 <= t < seconds - 1.0)
    assert steady >= share * per_minute / 60.0 * (seconds - 11.0)


async def test_a_bucket_as_big_as_the_servers_would_earn_429s_from_the_same_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: with no slack (the pacer releasing a whole second at once, as the server's bucket
    holds), the same pacing and jitter overflow the server's bucket."""
    monkeypatch.setattr(ratelimit, "BURST_S", 1.0)
    monkeypatch.setattr(ratelimit, "JITTER_S", 0.0)
    arrivals = await paced_arrivals(600, 40.0, 0.4, seed=600)
    _, refused = served(arrivals, 600, burst_s=1.0)
    assert refused > 0


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
        self.refunded: list[float] = []

    async def acquire(self, amount: float = 1.0) -> None:
        self.acquired.append(amount)

    def refund(self, amount: float) -> None:
        self.refunded.append(amount)


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


async def test_a_low_remaining_header_holds_a_known_limit_back_until_the_server_has_refilled() -> None:
    """While ``*-remaining`` says the server's bucket holds less than the pacer's burst, the pace is
    95 % of the limit; once it holds that much again, the whole limit. Guessed paces are left alone."""
    prefix = "anthropic-ratelimit-"
    limits = RateLimits(
        requests_per_minute=600, input_tokens_per_minute=300_000, output_tokens_per_minute=12_000
    )
    assert limits.requests is not None
    assert limits.input_tokens is not None
    assert limits.output_tokens is not None
    low = {f"{prefix}requests-remaining": "4", f"{prefix}input-tokens-remaining": "2000"}
    low[f"{prefix}output-tokens-remaining"] = "0"
    limits.learn(low)
    assert (limits.requests.holding_back, limits.input_tokens.holding_back) == (True, True)
    # 12,000/min: a 100-token bucket, which a header rounded to 1,000 cannot see
    assert limits.output_tokens.holding_back is False
    with patched_loop_time() as clock:
        held = await acquisition_times(limits.requests, clock, count=80, seconds=4.0)
    assert sum(1 for t in held if 1.0 <= t < 3.0) == 19  # 9.5/s
    limits.learn({f"{prefix}requests-remaining": "5", f"{prefix}input-tokens-remaining": "3000"})
    assert (limits.requests.holding_back, limits.input_tokens.holding_back) == (False, False)
    assert limits.requests.capacity == 5  # the bucket never changed size, only its refill
    limits.learn({f"{prefix}requests-remaining": "junk"})
    assert limits.requests.holding_back is False
    guessed = Pacer(600, share=0.985)
    aimd = RateLimits()
    aimd.requests = guessed
    aimd.learn({f"{prefix}requests-remaining": "0"})
    assert guessed.holding_back is False


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
    refused = cut / 0.9  # the rate accepted when the 429 came
    assert limits.adaptive_rpm == pytest.approx((cut + 0.97 * refused) / 2)  # halfway back


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


# ---------------------------------------------------------------- refunds


async def test_settle_refunds_what_a_reply_did_not_use() -> None:
    """A reply shorter than its reservation gives the rest back, input and output alike."""
    limits, _, inputs, outputs = recording_limits()
    reservation = await limits.acquire(input_tokens=1000, max_tokens=256)
    await limits.settle(
        reservation, Usage(input_tokens=700, output_tokens=41, cache_creation_input_tokens=100)
    )
    assert (inputs.acquired, inputs.refunded) == ([1000], [200])
    assert (outputs.acquired, outputs.refunded) == ([256], [215])


async def test_refund_lets_a_waiting_acquisition_through() -> None:
    """Credit given back frees room at once for a request waiting on the bucket, never below empty."""
    with patched_loop_time() as clock:
        pacer = Pacer(60)  # one unit, refilled every ~1.015 s
        await pacer.acquire(1)
        waiting = asyncio.create_task(pacer.acquire(1))
        await clock.run_for(0.2)
        assert not waiting.done()
        pacer.refund(5)  # more than was ever taken: the bucket empties, no credit is banked
        await settle()
        assert waiting.done()
        assert not pacer.has_capacity(1)  # the refund did not leave room for a burst


async def test_output_budget_paces_real_output_not_reservations() -> None:
    """12,000 output tokens/min with replies of 41 and estimates of 51: the pace follows the 41."""
    with patched_loop_time() as clock:
        limits = RateLimits(output_tokens_per_minute=12_000)
        limits.output_estimator.observe(41)  # past the warm-up: estimates are now 41 x 1.2 = 50
        sent = 0

        async def sender() -> None:
            nonlocal sent
            while True:
                reservation = await limits.acquire(input_tokens=10, max_tokens=64)
                sent += 1
                await asyncio.sleep(0.15)  # the reply's latency, on the patched clock
                await limits.settle(reservation, Usage(input_tokens=10, output_tokens=41))

        tasks = [asyncio.create_task(sender()) for _ in range(16)]
        await clock.run_for(5.0)
        start = sent
        await clock.run_for(30.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    per_minute = (sent - start) * 2 * 41  # over 30 s
    assert 0.97 * 12_000 <= per_minute <= 12_000  # 98.5 % is the pacer's share; 80 % without refunds


# ---------------------------------------------------------------- slow start


def slow_limits(clock: FakeClock, **kwargs: float) -> RateLimits:
    """RateLimits with a slow start and 16 slots, on a fake clock."""
    return RateLimits(clock=clock, slow_start=True, concurrency=16, **kwargs)


async def test_slow_start_sends_one_probe_until_the_first_answer() -> None:
    """Before the server has answered once, one request goes; the others wait for its answer."""
    limits = slow_limits(FakeClock())
    probe = await limits.acquire(input_tokens=1, max_tokens=1)
    assert probe.probe
    others = [asyncio.create_task(limits.acquire(input_tokens=1, max_tokens=1)) for _ in range(3)]
    await settle()
    assert not any(task.done() for task in others)
    limits.answered(0.15)
    limits.release(probe)
    reservations = await asyncio.gather(*others)
    assert not any(r.probe for r in reservations)


async def test_a_probe_that_fails_hands_the_probe_to_the_next_request() -> None:
    """A probe refused or failed frees its place: the next request probes, still alone."""
    limits = slow_limits(FakeClock())
    first = await limits.acquire(input_tokens=1, max_tokens=1)
    waiting = [asyncio.create_task(limits.acquire(input_tokens=1, max_tokens=1)) for _ in range(2)]
    await settle()
    limits.throttled()  # a 429 before any answer: nothing to measure, slow start goes on
    limits.release(first)
    await settle()
    done = [task for task in waiting if task.done()]
    assert len(done) == 1
    assert done[0].result().probe
    assert limits.slow_start
    assert limits.adaptive_rpm is None
    limits.answered(0.1)
    limits.release(done[0].result())
    await asyncio.gather(*waiting)


async def test_slow_start_pace_doubles_every_four_round_trips() -> None:
    """The ramp starts at one round trip's pace and gains 60 ln2 / (4 x latency) per answer."""
    clock = FakeClock()
    limits = slow_limits(clock)
    limits.answered(0.15)
    assert limits.ramp is not None
    assert limits.ramp.per_minute == pytest.approx(400)  # 60 / 0.15 s
    for _ in range(10):
        limits.answered(0.15)
    assert limits.ramp.per_minute == pytest.approx(400 + 10 * 60 * math.log(2) / 0.6)
    assert limits.slow_start


async def test_slow_replies_still_double_the_pace_every_second() -> None:
    """With 10 s replies the ramp doubles per second, not per 40 s: the slots fill in seconds."""
    limits = slow_limits(FakeClock())
    limits.answered(10.0)
    assert limits.ramp is not None
    assert limits.ramp.per_minute == pytest.approx(6)  # one request per 10 s round trip
    limits.answered(10.0)
    assert limits.ramp.per_minute == pytest.approx(6 + 60 * math.log(2))
    for _ in range(2):
        limits.answered(10.0)
    assert not limits.slow_start  # past 16 slots x 6/min: concurrency, not pace, is the bound now


async def test_a_429_in_slow_start_halves_and_hands_over_to_aimd() -> None:
    """The first 429 ends the slow start at half the slower of the ramp and the accepted rate."""
    clock = FakeClock()
    limits = slow_limits(clock)
    for _ in range(20):  # 20 answers in 2 s: the server accepted 600/min
        clock.now += 0.1
        limits.answered(0.15)
    assert limits.ramp is not None
    ramp = limits.ramp.per_minute
    assert ramp > 600
    limits.throttled()
    assert not limits.slow_start
    assert limits.ramp is None
    assert limits.adaptive_rpm == pytest.approx(300)  # half of the 600 accepted
    assert limits.requests is not None
    assert limits.requests.per_minute == pytest.approx(300)


async def test_slow_start_ends_once_the_pace_cannot_bind() -> None:
    """A fast server with no limits: the ramp ends as soon as it exceeds what the slots can send."""
    limits = slow_limits(FakeClock(), requests_per_minute=3000)
    limits.answered(0.002)  # 30,000/min for one slot: over the job's own 3,000
    assert not limits.slow_start
    assert limits.ramp is None
    assert limits.requests is not None
    assert limits.requests.per_minute == 3000
    fast = slow_limits(FakeClock())
    for _ in range(5):
        fast.answered(0.01)
    assert fast.slow_start  # 6,000/min and rising, under the 16 slots' 96,000/min
    for _ in range(120):  # doubling every 4 round trips: the 16 slots are busy after about 90
        fast.answered(0.0005)
    assert not fast.slow_start


async def test_stated_limits_end_the_slow_start() -> None:
    """An answer with anthropic-ratelimit-* headers ends the slow start: the stated limit is followed."""
    limits = slow_limits(FakeClock())
    probe = await limits.acquire(input_tokens=1, max_tokens=1)
    limits.learn({"anthropic-ratelimit-requests-limit": "600"})
    assert not limits.slow_start
    waiting = asyncio.create_task(limits.acquire(input_tokens=1, max_tokens=1))
    await settle()
    assert waiting.done()  # the probe's answer is not even needed any more
    limits.release(probe)


def test_probing_slows_to_fine_steps_near_the_refused_rate() -> None:
    """Under 97 % of the rate refused at the last 429 the pace climbs fast; from there, 1 % a quiet spell."""
    clock = FakeClock()
    limits = RateLimits(clock=clock)
    for _ in range(100):  # the server accepted 600/min when it refused
        clock.now += 0.1
        limits.answered()
    limits.throttled()
    rates: list[float] = []
    for _ in range(7):
        assert limits.adaptive_rpm is not None
        rates.append(limits.adaptive_rpm)
        clock.now += 3.01  # a quiet spell (3 s), clear of float rounding
        limits.answered()
    refused = rates[0] / 0.9  # ~606/min accepted when the 429 came (101 answers in the last 10 s)
    near = 0.97 * refused
    assert rates[1] == pytest.approx((rates[0] + near) / 2)  # halfway, as that beats +3 %
    assert rates[2] == pytest.approx(rates[1] * 1.03)  # +3 %, as that beats halfway
    assert rates[3] == pytest.approx(near)  # capped at 97 % of the refused rate
    steps = [round(b / a - 1, 4) for a, b in itertools.pairwise(rates[3:])]
    assert steps == [0.01, 0.01, 0.01]


async def test_after_a_slow_start_the_pace_climbs_halfway_back_per_quiet_spell() -> None:
    """Halved at the end of a slow start, the pace recovers halfway to the refused rate each 3 s."""
    clock = FakeClock()
    limits = slow_limits(clock)
    for _ in range(20):
        clock.now += 0.1
        limits.answered(0.15)
    limits.throttled()
    assert limits.adaptive_rpm == pytest.approx(300)
    clock.now += 3.01
    limits.answered(0.15)
    assert limits.adaptive_rpm == pytest.approx((300 + 0.97 * 600) / 2)


async def test_a_probe_cancelled_while_waiting_for_budget_frees_its_place() -> None:
    """A probe cancelled before it was sent (a shutdown) lets the next request probe instead."""
    with patched_loop_time() as clock:
        limits = RateLimits(requests_per_minute=1, slow_start=True)
        first = await limits.acquire(input_tokens=1, max_tokens=1)  # takes the one-request bucket
        limits.release(first)  # it failed without an answer: the next request probes
        stuck = asyncio.create_task(limits.acquire(input_tokens=1, max_tokens=1))  # waits ~60 s for budget
        await settle()
        behind = asyncio.create_task(limits.acquire(input_tokens=1, max_tokens=1))
        await settle()
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await clock.run_for(62.0, step=1.0)
        assert behind.done()  # it became the probe and got the budget the cancelled one waited for
        assert behind.result().probe
