"""SIGINT and SIGTERM during a run: the first asks for a graceful stop, the second stops at once.

A graceful stop sends nothing new and lets the requests already in flight finish (they may already
be paid for), bounded by a grace period; then the run journals what came back and exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("pipeline.run")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Shutdown:
    """Signal handling for one run, installed on the running loop for the sending phase only.

    :param grace_s: how long in-flight requests may take after the first signal.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.signal_name: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort: Callable[[], None] = lambda: None
        self._stop: Callable[[], None] = lambda: None
        self._timer: asyncio.TimerHandle | None = None
        self.in_flight: Callable[[], int] = lambda: 0

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal_name is not None

    def install(self, stop: Callable[[], None], abort: Callable[[], None]) -> None:
        """Route SIGINT/SIGTERM to ``stop`` (first) and ``abort`` (second, or when grace runs out)."""
        self._loop = asyncio.get_running_loop()
        self._stop, self._abort = stop, abort
        for sig in SIGNALS:
            self._loop.add_signal_handler(sig, self._handle, sig)

    def uninstall(self) -> None:
        """Give the signals back (Python's defaults) once nothing is being sent."""
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            for sig in SIGNALS:
                self._loop.remove_signal_handler(sig)
            self._loop = None

    def _handle(self, sig: signal.Signals) -> None:
        assert self._loop is not None
        if self.signal_name is None:
            self.signal_name = sig.name
            log.warning(
                "%s: sending nothing new; waiting up to %gs for %d requests in flight "
                "(signal again to stop now)",
                sig.name,
                self.grace_s,
                self.in_flight(),
            )
            self._stop()
            self._timer = self._loop.call_later(self.grace_s, self._give_up)
        else:
            log.warning("%s again: stopping now; requests in flight are abandoned", sig.name)
            self._abort()

    def _give_up(self) -> None:
        log.warning(
            "grace period of %gs is over: abandoning %d requests in flight", self.grace_s, self.in_flight()
        )
        self._abort()
