"""Running the sandbox: in a background thread for tests and ``--sandbox`` runs, or blocking for the CLI.

Both bind their own socket first, so port 0 yields the real port before any request is served, and
both shut down with a short grace period: in-flight answers finish, a ``slow`` fault's sleeping
handler is cancelled rather than waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.server import STATE, SandboxState, create_app

SHUTDOWN_GRACE_S = 0.5  # how long in-flight requests may finish when the sandbox stops
STARTUP_TIMEOUT_S = 10.0


class SandboxHandle:
    """A running sandbox: where it listens and what it has counted."""

    def __init__(self, base_url: str, state: SandboxState) -> None:
        self.base_url = base_url
        self._state = state

    def stats(self) -> dict[str, Any]:
        """The same JSON as ``GET /_sandbox/stats``."""
        return self._state.snapshot()

    def finish_batches(self) -> int:
        """End every message batch still processing, now (a test control; see ``BatchStore.finish_all``)."""
        return self._state.batches.finish_all()

    def __repr__(self) -> str:
        return f"SandboxHandle(base_url={self.base_url!r})"


def _bind(config: SandboxConfig) -> tuple[socket.socket, str]:
    """A listening socket for the config's host and port, and the base URL it answers on."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.create_server((config.host, config.port), family=family, backlog=1024)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if family == socket.AF_INET6 else config.host
    return sock, f"http://{host}:{port}"


async def _start(config: SandboxConfig) -> tuple[web.AppRunner, SandboxState, str]:
    app = create_app(config)
    # handler_cancellation: a client that hangs up (timeout, drop) cancels its handler instead of
    # leaving it to answer nobody; access_log=None keeps the hot path free of log formatting
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        sock, base_url = _bind(config)
    except BaseException:
        await runner.cleanup()  # the app started: let it clean up (a port in use lands here)
        raise
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, app[STATE], base_url


class _ServerThread(threading.Thread):
    """Owns an event loop that serves until ``stop`` is called from another thread."""

    def __init__(self, config: SandboxConfig) -> None:
        super().__init__(name="pipeline-sandbox", daemon=True)
        self._config = config
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.started_with: tuple[SandboxState, str] | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001  (handed to the starting thread, which re-raises it)
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        runner, state, base_url = await _start(self._config)
        self.started_with = (state, base_url)
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()

    def wait_ready(self) -> tuple[SandboxState, str]:
        if not self._ready.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError("the sandbox did not start in time")
        if self.error is not None:
            raise self.error
        assert self.started_with is not None
        return self.started_with

    def stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            # the loop may already be gone if it failed; then there is nothing to stop
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        self.join()


@contextlib.contextmanager
def running_sandbox(config: SandboxConfig | None = None) -> Iterator[SandboxHandle]:
    """Serve the sandbox in a background thread with its own event loop for the ``with`` block.

    On exit the server stops, its connections close and the thread ends.
    """
    thread = _ServerThread(config or SandboxConfig())
    thread.start()
    try:
        state, base_url = thread.wait_ready()
    except BaseException:
        thread.stop()
        raise
    try:
        yield SandboxHandle(base_url, state)
    finally:
        thread.stop()


def serve(config: SandboxConfig) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM; prints the URL to stderr once bound."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config))


async def _serve(config: SandboxConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # not on Windows; there Ctrl-C arrives as KeyboardInterrupt, which serve() swallows
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    runner, _, base_url = await _start(config)
    print(f"sandbox listening on {base_url}", file=sys.stderr, flush=True)  # noqa: T201  (the CLI's one status line)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
