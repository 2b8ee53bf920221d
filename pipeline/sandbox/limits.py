"""Rate limits as the hosted API applies them: continuously refilled token buckets and their headers.

Three buckets, each optional: requests, input tokens (charged when a request is admitted) and output
tokens (charged when the answer is made, so the level can go negative and later requests wait).
A bucket holds ``burst_s`` seconds of its rate, but never less than one request; a single request
whose input cost exceeds the capacity is admitted once the bucket is full, or it could never pass.
Token ``remaining`` headers are rounded to the nearest 1,000, as the API documents.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache

from pipeline.sandbox.config import SandboxConfig

_EPSILON = 1e-9  # float refills land a hair under whole numbers; never make a client wait for that


class TokenBucket:
    """One continuously refilled bucket.

    :param per_minute: the published limit; the refill rate is ``per_minute / 60`` per second.
    :param minimum_capacity: the least the bucket holds (one request for the request bucket).
    """

    __slots__ = ("capacity", "level", "per_minute", "rate", "stamp")

    def __init__(self, per_minute: float, burst_s: float, now: float, minimum_capacity: float = 1.0) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(burst_s * self.rate, minimum_capacity)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        """Add what the rate earned since the last look, up to the capacity."""
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, need: float) -> float:
        """Seconds until the level reaches ``need`` (0 when it already has); call after ``refill``."""
        missing = need - self.level
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def until_full(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


class RateLimiter:
    """The sandbox's request, input-token and output-token limits (the ones the config sets)."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        burst = config.burst_s

        def bucket(rate: float | None) -> TokenBucket | None:
            return None if rate is None else TokenBucket(rate, burst, now)

        self.requests = bucket(config.requests_per_minute)
        self.input_tokens = bucket(config.input_tokens_per_minute)
        self.output_tokens = bucket(config.output_tokens_per_minute)

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.requests is not None or self.input_tokens is not None or self.output_tokens is not None

    def admit(self, input_tokens: int) -> float | None:
        """Charge one request and its input tokens, or refuse: the seconds to wait, charging nothing."""
        now = self._clock()
        wait = 0.0
        if self.requests is not None:
            self.requests.refill(now)
            wait = max(wait, self.requests.wait_for(1.0))
        if self.input_tokens is not None:
            self.input_tokens.refill(now)
            wait = max(wait, self.input_tokens.wait_for(min(float(input_tokens), self.input_tokens.capacity)))
        if self.output_tokens is not None:
            self.output_tokens.refill(now)
            # output is unknown until the answer: admit while anything is left (the level may go negative)
            wait = max(wait, self.output_tokens.wait_for(_EPSILON * 2))
        if wait > 0:
            return wait
        if self.requests is not None:
            self.requests.level -= 1.0
        if self.input_tokens is not None:
            self.input_tokens.level -= input_tokens
        return None

    def charge_output(self, output_tokens: int) -> None:
        """Take the answer's output tokens from the output bucket."""
        if self.output_tokens is not None:
            self.output_tokens.refill(self._clock())
            self.output_tokens.level -= output_tokens

    def headers(self) -> dict[str, str]:
        """``anthropic-ratelimit-*`` for each set limit, plus ``tokens-*`` for the tighter token limit."""
        now = self._clock()
        wall = time.time()
        out: dict[str, str] = {}
        if self.requests is not None:
            self.requests.refill(now)
            _describe(out, "requests", self.requests, wall, rounded=False)
        tightest: TokenBucket | None = None
        for name, token_bucket in (
            ("input-tokens", self.input_tokens),
            ("output-tokens", self.output_tokens),
        ):
            if token_bucket is None:
                continue
            token_bucket.refill(now)
            _describe(out, name, token_bucket, wall, rounded=True)
            if tightest is None or _share(token_bucket) < _share(tightest):
                tightest = token_bucket
        if tightest is not None:
            _describe(out, "tokens", tightest, wall, rounded=True)
        return out


def retry_after(wait_s: float) -> int:
    """The ``retry-after`` header value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


def _share(bucket: TokenBucket) -> float:
    return bucket.level / bucket.capacity


def _describe(out: dict[str, str], name: str, bucket: TokenBucket, wall: float, *, rounded: bool) -> None:
    remaining = max(0.0, bucket.level)
    out[f"anthropic-ratelimit-{name}-limit"] = str(round(bucket.per_minute))
    # the API rounds token counts to the nearest 1,000 (half up, not Python's half-to-even)
    value = int(remaining / 1000 + 0.5) * 1000 if rounded else math.floor(remaining + _EPSILON)
    out[f"anthropic-ratelimit-{name}-remaining"] = str(value)
    out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(math.ceil(wall + bucket.until_full()))


@lru_cache(maxsize=64)
def _rfc3339(epoch_s: int) -> str:
    # whole seconds, so consecutive responses share a cached string instead of formatting each time
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
