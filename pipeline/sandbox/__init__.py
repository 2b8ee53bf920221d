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
- ``server``: the aiohttp app and its statistics; ``serve``: serving it in a thread or the foreground.
"""

from __future__ import annotations

from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.serve import SandboxHandle, running_sandbox, serve
from pipeline.sandbox.server import create_app

__all__ = ["SandboxConfig", "SandboxHandle", "create_app", "running_sandbox", "serve"]
