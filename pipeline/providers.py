"""Provider presets: where a provider serves the Messages API and which of its features exist there.

``[api] provider = "..."`` fills in ``base_url``, ``auth`` and ``api_key_env`` unless the job sets
them, and tells the pipeline which features to refuse up front (batches, count_tokens, tool_choice,
prompt caching) rather than letting every row fail with a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProviderName = Literal["anthropic", "aimlapi", "openai-compatible-messages", "vllm", "llama-server", "ollama"]


@dataclass(frozen=True, slots=True)
class Provider:
    """What one provider offers on its Messages-compatible endpoint."""

    name: ProviderName
    base_url: str
    auth: Literal["x-api-key", "bearer"]
    api_key_env: str
    message_batches: bool  # Anthropic's /v1/messages/batches
    count_tokens: bool  # /v1/messages/count_tokens
    tool_choice: bool
    prompt_caching: bool


PRESETS: dict[str, Provider] = {
    "anthropic": Provider(
        "anthropic",
        "https://api.anthropic.com",
        "x-api-key",
        "ANTHROPIC_API_KEY",
        message_batches=True,
        count_tokens=True,
        tool_choice=True,
        prompt_caching=True,
    ),
    # reference section 13: Bearer auth; its batches live at /v1/batches with another shape
    "aimlapi": Provider(
        "aimlapi",
        "https://api.aimlapi.com",
        "bearer",
        "AIMLAPI_API_KEY",
        message_batches=False,
        count_tokens=False,
        tool_choice=True,
        prompt_caching=True,
    ),
}


def preset(name: str) -> Provider:
    """The preset called ``name`` (the job-file schema only lets known names through)."""
    return PRESETS[name]
