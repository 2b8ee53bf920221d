"""Calling the package's async work from synchronous Python, with or without a running event loop.

A script has no event loop: the work runs on this thread with ``asyncio.run``, and a run installs
the CLI's signal handling (the first Ctrl-C stops gracefully). Jupyter's kernel already runs a loop
on the thread that executes cells, and a loop cannot be nested, so there the work runs in a worker
thread with its own loop, started in the caller's ``contextvars`` context (the kernel routes output
by it). Only the main thread receives signals: a Ctrl-C (the notebook's interrupt button) arrives
here as ``KeyboardInterrupt`` while this thread waits, and is forwarded to the run as the same
graceful stop, a second one as the stop-now.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

T = TypeVar("T")


def loop_running() -> bool:
    """Whether this thread is inside a running event loop (as a Jupyter cell is)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_coroutine(
    make: Callable[[], Coroutine[Any, Any, T]], *, interrupt: Callable[[], bool] | None = None
) -> T:
    """Run ``make()`` to the end from synchronous code, here or (inside a running loop) in a thread.

    :param interrupt: called on each Ctrl-C that reaches this thread while a worker runs the
        coroutine; returns False when the run is not listening, and the coroutine is then cancelled.
    """
    if not loop_running():
        return asyncio.run(make())
    return cast(T, _Worker(make).wait(interrupt))


def call_function(func: Callable[[], T]) -> T:
    """Call a blocking function that runs its own event loop (``asyncio.run``), in a thread when needed.

    For read-only work (``estimate``, ``validate``): a Ctrl-C returns at once and the thread is left to
    finish on its own, since nothing it does needs undoing.
    """
    if not loop_running():
        return func()
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["result"] = func()
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread, which re-raises it)
            box["error"] = exc
        finally:
            done.set()

    _thread(call)
    done.wait()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _thread(target: Callable[[], None]) -> None:
    """Start a daemon thread running ``target`` in a copy of this thread's context.

    Callers wait on an Event the target sets, never on ``Thread.join``: before Python 3.13 a
    KeyboardInterrupt that lands inside ``join`` can mark a thread that is still running as stopped.
    """
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(target,), name="pipeline-run", daemon=True).start()


@dataclass(slots=True)
class _Worker:
    """A thread with its own event loop running one coroutine; its outcome is handed back."""

    make: Callable[[], Coroutine[Any, Any, Any]]
    result: Any = None
    error: BaseException | None = None
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    started: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    async def _main(self) -> Any:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.started.set()
        return await self.make()

    def _run(self) -> None:
        try:
            self.result = asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread, which re-raises it)
            self.error = exc
        finally:
            self.started.set()
            self.done.set()

    def wait(self, interrupt: Callable[[], bool] | None) -> Any:
        _thread(self._run)
        interrupted = False
        while not self.done.is_set():
            try:
                self.done.wait()
            except KeyboardInterrupt:
                interrupted = True
                if interrupt is None or not interrupt():
                    self._cancel()
        if isinstance(self.error, asyncio.CancelledError) and interrupted:
            raise KeyboardInterrupt from None
        if self.error is not None:
            raise self.error
        return self.result

    def _cancel(self) -> None:
        self.started.wait()
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just finished: nothing to cancel
                loop.call_soon_threadsafe(task.cancel)
