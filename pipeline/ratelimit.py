"""Client-side pacing: requests, input tokens and output tokens per minute, plus the shared 429 pause.

The hosted API meters with token buckets that refill continuously (reference §6), so a client that
spends a whole minute's allowance at once earns 429s. Each :class:`Pacer` therefore holds about one
second of its rate and refills smoothly; amounts larger than that are taken in bucket-sized chunks.

:class:`RateLimits` bundles the three optional pacers with the bookkeeping that keeps them honest:
estimates are acquired before a request and the shortfall after the reply, when the real usage is
known. :class:`PauseGate` is the one place a 429 (or any ``retry-after``) stops every sender.

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
PACE_SHARE = 0.985  # of a limit actually used: the margin absorbs jitter in arrival times
BURST_S = 0.5  # seconds of the rate a bucket may release at once
# AIMD for servers that state no limits (self-hosted ones): after a 429, pace at the rate that was
# being answered, a little lower; then probe upwards slowly until the next 429.
ADAPT_WINDOW_S = 10.0  # successes counted over this window to measure what the server accepts
ADAPT_DECREASE = 0.9  # new pace = accepted rate x this
ADAPT_COOLDOWN_S = 2.0  # one decrease per burst of 429s, not one per refused request
ADAPT_INCREASE_EVERY_S = 3.0
ADAPT_INCREASE = 0.03  # +3 % per quiet interval: back above a 10 % cut in about 10 s
ADAPT_FLOOR_RPM = 1.0
LIMIT_HEADERS = {
    "requests": "anthropic-ratelimit-requests-limit",
    "input_tokens": "anthropic-ratelimit-input-tokens-limit",
    "output_tokens": "anthropic-ratelimit-output-tokens-limit",
}


class Pacer:
    """One per-minute budget, paced smoothly a little under the limit.

    The bucket holds half a second of the rate (at least 1 unit) and refills at
    :data:`PACE_SHARE` of it: pacing at exactly the server's limit keeps its bucket full, so any
    jitter in arrival times overflows it into 429s.

    :param per_minute: the limit, in units (requests or tokens) per minute.
    """

    def __init__(self, per_minute: float) -> None:
        if not per_minute > 0:
            raise ValueError(f"per_minute must be positive, got {per_minute!r}")
        self.per_minute = per_minute
        rate = per_minute * PACE_SHARE
        self.capacity = max(1.0, rate * BURST_S / 60.0)
        # the period that refills `capacity` at `rate`: BURST_S at high rates, longer below
        self._limiter = AsyncLimiter(self.capacity, self.capacity * 60.0 / rate)

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
    """What was acquired before a request, so the reply can settle the difference."""

    input_tokens: int
    output_tokens: int


class RateLimits:
    """The three optional budgets of one run. A limit left as ``None`` is not enforced.

    :param requests_per_minute: requests sent, retries included.
    :param input_tokens_per_minute: ``input_tokens + cache_creation_input_tokens``, which is what the
        API counts (cache reads are free against ITPM).
    :param output_tokens_per_minute: output tokens, reserved from an estimate and settled on the reply.
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        input_tokens_per_minute: float | None = None,
        output_tokens_per_minute: float | None = None,
        clock: Callable[[], float] | None = None,
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
        self._last_change = -math.inf  # any change of the adaptive pace
        self._last_cut = -math.inf  # the last decrease
        self._last_throttle = -math.inf  # the last 429, cut or not

    def learn(self, headers: Mapping[str, str]) -> None:
        """Pace no faster than the limits the server states in ``anthropic-ratelimit-*-limit`` headers.

        Jobs often leave limits out or copy the wrong tier's; the hosted API says what it enforces
        on every response, and ignoring that turns every resume after a 429 into another storm.
        """
        for kind, header in LIMIT_HEADERS.items():
            stated = _positive_number(headers.get(header))
            if stated is None:
                continue
            self._stated = True
            ceiling = self._ceilings[kind]
            target = stated if ceiling is None else min(stated, ceiling)
            current: Pacer | None = getattr(self, kind)
            if current is None or current.per_minute != target:
                setattr(self, kind, Pacer(target))

    @property
    def adaptive_rpm(self) -> float | None:
        """The pace AIMD has settled on, when a server without limit headers has refused requests."""
        return self._adaptive_rpm

    def answered(self) -> None:
        """Record a request the server accepted; after a quiet spell, raise the adaptive pace a little."""
        now = self._clock()
        if self._first_answer is None:
            self._first_answer = now
        self._answered.append(now)
        while self._answered and self._answered[0] < now - ADAPT_WINDOW_S:
            self._answered.popleft()
        quiet = min(now - self._last_change, now - self._last_throttle)
        if self._adaptive_rpm is not None and quiet >= ADAPT_INCREASE_EVERY_S:
            self._set_adaptive(self._adaptive_rpm * (1 + ADAPT_INCREASE), now)

    def throttled(self) -> None:
        """A 429: unless the server states its limits, pace just under the rate it was accepting."""
        now = self._clock()
        self._last_throttle = now
        if self._stated or now - self._last_cut < ADAPT_COOLDOWN_S or self._first_answer is None:
            # before any answer there is no accepted rate to measure: the shared pause rides it out
            return
        window = max(1.0, min(ADAPT_WINDOW_S, now - self._first_answer))
        accepted = sum(1 for t in self._answered if t >= now - window) * 60.0 / window
        if accepted <= 0:
            return
        current = self._adaptive_rpm if self._adaptive_rpm is not None else math.inf
        self._last_cut = now
        self._set_adaptive(max(ADAPT_FLOOR_RPM, min(accepted, current) * ADAPT_DECREASE), now)

    def _set_adaptive(self, rpm: float, now: float) -> None:
        ceiling = self._ceilings["requests"]
        lower = self._adaptive_rpm is None or rpm < self._adaptive_rpm
        self._adaptive_rpm = rpm if ceiling is None else min(rpm, ceiling)
        self._last_change = now
        self.requests = Pacer(self._adaptive_rpm)
        log.log(
            logging.INFO if lower else logging.DEBUG,
            "the server states no rate limits: pacing at %.0f requests/min (%s)",
            self._adaptive_rpm,
            "after a 429" if lower else "probing upwards",
        )

    async def acquire(self, *, input_tokens: int, max_tokens: int) -> Reservation:
        """Wait for room for one request with ``input_tokens`` estimated input; returns what was taken."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.input_tokens is not None:
            await self.input_tokens.acquire(max(0, input_tokens))
        # estimated only now: replies that arrived while this request waited its turn count
        reservation = Reservation(max(0, input_tokens), self.output_estimator.estimate(max_tokens))
        if self.output_tokens is not None:
            await self.output_tokens.acquire(reservation.output_tokens)
        return reservation

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        """Take what the reply used beyond the reservation, so the budgets track real usage.

        Over-estimates are not given back: aiolimiter has no refund, and the bucket drains anyway.
        """
        self.output_estimator.observe(usage.output_tokens)
        used_input = usage.input_tokens + usage.cache_creation_input_tokens
        if self.input_tokens is not None and used_input > reservation.input_tokens:
            await self.input_tokens.acquire(used_input - reservation.input_tokens)
        if self.output_tokens is not None and usage.output_tokens > reservation.output_tokens:
            await self.output_tokens.acquire(usage.output_tokens - reservation.output_tokens)


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


def _positive_number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number > 0 and math.isfinite(number) else None
