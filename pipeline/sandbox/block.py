"""``pipeline.sandbox()`` (also ``pipeline.Sandbox``): the sandbox served for a ``with`` block.

While a block is open, a ``Job.run`` (or ``estimate(exact=True)``) that names no server
(``base_url=``, ``sandbox=True``) sends to the innermost open sandbox, with the sandbox's key when
the job's key variable is unset; other tools reach it at ``base_url`` (the official SDK works
against it unchanged). ``pipeline.sandbox`` is this package, made callable (see its
``__init__``), so that ``with pipeline.sandbox():`` works however it was imported.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.extras import require

if TYPE_CHECKING:
    from types import TracebackType

    from pipeline.sandbox.config import SandboxConfig
    from pipeline.sandbox.serve import SandboxHandle

_lock = threading.Lock()
_open: list[Sandbox] = []  # innermost last


class Sandbox:
    """A strict local fake of the Messages API, served on 127.0.0.1 in a background thread.

    ``Sandbox(**settings)`` takes the settings of ``pipeline sandbox`` as ``SandboxConfig`` names
    them (``latency_ms``, ``fault_rate``, ``requests_per_minute``, ``tool_violation_rate``, ...),
    ``preset=`` to answer like a provider preset, and ``port`` (default 0: a free port).

    :raises ConfigError: when the ``sandbox`` extra is missing or a setting is not valid.
    """

    def __init__(self, *, preset: str | None = None, **settings: Any) -> None:
        require("sandbox", "pipeline.sandbox()")
        from pipeline.sandbox.config import SandboxConfig, preset_config

        try:
            self.config: SandboxConfig = (
                preset_config(preset, **settings) if preset is not None else SandboxConfig(**settings)
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sandbox: {exc}") from None
        self._serving: contextlib.ExitStack | None = None
        self._handle: SandboxHandle | None = None

    def start(self) -> Sandbox:
        """Start serving (``with`` does this); for a notebook that keeps it open across cells."""
        if self._handle is not None:
            return self
        from pipeline.sandbox.serve import running_sandbox

        stack = contextlib.ExitStack()
        try:
            self._handle = stack.enter_context(running_sandbox(self.config))
        except OSError as exc:
            raise ConfigError(
                f"sandbox cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from None
        self._serving = stack
        with _lock:
            _open.append(self)
        return self

    def close(self) -> None:
        """Stop serving; runs that name no server no longer come here."""
        with _lock:
            if self in _open:
                _open.remove(self)
        if self._serving is not None:
            self._serving.close()
        self._serving = None
        self._handle = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """Where it listens, ``http://127.0.0.1:PORT``."""
        return self._serving_handle().base_url

    def stats(self) -> dict[str, Any]:
        """What it has counted (requests, answers, faults, batches): ``GET /_sandbox/stats``."""
        return self._serving_handle().stats()

    def _serving_handle(self) -> SandboxHandle:
        if self._handle is None:
            raise ConfigError("the sandbox is not serving: use it in a with block, or call start()")
        return self._handle

    def __repr__(self) -> str:
        where = self._handle.base_url if self._handle is not None else "not serving"
        return f"Sandbox({where})"


def active_sandbox() -> Sandbox | None:
    """The innermost open sandbox, where runs that name no server go; None when none is open."""
    with _lock:
        return _open[-1] if _open else None
