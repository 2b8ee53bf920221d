"""How the sandbox counts input tokens and decides what a prompt cache holds.

The hosted tokenizer is not public, so the sandbox approximates a byte-pair tokenizer piece by piece
(it deliberately shares no code with the pipeline's own estimate, so the two can disagree)::

    a single space before a word    free (BPE merges it into the word)
    other whitespace runs           1 each (newlines, indentation)
    a run of ASCII letters          ceil(letters / 7)  (common words are one token)
    a run of digits                 ceil(digits / 3)
    any other character             1 (punctuation, symbols, non-Latin letters)

Text from the tokenizer used from Opus 4.7 on (including Sonnet, Fable and Mythos 5) is counted
30 % higher (reference §9). Images are resized as the API resizes them (long edge 1568 px and at most
1,568 tokens before Claude 4.7; 2576 px and 4,784 tokens from 4.7) and then cost
``ceil(w/28) * ceil(h/28)`` tokens (reference §3, Docs 2026-08). Prompt caching follows §10: a prefix
shorter than the model's minimum is silently not cached.
"""

from __future__ import annotations

import math
import re

_PIECES = re.compile(r"\s+|[A-Za-z]+|\d+|[^\sA-Za-z\d]")
LETTERS_PER_TOKEN = 7
DIGITS_PER_TOKEN = 3
NEW_TOKENIZER_FACTOR = 1.3
PATCH_PX = 28
# Model id prefixes that use the newer tokenizer and the larger image tier (reference §3, §9).
_NEW_GENERATION = (
    "claude-opus-4-7",
    "claude-opus-4-8",
    "claude-opus-5",
    "claude-sonnet-5",
    "claude-haiku-5",
    "claude-fable-5",
    "claude-mythos-5",
)
# Minimum cacheable prefix in tokens, by model id prefix (reference §10); longest prefix wins.
_MIN_CACHEABLE = (
    ("claude-opus-4-8", 1024),
    ("claude-opus-4-7", 2048),
    ("claude-opus-4-6", 4096),
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-1", 1024),
    ("claude-opus-4", 1024),
    ("claude-opus-5", 512),
    ("claude-fable-5", 512),
    ("claude-mythos-5", 512),
    ("claude-sonnet-5", 1024),
    ("claude-sonnet-4", 1024),
    ("claude-haiku-4-5", 4096),
    ("claude-3-5-haiku", 2048),
    ("claude-haiku-3-5", 2048),
)
DEFAULT_MIN_CACHEABLE = 1024
CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}


def new_generation(model: str) -> bool:
    """Whether ``model`` uses the newer tokenizer and image tier (Claude 4.7 and later)."""
    return model.startswith(_NEW_GENERATION)


def raw_text_tokens(text: str) -> int:
    """Tokens of ``text`` before the model's tokenizer factor (see the module docstring)."""
    tokens = 0
    for piece in _PIECES.findall(text):
        first = piece[0]
        if first.isspace():
            tokens += 0 if piece == " " else 1
        elif first.isascii() and first.isalpha():
            tokens += math.ceil(len(piece) / LETTERS_PER_TOKEN)
        elif first.isascii() and first.isdigit():
            tokens += math.ceil(len(piece) / DIGITS_PER_TOKEN)
        else:
            tokens += 1
    return tokens


def scale_text_tokens(raw: int, model: str) -> int:
    """``raw`` text tokens as ``model``'s tokenizer counts them."""
    return math.ceil(raw * NEW_TOKENIZER_FACTOR) if new_generation(model) else raw


def image_tokens(width: int, height: int, model: str) -> int:
    """Tokens of an image as sent, after the API's own resizing for ``model``."""
    edge, cap = (2576, 4784) if new_generation(model) else (1568, 1568)
    scale = min(1.0, edge / max(width, height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX) > cap:
        # shrink in small steps until the image fits the token cap, as the API downscales
        w, h = max(1, math.floor(w * 0.97)), max(1, math.floor(h * 0.97))
    return math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX)


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix ``model`` caches (reference §10)."""
    best = ("", DEFAULT_MIN_CACHEABLE)
    for prefix, minimum in _MIN_CACHEABLE:
        if model.startswith(prefix) and len(prefix) > len(best[0]):
            best = (prefix, minimum)
    return best[1]
