"""Bespoke Curator driver: ``curator.LLM`` with its Anthropic backend in online mode.

Configured through ``backend_params``, the options its ``LLM`` docstring and
``OnlineRequestProcessorConfig`` document:

- ``base_url``: the sandbox's ``/v1`` (the backend appends ``/messages``).
- ``max_concurrent_requests`` 64: its semaphore on requests in flight.
- ``max_retries`` 7: retries after the first attempt, so 8 attempts, as for every tool.
- ``max_requests_per_minute``: 600 in W2. Without it the backend takes the limit from the
  ``anthropic-ratelimit-requests-limit`` header of a probe request it makes at start, else 4,000/min.
- ``max_input_tokens_per_minute`` / ``max_output_tokens_per_minute``: the account's token limits. The
  sandbox enforces none, so they are set far above what any workload uses (without them the backend
  falls back to 80,000 input tokens/min, which would cap W1 at about 1,200 requests/min).
- ``seconds_to_pause_on_rate_limit``: left at its default, 10 s.
- ``request_timeout``: the per-request timeout.

``CURATOR_DISABLE_CACHE=1`` (its documented switch) makes every run send; its cache and logs go to the
run's scratch directory (``CURATOR_CACHE_DIR``), telemetry is off (``TELEMETRY_ENABLED=false``), and
litellm, which it uses for prices, reads its bundled price list (``LITELLM_LOCAL_MODEL_COST_MAP``);
tiktoken reads the cl100k_base file litellm ships (``TIKTOKEN_CACHE_DIR``) instead of downloading it.
An image row's prompt is ``(text, curator.types.Image(url=path))``: the backend reads the file and
sends it as base64.
"""

from __future__ import annotations

import importlib.util
import os
import time

from _common import (
    MAX_TOKENS,
    MODEL,
    Options,
    Row,
    guard_network,
    parse_options,
    prompt_text,
    read_rows,
    write_results,
)
from _common import report as report_summary

guard_network()

OPTIONS = parse_options()
os.environ["CURATOR_DISABLE_CACHE"] = "1"
os.environ["CURATOR_CACHE_DIR"] = str(OPTIONS.workdir / "curator-cache")
os.environ["TELEMETRY_ENABLED"] = "false"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(OPTIONS.workdir / "hf-datasets")
os.environ["ANTHROPIC_API_KEY"] = OPTIONS.api_key
# the backend counts tokens with tiktoken's cl100k_base, which tiktoken downloads on first use; litellm
# (a curator dependency) ships that file and points tiktoken at it, but only once its own encoder is
# imported, which curator does after it asks for the encoding: point tiktoken there first
_LITELLM = importlib.util.find_spec("litellm")
if _LITELLM is not None and _LITELLM.submodule_search_locations:
    _TOKENIZERS = os.path.join(
        next(iter(_LITELLM.submodule_search_locations)), "litellm_core_utils", "tokenizers"
    )
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", _TOKENIZERS)

from bespokelabs import curator  # noqa: E402

IMPORTS_DONE = time.time()
TOKENS_PER_MINUTE = 1_000_000_000  # "no token limit": far above anything these workloads send


class Ask(curator.LLM):
    """One request per row; the row id travels through ``parse``."""

    def prompt(self, input: dict[str, str]) -> object:
        text = prompt_text(Row(input["id"], input["topic"], None))
        if input.get("image"):
            return (text, curator.types.Image(url=input["image"]))
        return text

    def parse(self, input: dict[str, str], response: str) -> dict[str, str]:
        return {"id": input["id"], "response": response}


def run(options: Options) -> dict[str, int]:
    rows = read_rows(options.input)
    params: dict[str, object] = {
        "base_url": options.base_url + "/v1",
        "api_key": options.api_key,
        "max_retries": options.attempts - 1,
        "max_concurrent_requests": options.concurrency,
        "max_input_tokens_per_minute": TOKENS_PER_MINUTE,
        "max_output_tokens_per_minute": TOKENS_PER_MINUTE,
        "request_timeout": int(options.timeout_s),
        "require_all_responses": False,
    }
    if options.rpm is not None:
        params["max_requests_per_minute"] = int(options.rpm)
    else:
        params["max_requests_per_minute"] = 1_000_000_000  # no request limit either
    llm = Ask(
        model_name=MODEL,
        backend="anthropic",
        generation_params={"max_tokens": MAX_TOKENS},
        backend_params=params,  # type: ignore[arg-type]
    )
    dataset = [{"id": r.id, "topic": r.topic, "image": str(r.image) if r.image else ""} for r in rows]
    response = llm(dataset, working_dir=str(options.workdir / "curator-run"))
    answered = {str(row["id"]) for row in response.dataset}
    outcomes = [(r.id, r.id in answered, None if r.id in answered else "no response") for r in rows]
    return write_results(options.results, outcomes)


def main() -> None:
    counts = run(OPTIONS)
    report_summary(OPTIONS, counts, IMPORTS_DONE)


if __name__ == "__main__":
    main()
