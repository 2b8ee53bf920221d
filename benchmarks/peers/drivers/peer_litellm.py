"""litellm driver: ``litellm.Router`` over one Anthropic deployment, an asyncio semaphore for concurrency.

litellm's SDK call for many requests is ``acompletion``; its docs point production use (retries,
cooldowns, rpm/tpm) at the Router, whose retry loop is then the only one ("it sets ``max_retries`` to 0
on the provider call"). Configured as its Router docs describe:

- one deployment: ``model="anthropic/claude-haiku-4-5"``, ``api_base`` the sandbox, a fake ``api_key``;
  ``rpm`` 600 on the deployment in W2, with ``enable_pre_call_checks=True`` (the docs' "Multi-Instance
  TPM/RPM" recipe) and ``optional_pre_call_checks=["enforce_model_rate_limits"]``, which is what holds
  a deployment to its rpm in this version: a per-minute counter, checked before each call, that
  refuses a call over the limit with a local RateLimitError (retried like a 429).
- ``num_retries`` 7: retries after the first attempt, so 8 attempts, as for every tool.
- ``timeout``: the per-request timeout.
- concurrency: litellm has no batch pool of its own, so an ``asyncio.Semaphore(64)`` around each call.

The request goes through litellm's OpenAI-format ``acompletion`` (the call most litellm code makes),
which litellm translates to the Messages API; an image is an ``image_url`` part holding a base64
``data:`` URL, which litellm turns into an Anthropic base64 image block. ``LITELLM_LOCAL_MODEL_COST_MAP``
makes it read its bundled price list instead of fetching one.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from _common import (
    MAX_TOKENS,
    MEDIA_TYPE,
    MODEL,
    Options,
    Row,
    describe,
    guard_network,
    image_base64,
    parse_options,
    prompt_text,
    read_rows,
    report,
    write_results,
)

guard_network()
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm  # noqa: E402

IMPORTS_DONE = time.time()
GROUP = "bench"


def openai_content(row: Row) -> str | list[dict[str, Any]]:
    if row.image is None:
        return prompt_text(row)
    url = f"data:{MEDIA_TYPE};base64,{image_base64(row.image)}"
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt_text(row)}]


async def run(options: Options) -> dict[str, int]:
    rows = read_rows(options.input)
    deployment: dict[str, Any] = {
        "model_name": GROUP,
        "litellm_params": {
            "model": f"anthropic/{MODEL}",
            "api_base": options.base_url,
            "api_key": options.api_key,
        },
    }
    if options.rpm is not None:
        deployment["litellm_params"]["rpm"] = int(options.rpm)
    router = litellm.Router(
        model_list=[deployment],
        num_retries=options.attempts - 1,
        timeout=options.timeout_s,
        enable_pre_call_checks=options.rpm is not None,
        # what makes this version hold a deployment to its rpm (litellm/router_utils/pre_call_checks/
        # model_rate_limit_check.py); enable_pre_call_checks alone filters by context window only
        optional_pre_call_checks=["enforce_model_rate_limits"] if options.rpm is not None else None,
    )
    gate = asyncio.Semaphore(options.concurrency)

    async def send(row: Row) -> tuple[str, bool, str | None]:
        async with gate:
            try:
                await router.acompletion(
                    model=GROUP,
                    messages=[{"role": "user", "content": openai_content(row)}],
                    max_tokens=MAX_TOKENS,
                )
            except Exception as exc:  # a failed row is data here, as in the peers' own result lists
                return (row.id, False, describe(exc))
        return (row.id, True, None)

    outcomes = await asyncio.gather(*(send(row) for row in rows))
    return write_results(options.results, outcomes)


def main() -> None:
    options = parse_options()
    litellm.suppress_debug_info = True
    counts = asyncio.run(run(options))
    report(options, counts, IMPORTS_DONE)


if __name__ == "__main__":
    main()
