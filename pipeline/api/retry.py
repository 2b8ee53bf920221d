"""The one retry policy of every provider call: Messages, count_tokens and the Message Batches endpoints.

Which failures are tried again (:class:`~pipeline.errors.RetryableApiError` only), how long to wait
(the server's ``retry-after`` when it gives one, capped; otherwise jittered exponential backoff),
and when to give up: after ``max_attempts`` attempts **or** once another wait would end past
``max_total_s`` since the first attempt, whichever comes first (stamina's ``attempts`` and
``timeout``). tenacity does the looping; its defaults retry everything forever, so every argument
is given here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)

from pipeline.errors import ApiError, RetryableApiError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryDetails:
    """What a retry hook receives before each wait.

    :param attempt: the attempt that just failed (1 for the first request).
    :param wait_s: how long the caller will wait before the next attempt.
    :param error: the failure being retried.
    """

    attempt: int
    wait_s: float
    error: ApiError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one provider call is retried.

    :param max_attempts: attempts in all, the first included.
    :param max_total_s: no wait starts that would end later than this after the first attempt.
    :param base_s: the first backoff ceiling; it doubles per attempt up to ``cap_s``.
    :param max_wait_s: the longest single wait, whether the server asked for it or backoff chose it
        (a server asking for 90 s means it: the SDK's 60 s cut-off is not copied).
    """

    max_attempts: int = 8
    max_total_s: float = 900.0
    base_s: float = 0.5
    cap_s: float = 30.0
    max_wait_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def backoff_ceiling(self, attempt: int) -> float:
        """The longest backoff after failed attempt number ``attempt`` (1-based)."""
        exponent = min(attempt - 1, 16)  # the cap is reached long before 2**16
        return min(self.base_s * 2.0**exponent, self.cap_s, self.max_wait_s)

    def wait_s(self, error: ApiError, attempt: int) -> float:
        """The server's delay when it gave one (capped), else "equal" jitter under the ceiling.

        Equal jitter never waits less than half the ceiling, so a storm of 529s still spreads out.
        """
        if error.retry_after is not None:
            return min(error.retry_after, self.max_wait_s)
        ceiling = self.backoff_ceiling(attempt)
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def retrying(
        self,
        *,
        sleep: Callable[[float], Awaitable[None]],
        before_sleep: Callable[[RetryDetails], None] | None = None,
    ) -> AsyncRetrying:
        """A tenacity loop for one call: ``async for attempt in policy.retrying(...): with attempt: ...``."""

        def wait(state: RetryCallState) -> float:
            return self.wait_s(failure(state), state.attempt_number)

        def hook(state: RetryCallState) -> None:
            if before_sleep is not None:
                delay = state.next_action.sleep if state.next_action is not None else 0.0
                before_sleep(RetryDetails(attempt=state.attempt_number, wait_s=delay, error=failure(state)))

        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableApiError),
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_total_s),
            wait=wait,
            sleep=sleep,
            before_sleep=hook,
            reraise=True,
        )

    async def call(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        sleep: Callable[[float], Awaitable[None]],
        log: logging.Logger,
        what: str,
    ) -> T:
        """Run ``call`` under this policy, logging each wait; the error carries its attempt count."""

        def before_sleep(details: RetryDetails) -> None:
            log.info(
                "%s failed (attempt %d): %s; retrying in %.1f s",
                what,
                details.attempt,
                details.error,
                details.wait_s,
            )

        async for attempt in self.retrying(sleep=sleep, before_sleep=before_sleep):
            with attempt:
                try:
                    return await call()
                except ApiError as error:
                    error.attempts = attempt.retry_state.attempt_number
                    raise
        raise AssertionError("the retry loop ends by returning or raising")


def failure(state: RetryCallState) -> ApiError:
    """The error tenacity is deciding about (the retry predicate admits only ``RetryableApiError``)."""
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    assert isinstance(error, ApiError), error
    return error
