"""Client-side pacing: requests, input tokens and output tokens per minute, plus the shared 429 pause.

The hosted API meters with token buckets that refill continuously
(https://platform.claude.com/docs/en/api/rate-limits), so a client that spends a whole minute's
allowance at once earns 429s. Each :class:`Pacer` therefore holds about one second of its rate and
refills smoothly; amounts larger than that are taken in bucket-sized chunks.

:class:`RateLimits` bundles the three optional pacers with the bookkeeping that keeps them honest:
estimates are acquired before a request and the shortfall after the reply, when the real usage is
known: a reply that used more than its reservation pays the difference, one that used less gives
the rest back. :class:`PauseGate` is the one place a 429 (or any ``retry-after``) stops every sender.

When the server states no limits (self-hosted servers send no ``anthropic-ratelimit-*`` headers),
:class:`RateLimits` finds the rate itself: a *slow start* (one request until the server has answered,
then a pace that doubles every few round trips) until the first 429, then AIMD around the rate the
server accepts. The opening never bursts: at an unknown limit, a burst is what earns a storm of 429s.

Everything here binds to the running event loop: create it inside the run, never at import.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from pipeline.records import Usage

log = logging.getLogger("pipeline.client")

# Replies seen before the running mean replaces max_tokens as the output estimate. One is enough:
# OTPM counts real output (docs from 2026-02-19), and settle() charges any shortfall afterwards.
OUTPUT_WARMUP = 1
OUTPUT_HEADROOM = 1.2  # the estimate is the mean plus 20 %, so a longer reply rarely leaves a debt
# A known limit (the job's, or one the server states) is paced at exactly its rate. The server's
# bucket refills continuously and is taken to hold a second of the rate, and at least one request
# (the API "may enforce" a per-minute limit over intervals as short as a second:
# https://platform.claude.com/docs/en/api/rate-limits). A pacer releases at most BURST_S at once, so
# the server's bucket keeps the rest as slack, and arrivals that jitter by less than the slack never
# overflow it. Where both buckets hold a single request (under 120/min) there is less slack than
# JITTER_S, and each interval is stretched by what is missing. tests/api/test_ratelimit.py replays
# jittered arrivals into the sandbox's bucket to show it.
BURST_S = 0.5  # seconds of the rate a bucket may release at once
SERVER_BURST_S = 1.0
JITTER_S = 0.1  # arrival jitter (network, server, the client's own loop) a known limit absorbs
# Paced exactly, the server's bucket never refills what a stall took (a burst of late arrivals, a
# server that paused): while its `remaining` header says it holds less than the pacer's own burst,
# a known limit is paced at this share until it has refilled.
RECOVER_SHARE = 0.95
TOKEN_ROUNDING = 1000  # token `remaining` headers are rounded to the nearest 1,000 (rate-limits docs)
# A rate the client measured for itself (slow start, AIMD) is noisy: pace a little under it.
GUESS_SHARE = 0.985
# AIMD for servers that state no limits (self-hosted ones): after a 429, pace at the rate that was
# being answered, a little lower; then probe upwards until the next 429.
ADAPT_WINDOW_S = 10.0  # successes counted over this window to measure what the server accepts
ADAPT_DECREASE = 0.9  # new pace = accepted rate x this
ADAPT_COOLDOWN_S = 2.0  # one decrease per burst of 429s, not one per refused request
ADAPT_INCREASE_EVERY_S = 3.0
ADAPT_INCREASE = 0.03  # the least step per quiet interval while far below the refused rate
ADAPT_FLOOR_RPM = 1.0
# Far below the rate of the last 429 the probe climbs fast (halfway there per quiet spell), near it
# in fine steps: a pace 1 % over the limit takes the server's bucket tens of seconds to drain, where
# 3 % steps would overshoot within one interval (benchmarks/README.md, figures 2c/2d).
PROBE_NEAR = 0.97  # of the rate refused at the last 429: below, climb fast; from here, the fine step
ADAPT_FINE_INCREASE = 0.01
# Slow start while no limit is known: the pace starts at one round trip's worth of requests a
# second and doubles every SLOW_START_DOUBLING_RTTS round trips (ack-clocked, so a fast server is at
# full speed within milliseconds). A 429 halves it and hands over to AIMD. Doubling per round trip,
# as TCP does, overshoots: the server's burst allowance hides the excess for several round trips.
SLOW_START_DOUBLING_RTTS = 4.0
# ...but at least once a second: replies that take 10 s (long answers, streaming) would otherwise
# need minutes to fill the slots, while a second is already gentle against a one-second burst.
SLOW_START_MAX_DOUBLING_S = 1.0
SLOW_START_DECREASE = 0.5
LATENCY_SMOOTHING = 0.2  # weight of the newest reply in the running latency
LIMIT_HEADERS = {
    "requests": "anthropic-ratelimit-requests-limit",
    "input_tokens": "anthropic-ratelimit-input-tokens-limit",
    "output_tokens": "anthropic-ratelimit-output-tokens-limit",
}
REMAINING_HEADERS = {
    "requests": "anthropic-ratelimit-requests-remaining",
    "input_tokens": "anthropic-ratelimit-input-tokens-remaining",
    "output_tokens": "anthropic-ratelimit-output-tokens-remaining",
}


class Pacer:
    """One per-minute budget, paced smoothly.

    The bucket holds half a second of the paced rate (at least 1 unit) and refills continuously at
    ``share`` of the limit: all of it for a known limit (see :data:`BURST_S` for why that earns no
    429; below 120/min slightly less), :data:`GUESS_SHARE` for a rate the client estimated itself.

    :param per_minute: the limit, in units (requests or tokens) per minute.
    :param share: the part of the limit paced.
    """

    def __init__(self, per_minute: float, *, share: float = 1.0) -> None:
        if not per_minute > 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self.per_minute = per_minute
        self.share = share
        self.holding_back = False
        self.capacity, period = _bucket_shape(per_minute, share)
        self._limiter = _Bucket(self.capacity, period)

    async def acquire(self, amount: float = 1.0) -> None:
        """Wait until ``amount`` fits the rate; amounts above :attr:`capacity` go in chunks.

        aiolimiter refuses an amount above its bucket, and a bigger bucket would allow the very burst
        we avoid; chunks keep the long-run rate exact for a large request without either problem.
        """
        remaining = float(amount)
        while remaining > 0:
            chunk = min(remaining, self.capacity)
            await self._limiter.acquire(chunk)
            remaining -= chunk

    def has_capacity(self, amount: float = 1.0) -> bool:
        """Whether ``amount`` (at most :attr:`capacity`) could be taken right now without waiting."""
        return bool(self._limiter.has_capacity(min(amount, self.capacity)))

    def refund(self, amount: float) -> None:
        """Give back ``amount`` taken for an estimate that turned out too high (call inside the loop).

        The bucket never goes below empty: credit is not banked for a later burst.
        """
        if amount > 0:
            self._limiter.refund(amount)

    def retune(self, per_minute: float) -> None:
        """Change the rate in place (call inside the loop), keeping what the bucket already holds.

        A fresh pacer would start with an empty bucket, i.e. a free burst, and the requests already
        waiting on the old one would go on at the old rate. Only for one-unit acquisitions (the
        request pacer): a waiter's chunk must still fit the new capacity.
        """
        if not per_minute > 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        self.per_minute = per_minute
        self.capacity, period = _bucket_shape(per_minute, self.share)
        self._limiter.retune(self.capacity, period / RECOVER_SHARE if self.holding_back else period)

    def hold_back(self, on: bool) -> None:
        """Refill at :data:`RECOVER_SHARE` of the rate while ``on`` (the server's bucket runs low), at
        the whole rate otherwise. Only the refill changes: waiting acquisitions still fit the bucket."""
        if on == self.holding_back:
            return
        self.holding_back = on
        capacity, period = _bucket_shape(self.per_minute, self.share)
        self._limiter.retune(capacity, period / RECOVER_SHARE if on else period)


class _Bucket(AsyncLimiter):
    """aiolimiter's leaky bucket plus the two operations it lacks: a refund and a change of rate.

    Both touch aiolimiter's internal level (``_level``, ``_leak``, ``_wake_next``; stable since 1.0);
    the tests of :class:`Pacer` pin the behaviour.
    """

    __slots__ = ()

    def refund(self, amount: float) -> None:
        self._leak()
        self._level = max(0.0, self._level - amount)
        self._wake_next()  # a waiter may fit now

    def retune(self, max_rate: float, time_period: float) -> None:
        if self._level:
            self._leak()  # what drained at the old rate stays drained (an empty bucket needs no loop)
        self.max_rate = max_rate
        self.time_period = time_period
        self._rate_per_sec = max_rate / time_period
        self._level = min(self._level, max_rate)
        self._wake_next()


def _bucket_shape(per_minute: float, share: float) -> tuple[float, float]:
    """(capacity, refill period) of a pacer: half a second of ``share`` of the rate, at least 1 unit.

    For a known limit (``share`` 1) the period also keeps :data:`JITTER_S` of slack against a server
    bucket of :data:`SERVER_BURST_S` (at least one unit): only below 120/min does that lengthen it.
    """
    rate = per_minute * share / 60.0
    capacity = max(1.0, rate * BURST_S)
    # the period that refills `capacity` at `rate`: BURST_S at high rates, longer below
    period = capacity / rate
    if share == 1.0:
        slack_s = (max(1.0, rate * SERVER_BURST_S) - capacity) / rate
        period += max(0.0, JITTER_S - slack_s)  # capacity is 1 wherever this adds anything
    return capacity, period


class OutputEstimator:
    """How many output tokens to reserve before a request.

    ``max_tokens`` until :data:`OUTPUT_WARMUP` replies were seen, then the running mean of real
    output plus :data:`OUTPUT_HEADROOM`, never above ``max_tokens``: reserving ``max_tokens`` for
    replies that are much shorter would starve the output budget for nothing.
    """

    def __init__(self, *, warmup: int = OUTPUT_WARMUP, headroom: float = OUTPUT_HEADROOM) -> None:
        self.warmup = warmup
        self.headroom = headroom
        self.seen = 0
        self.total = 0

    def estimate(self, max_tokens: int) -> int:
        """The reservation for a request allowed ``max_tokens`` (at least 1)."""
        if self.seen == 0 or self.seen < self.warmup:
            return max(1, max_tokens)
        mean = self.total / self.seen
        return max(1, min(max_tokens, math.ceil(mean * self.headroom)))

    def observe(self, output_tokens: int) -> None:
        """Record a reply's real output."""
        self.seen += 1
        self.total += max(0, output_tokens)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What was acquired before a request, so the reply can settle the difference.

    ``probe`` marks the one request a slow start lets out before the server has answered; it must be
    handed back with :meth:`RateLimits.release` however the request ends.
    """

    input_tokens: int
    output_tokens: int
    probe: bool = False


class RateLimits:
    """The three optional budgets of one run. A limit left as ``None`` is not enforced.

    :param requests_per_minute: requests sent, retries included.
    :param input_tokens_per_minute: ``input_tokens + cache_creation_input_tokens``, which is what the
        API counts (cache reads are free against ITPM).
    :param output_tokens_per_minute: output tokens, reserved from an estimate and settled on the reply.
    :param slow_start: open with a slow start while the server has stated no limits (see the module
        docstring); ``concurrency`` is how many requests may be in flight, which ends the slow start
        once the pace could no longer bind.
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        clock: Callable[[], float] | None = None,
        slow_start: bool = False,
        concurrency: int = 16,
    ) -> None:
        self.requests = Pacer(requests_per_minute) if requests_per_minute else None
        self.input_tokens = Pacer(input_tokens_per_minute) if input_tokens_per_minute else None
        self.output_tokens = Pacer(output_tokens_per_minute) if output_tokens_per_minute else None
        self.output_estimator = OutputEstimator()
        # the job's own limits are a ceiling: a server may lower the pace, never raise it above them
        self._ceilings = {
            "requests": requests_per_minute,
            "input_tokens": input_tokens_per_minute,
            "output_tokens": output_tokens_per_minute,
        }
        self._clock = clock or time.monotonic
        self._first_answer: float | None = None
        self._stated = False  # the server has stated its limits in headers: no need to guess
        self._answered: deque[float] = deque()
        self._adaptive_rpm: float | None = None
        self._adaptive: Pacer | None = None  # the request pacer AIMD set, retuned in place
        self._last_change = -math.inf  # any change of the adaptive pace
        self._last_cut = -math.inf  # the last decrease
        self._last_throttle = -math.inf  # the last 429, cut or not
        self._refused_rpm = math.inf  # the rate at the last 429: probing slows down near it
        self._concurrency = concurrency
        self._latency_s: float | None = None  # running mean of reply latency
        # slow start: one probe until the first answer, then `ramp` paces until a 429 or a stated limit
        self._slow = slow_start
        self._probe_busy = False
        self._probe_free = asyncio.Event()
        self.ramp: Pacer | None = None

    def learn(self, headers: Mapping[str, str]) -> None:
        """Pace no faster than the limits the server states in ``anthropic-ratelimit-*-limit`` headers,
        and a little slower while its ``*-remaining`` headers say its bucket runs low.

        Jobs often leave limits out or copy the wrong tier's; the hosted API says what it enforces
        on every response, and ignoring that turns every resume after a 429 into another storm.
        """
        for kind, header in LIMIT_HEADERS.items():
            stated = _positive_number(headers.get(header))
            if stated is None:
                continue
            self._stated = True
            self._end_slow_start()
            ceiling = self._ceilings[kind]
            target = stated if ceiling is None else min(stated, ceiling)
            current: Pacer | None = getattr(self, kind)
            if current is None or current.per_minute != target:
                setattr(self, kind, Pacer(target))
        for kind, header in REMAINING_HEADERS.items():
            pacer: Pacer | None = getattr(self, kind)
            remaining = _number(headers.get(header))
            if pacer is None or remaining is None or pacer.share != 1.0:
                continue  # no such limit, no word on it, or a guessed pace (AIMD has its own loop)
            if kind != "requests" and pacer.capacity < 2 * TOKEN_ROUNDING:
                continue  # rounded to 1,000, the header cannot tell a bucket this small low from empty
            pacer.hold_back(remaining < pacer.capacity)

    @property
    def adaptive_rpm(self) -> float | None:
        """The pace AIMD has settled on, when a server without limit headers has refused requests."""
        return self._adaptive_rpm

    @property
    def slow_start(self) -> bool:
        """Whether the run is still in its slow start (no stated limit, no 429, the pace still binding)."""
        return self._slow

    def answered(self, latency_s: float | None = None) -> None:
        """Record a request the server accepted (and how long it took, for the slow start's clock).

        In a slow start each answer raises the pace a step; under AIMD a quiet spell raises it a little.
        """
        now = self._clock()
        if self._first_answer is None:
            self._first_answer = now
        self._answered.append(now)
        while self._answered and self._answered[0] < now - ADAPT_WINDOW_S:
            self._answered.popleft()
        if latency_s is not None and latency_s >= 0:
            last = self._latency_s
            self._latency_s = latency_s if last is None else last + LATENCY_SMOOTHING * (latency_s - last)
        if self._slow:
            self._ramp_up()
            return
        quiet = min(now - self._last_change, now - self._last_throttle)
        if self._adaptive_rpm is not None and not self._stated and quiet >= ADAPT_INCREASE_EVERY_S:
            self._set_adaptive(self._probe_step(self._adaptive_rpm), now)

    def throttled(self) -> None:
        """A 429: unless the server states its limits, pace just under the rate it was accepting.

        A 429 in a slow start ends it at half the pace reached; before any answer there is no rate to
        measure, so only the shared pause rides it out.
        """
        now = self._clock()
        self._last_throttle = now
        if self._stated or now - self._last_cut < ADAPT_COOLDOWN_S or self._first_answer is None:
            return
        window = max(1.0, min(ADAPT_WINDOW_S, now - self._first_answer))
        accepted = sum(1 for t in self._answered if t >= now - window) * 60.0 / window
        if accepted <= 0:
            return
        decrease = ADAPT_DECREASE
        current = self._adaptive_rpm if self._adaptive_rpm is not None else math.inf
        if self._slow:
            # the server's burst allowance hid the overshoot for a while, so what it accepted over a
            # short window overstates its limit: halve, as TCP does when a slow start ends
            decrease = SLOW_START_DECREASE
            current = self.ramp.per_minute if self.ramp is not None else current
            self._end_slow_start()
        refused = min(accepted, current)
        self._refused_rpm = refused
        self._last_cut = now
        self._set_adaptive(max(ADAPT_FLOOR_RPM, refused * decrease), now)

    def _probe_step(self, rpm: float) -> float:
        """The next pace up: halfway to just under the refused rate when far below it (at least +3 %),
        then fine steps, so the pace spends its time near the limit instead of crossing it."""
        near = PROBE_NEAR * self._refused_rpm
        if rpm >= near:
            return rpm * (1 + ADAPT_FINE_INCREASE)
        return min(near, max(rpm * (1 + ADAPT_INCREASE), (rpm + near) / 2))

    def release(self, reservation: Reservation) -> None:
        """The request of ``reservation`` is over (answered, refused or abandoned): free its probe slot."""
        if reservation.probe:
            self._probe_busy = False
            self._probe_free.set()

    def _ramp_up(self) -> None:
        """One answer in a slow start: raise the pace so that it doubles every few round trips."""
        latency = self._latency_s if self._latency_s is not None else 0.2
        latency = max(latency, 1e-4)
        ceiling = self._ceilings["requests"]
        # past this the pace cannot bind: every slot is busy a round trip per request anyway
        unbound = self._concurrency * 60.0 / latency
        if self.ramp is None:
            rpm = 60.0 / latency  # one request at a time, back to back
        else:
            # +60 ln2 / D per answer doubles a pace of R/min every D seconds (answers come at R/min)
            doubling_s = min(SLOW_START_DOUBLING_RTTS * latency, SLOW_START_MAX_DOUBLING_S)
            rpm = self.ramp.per_minute + 60.0 * math.log(2) / doubling_s
        if rpm >= min(unbound, ceiling if ceiling is not None else math.inf):
            log.debug("slow start over: %.0f requests/min without a 429", rpm)
            self._end_slow_start()
        elif self.ramp is None:
            self.ramp = Pacer(rpm, share=GUESS_SHARE)
        else:
            self.ramp.retune(rpm)

    def _end_slow_start(self) -> None:
        self._slow = False
        self.ramp = None
        self._probe_busy = False
        self._probe_free.set()

    def _set_adaptive(self, rpm: float, now: float) -> None:
        ceiling = self._ceilings["requests"]
        lower = self._adaptive_rpm is None or rpm < self._adaptive_rpm
        self._adaptive_rpm = rpm if ceiling is None else min(rpm, ceiling)
        self._last_change = now
        if self._adaptive is not None and self.requests is self._adaptive:
            self._adaptive.retune(self._adaptive_rpm)  # in place: a new bucket would start with a burst
        else:
            self.requests = self._adaptive = Pacer(self._adaptive_rpm, share=GUESS_SHARE)
        log.log(
            logging.INFO if lower else logging.DEBUG,
            "the server states no rate limits: pacing at %.0f requests/min (%s)",
            self._adaptive_rpm,
            "after a 429" if lower else "probing upwards",
        )

    async def acquire(self, *, input_tokens: int, max_tokens: int) -> Reservation:
        """Wait for room for one request with ``input_tokens`` estimated input; returns what was taken.

        Pass the result to :meth:`settle` once the reply is in, and to :meth:`release` however the
        request ends.
        """
        probe = False
        while self._slow and self._first_answer is None:
            if not self._probe_busy:
                # the first request of a slow start goes alone: it finds out whether the server states limits
                self._probe_busy = probe = True
                self._probe_free.clear()
                break
            await self._probe_free.wait()
        try:
            if self.ramp is not None:
                await self.ramp.acquire(1)
            if self.requests is not None:
                await self.requests.acquire(1)
            if self.input_tokens is not None:
                await self.input_tokens.acquire(max(0, input_tokens))
            # estimated only now: replies that arrived while this request waited its turn count
            reservation = Reservation(max(0, input_tokens), self.output_estimator.estimate(max_tokens), probe)
            if self.output_tokens is not None:
                await self.output_tokens.acquire(reservation.output_tokens)
        except BaseException:
            # cancelled while waiting for budget: a probe that never went must not hold up the rest
            self.release(Reservation(0, 0, probe))
            raise
        return reservation

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        """Correct the budgets to what the reply really used: take a shortfall, give back an excess.

        Without the refund, every reply shorter than its estimate would cost the estimate: a pace of
        reservations rather than of tokens (80 % of an output limit with a 20 % headroom).
        """
        self.output_estimator.observe(usage.output_tokens)
        used_input = usage.input_tokens + usage.cache_creation_input_tokens
        for pacer, reserved, used in (
            (self.input_tokens, reservation.input_tokens, used_input),
            (self.output_tokens, reservation.output_tokens, usage.output_tokens),
        ):
            if pacer is None:
                continue
            if used > reserved:
                await pacer.acquire(used - reserved)
            else:
                pacer.refund(reserved - used)


class PauseGate:
    """A pause every sender honours: when the server says "wait", nobody sends until then.

    One worker's 429 means the organisation's bucket is empty for everyone; letting the other
    workers keep sending only collects more 429s (and retries) until each has been told in turn.

    :param clock: monotonic seconds (the loop's ``time``); injectable for tests.
    :param sleep: the coroutine that waits; injectable for tests.
    """

    def __init__(self, *, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> None:
        self._clock = clock
        self._sleep = sleep
        self.resume_at = -math.inf

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds`` from now; a shorter pause never cuts a longer one short."""
        if seconds > 0:
            self.resume_at = max(self.resume_at, self._clock() + seconds)

    @property
    def paused(self) -> bool:
        """Whether a sender arriving now would have to wait."""
        return self.resume_at > self._clock()

    async def wait(self) -> None:
        """Return once the pause is over: one sleep to ``resume_at``, another only if it was extended.

        Each sleep targets the deadline itself, so there is no polling; re-checking only when
        ``resume_at`` moved during the sleep keeps a fake sleep (which does not advance the
        clock) from looping.
        """
        while (delay := self.resume_at - self._clock()) > 0:
            target = self.resume_at
            await self._sleep(delay)
            if self.resume_at <= target:
                return


def loop_clock() -> Callable[[], float]:
    """The running loop's monotonic clock, which aiolimiter also uses."""
    return asyncio.get_running_loop().time


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _positive_number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number > 0 and math.isfinite(number) else None
