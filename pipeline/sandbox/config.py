"""The sandbox's settings: one frozen value object, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.catalog.providers import PRESETS

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
    :param tool_violation_rate: share of answers whose tool input is made to break the tool's
        ``input_schema`` (a required property dropped or a value of the wrong type), drawn per
        request from the seed; a resend is drawn again, as a model may answer right the next time.
    :param batch_processing_s: how long a message batch stays ``in_progress`` after it is created.
    :param batch_errored_rate: share of batch requests whose result is ``errored`` (``api_error``),
        and ``batch_expired_rate`` the share ``expired``; drawn per request from the seed.
    :param batch_max_requests: most requests one batch may hold (the API's 100,000), and
        ``batch_max_bytes`` the largest create body (256 MB).
    :param refusal_rate: share of answers that come back refused (``stop_reason`` ``refusal``, with
        ``stop_details``), and ``truncation_rate`` the share cut short (``max_tokens``); drawn per
        request from the seed, in realtime and batch mode alike.
    :param models_api: serve ``/v1/models`` and refuse a model the table does not know (404), as the
        hosted API does; False for presets of servers that serve any model name.
    :param preset: the provider preset the sandbox imitates (see ``preset_config``).
    :param tool_choice_supported: False answers a request with ``tool_choice`` with a 400.
    :param count_tokens_supported: False answers ``/v1/messages/count_tokens`` with a 404.
    :param count_tokens_per_minute: the ``/v1/messages/count_tokens`` limit (its own, apart from the
        Messages limits); ``None`` for unlimited.
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
    batch_processing_s: float = 1.0
    batch_errored_rate: float = 0.0
    batch_expired_rate: float = 0.0
    batch_max_requests: int = 100_000
    batch_max_bytes: int = 256_000_000
    count_tokens_per_minute: float | None = None
    tool_violation_rate: float = 0.0
    refusal_rate: float = 0.0
    truncation_rate: float = 0.0
    models_api: bool = True
    preset: str | None = None
    tool_choice_supported: bool = True
    count_tokens_supported: bool = True

    def __post_init__(self) -> None:
        # fail at construction, not on the first request, so a CLI typo is a clear message
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must be >= 0")
        for name in (
            "requests_per_minute",
            "input_tokens_per_minute",
            "output_tokens_per_minute",
            "count_tokens_per_minute",
        ):
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
        for name in ("tool_violation_rate", "refusal_rate", "truncation_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {rate}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.batch_processing_s < 0:
            raise ValueError(f"batch_processing_s must be >= 0, got {self.batch_processing_s}")
        rates = (self.batch_errored_rate, self.batch_expired_rate)
        if min(rates) < 0 or sum(rates) > 1:
            raise ValueError(f"batch_errored_rate and batch_expired_rate: each >= 0, together <= 1: {rates}")
        if self.batch_max_requests < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max_requests and batch_max_bytes must be >= 1")
        if self.spend_limit_after is not None and self.spend_limit_after < 0:
            raise ValueError(f"spend_limit_after must be >= 0, got {self.spend_limit_after}")


def preset_config(name: str, **settings: Any) -> SandboxConfig:
    """A sandbox that answers like the provider preset ``name``: its auth header, reply shape,
    rate-limit headers (Anthropic only) and missing features (``tool_choice``, ``count_tokens``,
    ``/v1/models``).

    ``settings`` are the other ``SandboxConfig`` fields (host, port, seed, faults, ...).
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    provider = PRESETS[name]
    preset_settings: dict[str, Any] = {
        "auth": provider.auth,
        "shape": "anthropic" if provider.shape == "anthropic" else "openai",
        "ratelimit_headers": provider.ratelimit_headers,
        "tool_choice_supported": provider.tool_choice,
        "count_tokens_supported": provider.count_tokens,
        "models_api": provider.models_api,
    }
    return SandboxConfig(preset=name, **{**preset_settings, **settings})
