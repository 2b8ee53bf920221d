"""async-batch-llm driver: the official ``anthropic`` SDK wrapped in a ``CallableStrategy``.

async-batch-llm has no built-in Anthropic model; its README sends Anthropic "through PydanticAI,
``CallableStrategy``, or an ``LLMCallStrategy`` subclass", and its callable-integration guide has the
shape used here. Its configuration, per its "Choosing your limits" and high-throughput guides:

- ``ProcessorConfig(concurrency=64)``: the one knob that sizes workers and provider admission; the
  strategy advertises the same ``max_concurrency`` (the SDK's httpx pool holds more than 64).
- ``RetryConfig(max_attempts=8)``: attempts for transport/5xx failures; 429s do not use them (they are
  bounded by ``max_rate_limit_retries``, default 20).
- ``max_requests_per_minute`` (W2 only): its proactive RPM admission.
- ``RateLimitConfig(cooldown_seconds=30.0)``: the guide's starting value "for providers with short
  quota windows" (the default is 300 s); a server's ``retry-after`` is honoured as a floor.
- ``AsyncAnthropic(max_retries=0)``: "let ABL own retry visibility/accounting" (no hidden SDK retries).
- ``attempt_timeout``: one attempt's time limit.

The prompt is a string (its docs: "serialize application input into the prompt"): the text itself,
or for an image row a JSON object with the topic and the image's path, read and base64-encoded when
the request is made.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from _common import (
    MAX_TOKENS,
    MODEL,
    Options,
    Row,
    anthropic_content,
    describe,
    guard_network,
    parse_options,
    prompt_text,
    read_rows,
    report,
    write_results,
)

guard_network()

from anthropic import AsyncAnthropic  # noqa: E402
from async_batch_llm import (  # noqa: E402
    CallableStrategy,
    CallOutcome,
    ProcessorConfig,
    RateLimitConfig,
    RetryConfig,
    process_prompts,
)

IMPORTS_DONE = time.time()


def content_of(prompt: str) -> str | list[dict[str, Any]]:
    """The message content for a prompt: the text itself, or an image row's JSON (topic and path)."""
    if not prompt.startswith("{"):
        return prompt
    row = json.loads(prompt)
    return anthropic_content(Row("", row["topic"], Path(row["image"])))


async def run(options: Options) -> dict[str, int]:
    rows = read_rows(options.input)
    client = AsyncAnthropic(
        api_key=options.api_key, base_url=options.base_url, max_retries=0, timeout=options.timeout_s
    )

    # the callback's signature is async-batch-llm's: it passes the attempt's time budget as ``timeout``
    async def invoke(prompt: str, *, attempt: int, timeout: float, state: Any) -> CallOutcome[str]:  # noqa: ASYNC109
        message = await client.messages.create(
            model=MODEL,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": content_of(prompt)}],
            timeout=timeout,
        )
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = {"input_tokens": message.usage.input_tokens, "output_tokens": message.usage.output_tokens}
        return CallOutcome(text, token_usage=usage)

    strategy = CallableStrategy(invoke, max_concurrency=options.concurrency)
    config = ProcessorConfig(
        concurrency=options.concurrency,
        attempt_timeout=options.timeout_s,
        retry=RetryConfig(max_attempts=options.attempts),
        rate_limit=RateLimitConfig(
            cooldown_seconds=float(options.knobs.get("cooldown_seconds", 30.0)),
            slow_start_items=int(options.knobs.get("slow_start_items", 50)),
        ),
        max_requests_per_minute=options.rpm,
        quota_burst_seconds=float(burst) if (burst := options.knobs.get("quota_burst_seconds")) else None,
    )
    prompts = [
        (
            row.id,
            prompt_text(row)
            if row.image is None
            else json.dumps({"topic": row.topic, "image": str(row.image)}),
        )
        for row in rows
    ]
    try:
        batch = await process_prompts(strategy, prompts, config=config)
    finally:
        await client.close()
    outcomes = [
        (str(result.item_id), bool(result.success), None if result.success else describe_error(result.error))
        for result in batch.results
    ]
    return write_results(options.results, outcomes)


def describe_error(error: object) -> str:
    return describe(error) if isinstance(error, BaseException) else str(error)[:300]


def main() -> None:
    options = parse_options()
    counts = asyncio.run(run(options))
    report(options, counts, IMPORTS_DONE)


if __name__ == "__main__":
    main()
