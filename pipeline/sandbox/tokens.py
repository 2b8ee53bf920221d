"""How the sandbox counts input tokens and decides what a prompt cache holds.

The hosted tokenizer is not public, so the sandbox approximates a byte-pair tokenizer piece by piece
(it deliberately shares no code with the pipeline's own estimate, so the two can disagree)::

    a single space before a word    free (BPE merges it into the word)
    other whitespace runs           1 each (newlines, indentation)
    a run of ASCII letters          ceil(letters / 7)  (common words are one token)
    a run of digits                 ceil(digits / 3)
    any other character             1 (punctuation, symbols, non-Latin letters)

Text from the tokenizer used from Opus 4.7 on (including Sonnet, Fable and Mythos 5) is counted
30 % higher (https://platform.claude.com/docs/en/build-with-claude/token-counting). Images are resized
as the API resizes them (to the model's long edge and token cap, from the model table: 1568 px and
1,568 tokens before Claude 4.7, 2576 px and 4,784 tokens from 4.7) and then cost
``ceil(w/28) * ceil(h/28)`` tokens (https://platform.claude.com/docs/en/build-with-claude/vision). A
prompt-cache prefix shorter than the model's minimum is silently not cached
(https://platform.claude.com/docs/en/build-with-claude/prompt-caching).
"""

from __future__ import annotations

import math
import re

from pipeline.catalog.models import model_facts

_PIECES = re.compile(r"\s+|[A-Za-z]+|\d+|[^\sA-Za-z\d]")
LETTERS_PER_TOKEN = 7
DIGITS_PER_TOKEN = 3
NEW_TOKENIZER_FACTOR = 1.3
PATCH_PX = 28
# a model the table does not know caches like most models do
DEFAULT_MIN_CACHEABLE = 1024
CACHE_TTL_S = {"5m": 300.0, "1h": 3600.0}


def new_generation(model: str) -> bool:
    """Whether ``model`` uses the newer tokenizer (Claude 4.7 and later), as the model table says."""
    return model_facts(model).newer_tokenizer


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
    facts = model_facts(model)
    edge, cap = facts.image_long_edge, facts.image_max_tokens
    scale = min(1.0, edge / max(width, height))
    w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    while math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX) > cap:
        # shrink in small steps until the image fits the token cap, as the API downscales
        w, h = max(1, math.floor(w * 0.97)), max(1, math.floor(h * 0.97))
    return math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX)


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix ``model`` caches (the model table's figure, else the usual 1,024)."""
    minimum = model_facts(model).min_cache_tokens
    return DEFAULT_MIN_CACHEABLE if minimum is None else minimum
