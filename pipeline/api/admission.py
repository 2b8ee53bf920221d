"""What admits a request: the interface of the budgets and the shared pause a ``MessagesClient`` honours.

A client makes its own :class:`~pipeline.api.ratelimit.RateLimits` and
:class:`~pipeline.api.ratelimit.PauseGate` unless it is handed others. A driver that runs many
clients against one account (the cluster engine: one client per worker, on many machines) hands
each client a stand-in for one shared set, so that every send is admitted by the same budgets and a
429 anywhere pauses everyone. These protocols are what a stand-in must provide; the local classes
provide exactly this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pipeline.api.ratelimit import Reservation
from pipeline.records import Usage


class Budgets(Protocol):
    """The request, input-token and output-token budgets of a client (see ``RateLimits``)."""

    def learn(self, headers: Mapping[str, str]) -> None:
        """Pace no faster than the limits a response's headers state."""

    def answered(self, latency_s: float | None = None) -> None:
        """A request the server accepted, and how long it took."""

    def throttled(self) -> None:
        """A 429 came back."""

    def release(self, reservation: Reservation) -> None:
        """The request of ``reservation`` is over, however it ended."""

    async def acquire(self, *, input_tokens: int, max_tokens: int) -> Reservation:
        """Wait for room for one request; returns what was taken."""

    async def settle(self, reservation: Reservation, usage: Usage) -> None:
        """Correct the budgets to what the reply really used."""


class Gate(Protocol):
    """The pause every sender of an account honours after a 429 or a ``retry-after`` (see ``PauseGate``)."""

    def pause(self, seconds: float) -> None:
        """Hold every sender for ``seconds`` from now."""

    @property
    def paused(self) -> bool:
        """Whether a sender arriving now would have to wait."""

    async def wait(self) -> None:
        """Return once the pause is over."""
