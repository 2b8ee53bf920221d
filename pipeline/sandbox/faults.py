"""Seeded chaos: which request gets which fault, how much latency, and the canned failure replies.

One fault draw per ``/v1/messages`` request, in arrival order, from ``random.Random(seed)``; latency
comes from a second generator so changing ``latency_ms`` never shifts the fault sequence.
"""

from __future__ import annotations

import json
import random

from aiohttp import web

from pipeline.sandbox.apierrors import error_body
from pipeline.sandbox.config import SandboxConfig

HTML_503 = (
    "<html><head><title>503 Service Unavailable</title></head>"
    "<body><center><h1>503 Service Unavailable</h1></center><hr><center>sandbox</center></body></html>\n"
)
_JSON_FAULTS = {
    "529": (529, "overloaded_error", "Overloaded"),
    "500": (500, "api_error", "Internal server error"),
}


class FaultDice:
    """Draws the fault (or none) and the latency for each request."""

    def __init__(self, config: SandboxConfig) -> None:
        self._rate = config.fault_rate
        self._kinds = config.faults
        self._faults = random.Random(config.seed)
        # a string seed is hashed deterministically (sha512), unlike hash() of a str
        self._latency = random.Random(f"{config.seed}-latency")
        self._tool_rate = config.tool_violation_rate
        self._tools = random.Random(f"{config.seed}-tools")
        self._refusal_rate = config.refusal_rate
        self._refusals = random.Random(f"{config.seed}-refusals")
        self._truncation_rate = config.truncation_rate
        self._truncations = random.Random(f"{config.seed}-truncations")
        self._mean_s = config.latency_ms / 1000.0
        self._jitter_s = config.jitter_ms / 1000.0

    def fault(self) -> str | None:
        """The fault kind for the next request, or ``None`` to answer it."""
        if self._rate <= 0.0:
            return None
        if self._faults.random() < self._rate:
            return self._faults.choice(self._kinds)
        return None

    def tool_violation(self) -> bool:
        """Whether the next answer's tool input should break its schema (``tool_violation_rate``)."""
        return self._tool_rate > 0.0 and self._tools.random() < self._tool_rate

    def refusal(self) -> bool:
        """Whether the next answer comes back refused (``refusal_rate``)."""
        return self._refusal_rate > 0.0 and self._refusals.random() < self._refusal_rate

    def truncation(self) -> bool:
        """Whether the next answer is cut short at ``max_tokens`` (``truncation_rate``)."""
        return self._truncation_rate > 0.0 and self._truncations.random() < self._truncation_rate

    def latency_s(self) -> float:
        """The delay before the next answer (never negative)."""
        if self._jitter_s <= 0.0:
            return self._mean_s
        return max(0.0, self._mean_s + self._latency.uniform(-self._jitter_s, self._jitter_s))


def status_fault(kind: str, request_id: str, headers: dict[str, str]) -> web.Response:
    """The reply for a fault that is just a status and body: ``529``, ``500`` or ``html503``."""
    if kind == "html503":
        # what a proxy in front of the API sends: HTML, not the API's JSON
        return web.Response(status=503, text=HTML_503, content_type="text/html", headers=headers)
    status, error_type, message = _JSON_FAULTS[kind]
    body = json.dumps(error_body(error_type, message, request_id)).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
