"""A scripted fake of the provider's API for tests: replies played in order, requests recorded.

Use it as an ``httpx.MockTransport`` handler (``ScriptedApi(...).transport``) wherever a client,
the batch endpoints or a whole run take ``transport=``; the helpers build the replies.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Step = Callable[[httpx.Request], Awaitable[httpx.Response]]


class ScriptedApi:
    """A hand-written fake of the provider's HTTP API, for ``httpx.MockTransport``.

    Steps answer requests in order and the last one repeats; ``enqueue`` adds more, ``requests``
    records every request received (``bodies`` as JSON). A step is an async function of the
    request, an ``httpx.Response`` (copied for each use) or an exception the transport raises
    (a timeout, a dropped connection).

    ``GET /v1/models...`` (a run reads its model's facts there first) is not a step: it is answered
    by ``models`` (default: 404, a server without the Models API, so runs use the shipped table)
    and recorded in ``model_requests``.
    """

    def __init__(self, *steps: Step | httpx.Response | Exception, models: Step | None = None) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        self.model_requests: list[httpx.Request] = []
        self.models = models or api_error(404, "not_found_error", "Not found")

    def enqueue(self, *steps: Step | httpx.Response | Exception) -> ScriptedApi:
        """Add steps after the ones already queued."""
        self.steps.extend(steps)
        return self

    @property
    def transport(self) -> httpx.MockTransport:
        """A transport that hands every request to this script."""
        return httpx.MockTransport(self)

    def bodies(self) -> list[Any]:
        """The JSON body of every request, in the order they came."""
        return [json.loads(request.content) for request in self.requests]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if request.method == "GET" and request.url.path.startswith("/v1/models"):
            self.model_requests.append(request)
            return await self.models(request)
        self.requests.append(request)
        if not self.steps:
            return await reply()(request)
        step = self.steps[min(len(self.requests), len(self.steps)) - 1]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return httpx.Response(step.status_code, headers=step.headers, content=step.content)
        return await step(request)


def message(text: str = "ok", **extra: Any) -> dict[str, Any]:
    """An Anthropic Message body."""
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 3},
        **extra,
    }


def reply(
    status: int = 200, body: Any = None, *, headers: dict[str, str] | None = None, text: str | None = None
) -> Step:
    """A step answering ``status`` with a JSON ``body`` (a Message by default) or raw ``text``."""

    async def step(request: httpx.Request) -> httpx.Response:
        all_headers = {"request-id": "req_test", **(headers or {})}
        if text is not None:
            return httpx.Response(status, text=text, headers=all_headers)
        return httpx.Response(status, json=message() if body is None else body, headers=all_headers)

    return step


def api_error(status: int, error_type: str, text: str = "boom", **headers: str) -> Step:
    """A step answering the API's error JSON."""
    body = {"type": "error", "error": {"type": error_type, "message": text}, "request_id": "req_err"}
    return reply(status, body, headers={k.replace("_", "-"): v for k, v in headers.items()})


def raising(exc_type: type[httpx.TransportError], text: str) -> Step:
    """A step whose transport fails with ``exc_type``."""

    async def step(request: httpx.Request) -> httpx.Response:
        raise exc_type(text, request=request)

    return step


def sse_lines(*events: tuple[str, dict[str, Any]]) -> str:
    """An SSE body."""
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


START: tuple[str, dict[str, Any]] = (
    "message_start",
    {"type": "message_start", "message": {**message(), "content": [], "usage": {"input_tokens": 20}}},
)
STREAM_EVENTS: list[tuple[str, dict[str, Any]]] = [
    START,
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "tag", "input": {}},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"tags": ['},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"a", "b"]}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 17}},
    ),
    ("message_stop", {"type": "message_stop"}),
]


def stream(*events: tuple[str, dict[str, Any]]) -> Step:
    """A step answering 200 with an event stream."""
    body = sse_lines(*events)

    async def step(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, text=body, headers={"content-type": "text/event-stream", "request-id": "req_s"}
        )

    return step
