"""Provider presets: where a provider serves the Messages API and which of its features exist there.

``[api] provider = "..."`` fills in ``base_url``, ``auth`` and ``api_key_env`` unless the job sets
them, and tells the pipeline which features to refuse up front (batches, count_tokens, tool_choice,
prompt caching) rather than letting every row fail with a 400. Facts come from each provider's own
documentation, named beside its preset; what no source confirms is switched off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProviderName = Literal["anthropic", "aimlapi", "openai-compatible-messages", "vllm", "llama-server", "ollama"]
# the reply shapes responses.parse_message reads; "either" means the provider's docs show both
Shape = Literal["anthropic", "openai", "either"]


@dataclass(frozen=True, slots=True)
class Provider:
    """What one provider offers on its Messages-compatible endpoint.

    ``base_url`` is empty when there is no sensible default (the job must set it). ``key_required``
    is False for servers that do not check the key: a run then needs no key variable.
    """

    name: ProviderName
    base_url: str
    auth: Literal["x-api-key", "bearer"]
    api_key_env: str
    message_batches: bool  # Anthropic's /v1/messages/batches
    count_tokens: bool  # /v1/messages/count_tokens
    tool_choice: bool
    prompt_caching: bool
    shape: Shape = "anthropic"  # the reply shape to expect
    # GET /v1/models/{id} answering Anthropic's ModelInfo (capabilities); others use the shipped table
    models_api: bool = False
    ratelimit_headers: bool = False  # sends anthropic-ratelimit-* headers
    key_required: bool = True
    note: str = ""
    # image (and PDF) sources by URL, fetched by the server (`source.type = "url"`)
    url_sources: bool = False
    # the Files API (/v1/files, beta header files-api-2025-04-14) and `source.type = "file"`
    files_api: bool = False
    # `document` blocks (PDF and plain text)
    documents: bool = False


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
        ratelimit_headers=True,
        models_api=True,
        note="the hosted API",
        # https://platform.claude.com/docs/en/build-with-claude/vision (URL sources),
        # https://platform.claude.com/docs/en/build-with-claude/files,
        # https://platform.claude.com/docs/en/build-with-claude/pdf-support
        url_sources=True,
        files_api=True,
        documents=True,
    ),
    # github.com/aimlapi/api-docs (docs/capabilities/messages.json, 2026-05): Bearer auth; its batches
    # live at /v1/batches with another shape; its model list is not Anthropic's ModelInfo; replies
    # are the Anthropic Message in its /v1/messages spec but OpenAI-like in other pages
    "aimlapi": Provider(
        "aimlapi",
        "https://api.aimlapi.com",
        "bearer",
        "AIMLAPI_API_KEY",
        message_batches=False,
        count_tokens=False,
        tool_choice=True,
        prompt_caching=True,
        shape="either",
        note="AI/ML API; model names like claude-sonnet-4-5-20250929 or anthropic/claude-sonnet-4.5",
    ),
    # any gateway or proxy serving /v1/messages with Bearer keys and OpenAI-like replies
    "openai-compatible-messages": Provider(
        "openai-compatible-messages",
        "",
        "bearer",
        "OPENAI_API_KEY",
        message_batches=False,
        count_tokens=False,
        tool_choice=True,
        prompt_caching=False,
        shape="openai",
        note="a gateway answering /v1/messages in the OpenAI-like shape; set base_url",
    ),
    # vllm-project/vllm vllm/entrypoints/anthropic (api_router.py, protocol.py): /v1/messages and
    # count_tokens; no batches; its own error types; its /v1/models is OpenAI's list, not ModelInfo.
    # 8000 is `vllm serve`'s port; --api-key (or VLLM_API_KEY) makes it check a Bearer token.
    "vllm": Provider(
        "vllm",
        "http://localhost:8000",
        "bearer",
        "VLLM_API_KEY",
        message_batches=False,
        count_tokens=True,
        tool_choice=True,
        prompt_caching=False,
        key_required=False,
        note="vLLM's Anthropic-compatible server; no document blocks, no disable_parallel_tool_use",
    ),
    # ggml-org/llama.cpp#17570 and the llama-server README: /v1/messages and count_tokens; tools need
    # --jinja; no strong claims of compatibility. 8080 is llama-server's port; --api-key makes it
    # check a Bearer token.
    "llama-server": Provider(
        "llama-server",
        "http://localhost:8080",
        "bearer",
        "LLAMA_SERVER_API_KEY",
        message_batches=False,
        count_tokens=True,
        tool_choice=True,
        prompt_caching=False,
        key_required=False,
        note="llama.cpp's llama-server; start it with --jinja for tools",
    ),
    # ollama docs/api/anthropic-compatibility.mdx: Ollama >= 0.14.0 at http://localhost:11434 (no /v1);
    # key not validated; no count_tokens, tool_choice, metadata, caching, batches; images base64 only
    "ollama": Provider(
        "ollama",
        "http://localhost:11434",
        "x-api-key",
        "OLLAMA_API_KEY",
        message_batches=False,
        count_tokens=False,
        tool_choice=False,
        prompt_caching=False,
        key_required=False,
        note="Ollama 0.14.0 or later; usage is approximate",
    ),
}
# sent when a provider that does not check keys has none in the environment (never a real key)
PLACEHOLDER_KEY = "no-key-needed"
# what runs against the built-in sandbox send when no key is set (never a real key)
SANDBOX_KEY = "sk-sandbox-not-a-real-key"
# keys that are not secrets: a driver may hand these to its workers
PUBLIC_KEYS = frozenset({PLACEHOLDER_KEY, SANDBOX_KEY})


def preset(name: str) -> Provider:
    """The preset called ``name`` (the job-file schema only lets known names through)."""
    return PRESETS[name]


def unsupported_features(
    provider: Provider,
    *,
    tool_choice: bool = False,
    count_tokens: bool = False,
    image_transport: str = "base64",
    documents: bool = False,
) -> list[str]:
    """What a job asks for that ``provider`` lacks, each as ``key: reason`` (empty when all is there)."""
    problems: list[str] = []
    if image_transport == "url" and not provider.url_sources:
        problems.append(
            f'request.image_transport: provider {provider.name!r} does not fetch images by URL; use "base64"'
        )
    if image_transport == "files" and not provider.files_api:
        problems.append(f'request.image_transport: provider {provider.name!r} has no Files API; use "base64"')
    if documents and not provider.documents:
        problems.append(f"request.documents: provider {provider.name!r} does not take document blocks")
    if tool_choice and not provider.tool_choice:
        problems.append(
            f"request.tool_choice: provider {provider.name!r} does not support tool_choice; remove it"
            " (the model may still call the tools) or use another provider"
        )
    if count_tokens and not provider.count_tokens:
        problems.append(f"provider {provider.name!r} has no /v1/messages/count_tokens")
    return problems
