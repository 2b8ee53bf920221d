"""SIGINT and SIGTERM during a run: the first asks for a graceful stop, the second stops at once.

A graceful stop sends nothing new and lets the requests already in flight finish (they may already
be paid for), bounded by a grace period; then the run journals what came back and exits non-zero.

Only the main thread may own signal handlers. A run elsewhere (a worker thread, as the Python API
uses inside Jupyter, whose event loop already runs) installs none; whoever started it asks for the
same stop with :meth:`Shutdown.interrupt`, from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
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
        self._owned = False  # whether the signal handlers are ours to remove
        self.in_flight: Callable[[], int] = lambda: 0

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signal_name is not None

    def install(self, stop: Callable[[], None], abort: Callable[[], None]) -> None:
        """Route SIGINT/SIGTERM to ``stop`` (first) and ``abort`` (second, or when grace runs out)."""
        self._loop = asyncio.get_running_loop()
        self._stop, self._abort = stop, abort
        self._owned = threading.current_thread() is threading.main_thread()
        if not self._owned:
            return  # signals reach the main thread only; the caller forwards them with interrupt()
        try:
            for sig in SIGNALS:
                self._loop.add_signal_handler(sig, self._handle, sig)
        except (NotImplementedError, RuntimeError):  # a loop without signal support (Windows)
            self._owned = False

    def uninstall(self) -> None:
        """Give the signals back (Python's defaults) once nothing is being sent."""
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None:
            if self._owned:
                for sig in SIGNALS:
                    self._loop.remove_signal_handler(sig)
            self._loop = None

    def interrupt(self, sig: signal.Signals = signal.SIGINT) -> bool:
        """Act as if ``sig`` arrived (first: a graceful stop; again: stop now), from any thread.

        Returns False when no run is listening (before its sending phase or after it): the caller
        then stops the run its own way.
        """
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(self._handle, sig)
        except RuntimeError:  # the loop has closed meanwhile
            return False
        return True

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
