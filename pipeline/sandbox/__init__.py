"""A strict local fake of the Anthropic Messages API, for trying jobs offline and for tests.

It validates requests as the hosted API does (images included), answers deterministically, and can
enforce rate limits, inject faults and speak an OpenAI-like dialect. It may use only the model
facts of ``catalog`` and the package's base, never the code it checks. Needs the ``sandbox`` extra
(aiohttp). Module map:

- ``config``: ``SandboxConfig``, the settings.
- ``validate``, ``vision`` and ``tools``: what a request must look like; the input-token formula.
- ``answers``, ``toolinput`` and ``sse``: the reply, made-up tool input, and streamed events.
- ``limits`` and ``faults``: token buckets with their headers; seeded faults and latency.
- ``batches``: the Message Batches endpoints (timed processing, shuffled, seeded errored/expired).
- ``server``: the aiohttp app and its statistics; ``serve``: serving it in a thread or the foreground;
  ``block``: ``pipeline.sandbox()``, serving it for a ``with`` block.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from pipeline.sandbox.block import Sandbox
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.serve import SandboxHandle, running_sandbox, serve
from pipeline.sandbox.server import create_app

__all__ = ["Sandbox", "SandboxConfig", "SandboxHandle", "create_app", "running_sandbox", "serve"]


class _CallablePackage(types.ModuleType):
    """This package, callable: ``pipeline.sandbox(**settings)`` is ``Sandbox(**settings)``.

    The Python API promises ``with pipeline.sandbox(): ...``, and ``pipeline.sandbox`` is this
    package's name: once anything imports the package, the attribute *is* the package, so the
    package itself takes the call rather than a function that the import would hide.
    """

    def __call__(self, *, preset: str | None = None, **settings: Any) -> Sandbox:
        return Sandbox(preset=preset, **settings)


sys.modules[__name__].__class__ = _CallablePackage
