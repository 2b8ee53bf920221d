"""Test doubles shared by the client and rate-limit tests."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Monotonic time the test controls; ``sleep`` records the delay and jumps to the deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        target = self.now + delay
        await asyncio.sleep(0)  # let other senders run, as a real sleep would
        self.now = max(self.now, target)
