"""The local estimate of what a request will be billed for, aimed at the middle rather than the top.

``build.estimate_input_tokens`` errs high on purpose (it guards rate limits and size limits); this
module aims at the likely figure, for ``pipeline estimate`` and the live progress. Pure.

- Text: prose at 4 characters a token, tool definitions (JSON, dense with punctuation and short
  keys) at 2.5. The tokenizer used from Opus 4.7 on (including the 5-series) makes about 30 % more
  tokens for the same text (https://platform.claude.com/docs/en/build-with-claude/token-counting).
- Images: the API first shrinks an image to its long-edge limit (1568 px; 2576 px from Claude 4.7),
  then it costs about ``width*height/750`` tokens, at most 1,568 (4,784 from 4.7)
  (https://platform.claude.com/docs/en/build-with-claude/vision); the model table holds each model's tier.
- Framing: a few tokens per message.
- Prompt caching: the shortest prefix each model caches
  (https://platform.claude.com/docs/en/build-with-claude/prompt-caching); shorter prefixes are
  silently not cached, so an estimate must not count them as cache reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.catalog.models import model_facts
from pipeline.job.request import RequestSpec
from pipeline.payloads.build import system_text, tool_params
from pipeline.payloads.images import PreparedImage
from pipeline.wire import Message, MessagePayload

PROSE_CHARS_PER_TOKEN = 4.0
JSON_CHARS_PER_TOKEN = 2.5
NEWER_TOKENIZER_FACTOR = 1.3
PIXELS_PER_TOKEN = 750
# role markers and turn boundaries around each message: a handful of tokens (count_tokens shows them)
FRAMING_TOKENS_PER_MESSAGE = 5


def newer_tokenizer(model: str) -> bool:
    """Whether ``model`` uses the tokenizer of Claude 4.7 and later (the model table says)."""
    return model_facts(model).newer_tokenizer


def min_cacheable_tokens(model: str) -> int | None:
    """The shortest prefix ``model`` caches, or None when the model table does not say."""
    return model_facts(model).min_cache_tokens


def text_tokens(text: str, model: str, *, chars_per_token: float = PROSE_CHARS_PER_TOKEN) -> int:
    """Likely tokens of ``text`` for ``model``."""
    if not text:
        return 0
    tokens = len(text) / chars_per_token
    if newer_tokenizer(model):
        tokens *= NEWER_TOKENIZER_FACTOR
    return math.ceil(tokens)


def image_tokens(width: int, height: int, model: str) -> int:
    """Likely tokens of an image sent at ``width`` x ``height``, after the API's own shrinking."""
    facts = model_facts(model)
    edge, cap = facts.image_long_edge, facts.image_max_tokens
    scale = min(1.0, edge / max(width, height, 1))
    pixels = round(width * scale) * round(height * scale)
    return max(1, min(cap, math.ceil(pixels / PIXELS_PER_TOKEN)))


@dataclass(frozen=True, slots=True)
class RequestTokens:
    """The likely input tokens of one request, split the way caching and reporting need.

    :param prefix: tools, system prompt and few-shot examples (their images included), the part
        ``cache = true`` marks (the cache's prefix order).
    :param text: the rest of the text (the rendered prompt) plus message framing.
    :param images: the row's own image blocks.
    """

    prefix: int
    text: int
    images: int

    @property
    def total(self) -> int:
        """Every input token of the request."""
        return self.prefix + self.text + self.images


def request_tokens(
    payload: MessagePayload,
    images: Sequence[PreparedImage],
    prefix_images: Sequence[PreparedImage] = (),
) -> RequestTokens:
    """The likely input tokens of ``payload`` whose row images are ``images`` (as sent).

    :param prefix_images: the few-shot examples' images (the turns before the row's own message).
    """
    model = payload["model"]
    prefix = text_tokens(system_text(payload), model)
    if payload.get("tools"):
        bare = [{k: v for k, v in tool.items() if k != "cache_control"} for tool in payload["tools"]]
        tools_json = json.dumps(bare, separators=(",", ":"))
        prefix += text_tokens(tools_json, model, chars_per_token=JSON_CHARS_PER_TOKEN)
    *turns, own = payload["messages"]
    prefix += text_tokens(_prose(turns), model) + FRAMING_TOKENS_PER_MESSAGE * len(turns)
    prefix += sum(image_tokens(image.width, image.height, model) for image in prefix_images)
    text = text_tokens(_prose([own]), model) + FRAMING_TOKENS_PER_MESSAGE
    pictures = sum(image_tokens(image.width, image.height, model) for image in images)
    return RequestTokens(prefix=prefix, text=text, images=pictures)


def _prose(messages: Sequence[Message]) -> str:
    return "".join(
        block["text"] for message in messages for block in message["content"] if block["type"] == "text"
    )


def cache_shortfall(request: RequestSpec) -> str | None:
    """Why ``cache = true`` will not cache anything: the prefix is under the model's minimum (else None).

    Measured on the templates (placeholders unfilled), which is what every row's prefix shares.
    """
    minimum = min_cacheable_tokens(request.model)
    if minimum is None:
        return None
    if any(turn.images for turn in request.examples):
        return None  # example images add tokens this check cannot see without loading them
    tokens = text_tokens(request.system or "", request.model)
    if params := tool_params(request):
        tools_json = json.dumps(params, separators=(",", ":"))
        tokens += text_tokens(tools_json, request.model, chars_per_token=JSON_CHARS_PER_TOKEN)
    tokens += text_tokens("".join(turn.text for turn in request.examples), request.model)
    if tokens >= minimum:
        return None
    return (
        f"request.cache: the shared prefix (system prompt, tools and examples, ~{tokens:,} tokens) is"
        f" shorter than the {minimum:,} tokens {request.model} caches at least, so the API will not cache it"
    )
