"""The sandbox's settings: one frozen value object, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = frozenset({"529", "500", "html503", "drop", "slow", "stream_error"})
AUTH_MODES = frozenset({"any", "x-api-key", "bearer"})
SHAPES = frozenset({"anthropic", "openai"})


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox behaves: where it listens, its limits, its faults and its wire dialect.

    :param port: 0 picks a free port (read it from the handle's ``base_url``).
    :param latency_ms: mean delay added before each answer; ``jitter_ms`` spreads it uniformly.
    :param requests_per_minute: ``None`` means unlimited, as for the two token limits.
    :param burst_s: bucket capacity in seconds of the rate (at least one request's worth).
    :param ratelimit_headers: send ``anthropic-ratelimit-*``; self-hosted servers send none.
    :param fault_rate: share of ``/v1/messages`` requests answered with a fault from ``faults``.
    :param slow_s: how long a ``slow`` fault waits before answering.
    :param api_key: ``None`` accepts any non-empty key; otherwise only this key.
    :param auth: which header carries the key: ``x-api-key``, ``bearer`` or ``any``.
    :param shape: ``anthropic`` or ``openai`` (choices/prompt_tokens replies, as some providers send).
    :param spend_limit_after: after this many answers every request gets the spend-cap 429.
    :param reject_marker: a request whose last user text contains this is refused with a 400, as the
        API refuses content it will not take; tests use it to make chosen rows invalid.
    """

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    burst_s: float = 1.0
    ratelimit_headers: bool = True
    fault_rate: float = 0.0
    faults: tuple[str, ...] = ("529", "500", "html503", "drop", "slow")
    slow_s: float = 30.0
    api_key: str | None = None
    auth: str = "any"
    shape: str = "anthropic"
    spend_limit_after: int | None = None
    reject_marker: str | None = None

    def __post_init__(self) -> None:
        # fail at construction, not on the first request, so a CLI typo is a clear message
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must be >= 0")
        for name in ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute"):
            rate = getattr(self, name)
            if rate is not None and rate <= 0:
                raise ValueError(f"{name} must be > 0 (or None for unlimited), got {rate}")
        if self.burst_s <= 0:
            raise ValueError(f"burst_s must be > 0, got {self.burst_s}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within 0..1, got {self.fault_rate}")
        unknown = sorted(set(self.faults) - FAULT_KINDS)
        if unknown:
            raise ValueError(f"faults: unknown kinds {unknown}; known: {sorted(FAULT_KINDS)}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.slow_s < 0:
            raise ValueError(f"slow_s must be >= 0, got {self.slow_s}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {sorted(AUTH_MODES)}, got {self.auth!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {self.shape!r}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be non-empty (or None to accept any key)")
        if self.spend_limit_after is not None and self.spend_limit_after < 0:
            raise ValueError(f"spend_limit_after must be >= 0, got {self.spend_limit_after}")
