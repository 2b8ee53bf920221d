"""The sandbox over loopback HTTP: validation, answers, streams, shapes, faults, limits, stats, lifecycle."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import jsonschema
import pytest
from PIL import Image

from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox
from pipeline.sandbox.toolinput import synthesise

HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
DATA = "messages.0.content.1.image.source.base64.data"


def image_b64(size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> str:
    """A real image made by Pillow, base64-encoded."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def image_block(data: str, media_type: str = "image/png") -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def body(prompt: str = "Write one sentence about a red bicycle.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


def with_images(*blocks: dict[str, Any]) -> dict[str, Any]:
    content = [{"type": "text", "text": "Describe these."}, *blocks]
    return body(messages=[{"role": "user", "content": content}])


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    """One plain sandbox shared by the tests that need no special config."""
    with running_sandbox() as handle:
        yield handle


@pytest.fixture(scope="module")
def client(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, headers=HEADERS, timeout=10) as http:
        yield http


def post(http: httpx.Client, payload: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return http.post("/v1/messages", json=payload, **kwargs)


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body."""
    events = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- answers -------------------------------------------------------------------------------------


def test_text_answer_is_deterministic_per_request(client: httpx.Client) -> None:
    """The same request gets the same text; another prompt gets another; the reply is marked as sandbox."""
    first, again, other = (post(client, body(p)) for p in ("Hello there", "Hello there", "Goodbye"))
    assert first.status_code == again.status_code == other.status_code == 200
    text = first.json()["content"][0]["text"]
    assert text == again.json()["content"][0]["text"]
    assert text != other.json()["content"][0]["text"]
    assert text.startswith("[sandbox] reply ")
    assert '"Hello there"' in text
    assert "(0 images)" in text
    reply = first.json()
    assert reply["model"] == "sandbox:claude-haiku-4-5"
    assert reply["id"].startswith("msg_sandbox_")
    assert reply["stop_reason"] == "end_turn"
    assert first.headers["request-id"].startswith("req_sandbox_")
    assert reply["usage"]["output_tokens"] == math.ceil(len(text) / 4)
    assert reply["usage"]["service_tier"] == "standard"
    assert reply["usage"]["cache_read_input_tokens"] == 0


def test_usage_follows_the_input_token_formula(client: httpx.Client) -> None:
    """input_tokens = text pieces + 4 per message + ceil(w/28)*ceil(h/28) per image; count_tokens agrees."""
    payload = with_images(image_block(image_b64((100, 75))))
    payload["system"] = "Be brief."
    reply = post(client, payload).json()
    # "Be" "brief" "." + "Describe"(8 letters: 2) "these" "." = 7 text tokens; 4 x 3 patches of 28 px
    expected = 7 + 4 + math.ceil(100 / 28) * math.ceil(75 / 28)
    assert reply["usage"]["input_tokens"] == expected
    assert "(1 image)" in reply["content"][0]["text"]
    counted = client.post(
        "/v1/messages/count_tokens", json={k: v for k, v in payload.items() if k != "max_tokens"}
    )
    assert counted.status_code == 200
    assert counted.json() == {"input_tokens": expected}


def test_count_tokens_is_as_strict_as_the_api(client: httpx.Client) -> None:
    """count_tokens takes no max_tokens or sampling parameters, like the hosted endpoint."""
    response = client.post("/v1/messages/count_tokens", json=body())
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "max_tokens: Extra inputs are not permitted"


def test_long_prompt_is_echoed_shortened(client: httpx.Client) -> None:
    """Only the first 120 characters of the last user text are echoed, followed by an ellipsis."""
    prompt = "x" * 119 + "yz" + "w" * 50
    text = post(client, body(prompt)).json()["content"][0]["text"]
    assert '"' + "x" * 119 + 'y..."' in text
    assert "z" not in text


def test_max_tokens_truncates(client: httpx.Client) -> None:
    """A small max_tokens cuts the text to four characters a token and says so."""
    reply = post(client, body(max_tokens=3)).json()
    assert reply["content"][0]["text"] == "[sandbox] re"
    assert reply["stop_reason"] == "max_tokens"
    assert reply["usage"]["output_tokens"] == 3


def test_stop_sequence_cuts_the_text(client: httpx.Client) -> None:
    """The earliest stop sequence ends the text; stop_sequence names it."""
    reply = post(client, body(stop_sequences=["zzz", "reply"])).json()
    assert reply["content"][0]["text"] == "[sandbox] "
    assert (reply["stop_reason"], reply["stop_sequence"]) == ("stop_sequence", "reply")


RICH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["label", "score", "ok", "tags", "box", "ratio"],
    "properties": {
        "label": {"type": "string", "enum": ["cat", "dog"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 2},
        "box": {
            "type": "object",
            "required": ["x"],
            "properties": {"x": {"type": "integer", "multipleOf": 5}, "note": {"type": ["string", "null"]}},
            "additionalProperties": False,
        },
        "when": {"type": "string", "format": "date"},
        "either": {"anyOf": [{"type": "null"}, {"type": "integer", "maximum": -3}]},
    },
    "additionalProperties": False,
}


def test_forced_tool_input_fits_its_schema(client: httpx.Client) -> None:
    """tool_choice "tool" yields one tool_use for that tool, with valid input that repeats for a repeat."""
    tools = [
        {"name": "other", "input_schema": {"type": "object"}},
        {"name": "rate", "input_schema": RICH_SCHEMA},
    ]
    payload = body(tools=tools, tool_choice={"type": "tool", "name": "rate"})
    first, second = post(client, payload).json(), post(client, payload).json()
    assert first["stop_reason"] == "tool_use"
    assert [block["type"] for block in first["content"]] == ["tool_use"]
    call = first["content"][0]
    assert call["name"] == "rate"
    assert call["id"].startswith("toolu_sandbox_")
    jsonschema.validate(call["input"], RICH_SCHEMA)
    assert call["input"] == second["content"][0]["input"]
    assert first["usage"]["output_tokens"] == math.ceil(
        len(json.dumps(call["input"], separators=(",", ":"))) / 4
    )


@pytest.mark.parametrize(
    ("choice", "kinds", "stop"),
    [
        ({"type": "any"}, ["tool_use"], "tool_use"),
        ({"type": "auto"}, ["text", "tool_use"], "tool_use"),
        (None, ["text", "tool_use"], "tool_use"),
        ({"type": "none"}, ["text"], "end_turn"),
    ],
)
def test_tool_choice_shapes_the_content(
    client: httpx.Client, choice: dict[str, str] | None, kinds: list[str], stop: str
) -> None:
    """any: the first tool only; auto (the default): text then the first tool; none: text only."""
    tools = [
        {"name": "first", "input_schema": RICH_SCHEMA},
        {"name": "second", "input_schema": {"type": "object"}},
    ]
    payload = body(tools=tools) if choice is None else body(tools=tools, tool_choice=choice)
    reply = post(client, payload).json()
    assert [block["type"] for block in reply["content"]] == kinds
    assert reply["stop_reason"] == stop
    assert all(block["name"] == "first" for block in reply["content"] if block["type"] == "tool_use")


@pytest.mark.parametrize("seed", range(25))
def test_synthesised_input_validates_for_many_seeds(seed: int) -> None:
    """Made-up tool input validates against a schema using most keywords, whatever the seed."""
    jsonschema.validate(synthesise(RICH_SCHEMA, random.Random(seed)), RICH_SCHEMA)


# --- validation ----------------------------------------------------------------------------------


def _big_png_b64(side: int) -> str:
    return image_b64((side, side))


BAD_REQUESTS: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    ("unknown key", lambda: body(foo=1), "foo: Extra inputs are not permitted"),
    (
        "no max_tokens",
        lambda: {k: v for k, v in body().items() if k != "max_tokens"},
        "max_tokens: Field required",
    ),
    ("max_tokens 0", lambda: body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    ("max_tokens bool", lambda: body(max_tokens=True), "max_tokens: Input should be a valid integer"),
    ("empty model", lambda: body(model=""), "model: String should have at least 1 character"),
    ("temperature", lambda: body(temperature=1.5), "temperature: Input should be less than or equal to 1"),
    ("top_p", lambda: body(top_p=-0.1), "top_p: Input should be greater than or equal to 0"),
    ("top_k", lambda: body(top_k=-1), "top_k: Input should be greater than or equal to 0"),
    ("stream", lambda: body(stream="yes"), "stream: Input should be a valid boolean"),
    ("stop_sequences", lambda: body(stop_sequences="END"), "stop_sequences: Input should be a valid list"),
    ("no messages", lambda: body(messages=[]), "messages: List should have at least 1 item"),
    (
        "assistant first",
        lambda: body(messages=[{"role": "assistant", "content": "hi"}]),
        'messages: first message must use the "user" role',
    ),
    (
        "bad role",
        lambda: body(messages=[{"role": "system", "content": "hi"}]),
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        "empty text block",
        lambda: body(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
        "messages.0.content.0.text: text content blocks must be non-empty",
    ),
    (
        "unknown block",
        lambda: body(messages=[{"role": "user", "content": [{"type": "video"}]}]),
        "messages.0.content.0: Input tag 'video' found using 'type' does not match",
    ),
    (
        "unknown tool",
        lambda: body(
            tools=[{"name": "a", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "b"},
        ),
        "tool_choice.tool.name: Tool 'b' not found in provided tools",
    ),
    (
        "tool_choice without tools",
        lambda: body(tool_choice={"type": "any"}),
        "tool_choice may only be specified while providing tools",
    ),
    (
        "bad tool name",
        lambda: body(tools=[{"name": "has space", "input_schema": {"type": "object"}}]),
        "tools.0.name: String should match pattern",
    ),
    (
        "duplicate tools",
        lambda: body(tools=[{"name": "a", "input_schema": {"type": "object"}}] * 2),
        "tools: Tool names must be unique.",
    ),
    (
        "schema not object",
        lambda: body(tools=[{"name": "a", "input_schema": {"type": "string"}}]),
        "tools.0.input_schema.type: Input should be 'object'",
    ),
    (
        "png labelled jpeg",
        lambda: with_images(image_block(image_b64(), "image/jpeg")),
        f"{DATA}: The image was specified using the image/jpeg media type, but the image appears to be a "
        "image/png image",
    ),
    (
        "image/jpg",
        lambda: with_images(image_block(image_b64(fmt="JPEG"), "image/jpg")),
        "messages.0.content.1.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
        "'image/gif' or 'image/webp'",
    ),
    ("bad base64", lambda: with_images(image_block("not base64!!")), f"{DATA}: Invalid base64 data"),
    (
        "not an image",
        lambda: with_images(image_block(base64.b64encode(b"hello world").decode())),
        f"{DATA}: Could not process image",
    ),
    (
        "over 5 MB",
        lambda: with_images(image_block("A" * 5_242_884)),
        f"{DATA}: image exceeds 5 MB maximum: 5242884 bytes > 5242880 bytes",
    ),
    (
        "9000 px",
        lambda: with_images(image_block(image_b64((9000, 10)))),
        f"{DATA}: At least one of the image dimensions exceed max allowed size: 8000 pixels",
    ),
    (
        "21 images of 2100 px",
        lambda: with_images(*[image_block(_big_png_b64(2100))] * 21),
        f"{DATA}: At least one of the image dimensions exceed max allowed size for many-image requests: "
        "2000 pixels",
    ),
    (
        "101 images",
        lambda: with_images(*[image_block(image_b64((8, 8)))] * 101),
        "messages: Too many images in request: 101 > 100 maximum",
    ),
    (
        "url image off loopback",  # loopback URLs are fetched: tests/payloads/test_transport.py
        lambda: with_images({"type": "image", "source": {"type": "url", "url": "http://example.com/x.png"}}),
        "messages.0.content.1.image.source.url: the sandbox fetches URLs from loopback only",
    ),
    (
        "image inside tool_result",
        lambda: body(
            messages=[
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [image_block(image_b64(), "image/gif")],
                        }
                    ],
                },
            ]
        ),
        "messages.2.content.0.tool_result.content.0.image.source.base64.data: The image was specified "
        "using the image/gif media type",
    ),
]


@pytest.mark.parametrize(("case", "make", "message"), BAD_REQUESTS, ids=[case for case, _, _ in BAD_REQUESTS])
def test_invalid_request_gets_the_api_400(
    client: httpx.Client, case: str, make: Callable[[], dict[str, Any]], message: str
) -> None:
    """Each rule gives 400 invalid_request_error, the JSON path and message, and a request id."""
    response = post(client, make())
    assert response.status_code == 400, case
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(message), error["error"]["message"]
    assert error["request_id"] == response.headers["request-id"]


def test_accepted_images_and_the_many_image_boundary(client: httpx.Client) -> None:
    """JPEG, GIF and WebP pass the sniffing; 20 images of 2100 px are still allowed (the rule is > 20)."""
    kinds = [image_block(image_b64(fmt=fmt), f"image/{fmt.lower()}") for fmt in ("JPEG", "GIF", "WEBP")]
    assert post(client, with_images(*kinds)).status_code == 200
    reply = post(client, with_images(*[image_block(_big_png_b64(2100))] * 20))
    assert reply.status_code == 200
    assert "(20 images)" in reply.json()["content"][0]["text"]


@pytest.mark.parametrize(
    ("headers", "status", "error_type", "message"),
    [
        ({"x-api-key": "sk-right"}, 400, "invalid_request_error", "anthropic-version: header is required"),
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error", "x-api-key header is required"),
        (
            {"x-api-key": "sk-wrong", "anthropic-version": "1"},
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        ({"authorization": "Bearer sk-right", "anthropic-version": "2026-10-21"}, 200, None, None),
        ({"x-api-key": "sk-right", "anthropic-version": "2023-06-01"}, 200, None, None),
    ],
)
def test_headers_and_keys(
    headers: dict[str, str], status: int, error_type: str | None, message: str | None
) -> None:
    """anthropic-version is required; a wrong or missing key is a 401; either key header works by default."""
    with running_sandbox(SandboxConfig(api_key="sk-right")) as handle:
        response = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=headers)
    assert response.status_code == status
    if error_type is not None:
        assert response.json()["error"] == {"type": error_type, "message": message}


def test_bearer_mode_refuses_x_api_key() -> None:
    """With auth="bearer" only Authorization: Bearer carries the key."""
    with running_sandbox(SandboxConfig(auth="bearer")) as handle:
        refused = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        accepted = httpx.post(
            handle.base_url + "/v1/messages",
            json=body(),
            headers={"authorization": "Bearer sk-test", "anthropic-version": "2023-06-01"},
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert accepted.status_code == 200


def test_body_must_be_json(client: httpx.Client) -> None:
    """A non-JSON content type or malformed JSON is a 400; an unknown path is the API's 404."""
    wrong_type = client.post(
        "/v1/messages", content=json.dumps(body()), headers={"content-type": "text/plain"}
    )
    broken = client.post("/v1/messages", content=b"{nope", headers={"content-type": "application/json"})
    assert wrong_type.status_code == broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"
    missing = client.get("/v1/engines")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


def test_oversized_body_is_413(sandbox: SandboxHandle) -> None:
    """A declared body over 32 MB gets request_too_large without the body being read."""
    port = int(sandbox.base_url.rsplit(":", 1)[1])
    head = (
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n"
        f"content-type: application/json\r\ncontent-length: {33 * 1024 * 1024}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert '"type": "request_too_large"' in reply


# --- streaming and shapes ------------------------------------------------------------------------


def test_stream_event_order_and_content(client: httpx.Client) -> None:
    """A streamed reply sends the reference's event order, and its pieces rebuild the plain reply."""
    tools = [{"name": "rate", "input_schema": RICH_SCHEMA}]
    payload = body(tools=tools)
    plain = post(client, payload).json()
    streamed = post(client, {**payload, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("ping") == 1
    assert all(data["type"] == name for name, data in events)
    blocks = [name for name in names if name.startswith("content_block_") and name != "content_block_delta"]
    assert blocks == ["content_block_start", "content_block_stop"] * 2
    start = events[0][1]["message"]
    assert start["usage"]["output_tokens"] == 1
    assert start["usage"]["input_tokens"] == plain["usage"]["input_tokens"]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    text = "".join(d["text"] for d in deltas if d["type"] == "text_delta")
    arguments = "".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")
    assert text == plain["content"][0]["text"]
    assert json.loads(arguments) == plain["content"][1]["input"]
    assert sum(d["type"] == "text_delta" for d in deltas) > 1
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == plain["usage"]["output_tokens"]


def test_openai_shape() -> None:
    """shape="openai" answers with choices, finish_reason and prompt/completion token counts."""
    tools = [{"name": "rate", "input_schema": RICH_SCHEMA}]
    with running_sandbox(SandboxConfig(shape="openai")) as handle, httpx.Client(headers=HEADERS) as http:
        text = http.post(handle.base_url + "/v1/messages", json=body(max_tokens=2)).json()
        tool = http.post(
            handle.base_url + "/v1/messages", json=body(tools=tools, tool_choice={"type": "any"})
        ).json()
        streamed = http.post(handle.base_url + "/v1/messages", json=body(stream=True)).text
    assert text["object"] == "chat.completion"
    assert text["model"] == "sandbox:claude-haiku-4-5"
    choice = text["choices"][0]
    assert choice["message"]["content"] == "[sandbox"
    assert choice["finish_reason"] == "length"
    assert text["usage"] == {"prompt_tokens": text["usage"]["prompt_tokens"], "completion_tokens": 2,
                             "total_tokens": text["usage"]["prompt_tokens"] + 2}  # fmt: skip
    message = tool["choices"][0]["message"]
    assert message["content"] is None
    assert tool["choices"][0]["finish_reason"] == "tool_calls"
    call = message["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "rate"
    jsonschema.validate(json.loads(call["function"]["arguments"]), RICH_SCHEMA)
    assert streamed.rstrip().endswith("data: [DONE]")
    assert '"chat.completion.chunk"' in streamed


# --- faults and latency --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [("529", 529, "overloaded_error"), ("500", 500, "api_error")],
)
def test_json_faults(kind: str, status: int, error_type: str) -> None:
    """529 and 500 faults send the API's error JSON and count as faults, not answers."""
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=(kind,))) as handle:
        response = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        stats = handle.stats()
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    assert stats["faults"] == {kind: 1}
    assert stats["answers_ok"] == 0
    assert stats["by_status"] == {str(status): 1}


def test_html_503_fault() -> None:
    """html503 sends a proxy's HTML page, not JSON."""
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=("html503",))) as handle:
        response = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<html><head><title>503 Service Unavailable</title>")


def test_drop_fault_closes_the_connection() -> None:
    """drop closes the TCP connection without any response."""
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=("drop",))) as handle:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        assert handle.stats()["faults"] == {"drop": 1}


def test_slow_fault_times_out_the_client_and_does_not_block_shutdown() -> None:
    """slow outlasts a short client timeout, bills nothing, and the sandbox still stops at once."""
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=("slow",), slow_s=20.0)) as handle:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS, timeout=0.2)
        stats = handle.stats()
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.0
    assert stats["faults"] == {"slow": 1}
    assert stats["answers_ok"] == 0


def test_slow_fault_answers_a_patient_client() -> None:
    """A client that waits longer than slow_s gets the normal answer."""
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=("slow",), slow_s=0.05)) as handle:
        response = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        assert response.status_code == 200
        assert handle.stats()["answers_ok"] == 1


def test_stream_error_fault() -> None:
    """stream_error sends 200, message_start, then an overloaded error event; without stream it is a 529."""
    with running_sandbox(SandboxConfig(fault_rate=1.0, faults=("stream_error",))) as handle:
        streamed = httpx.post(handle.base_url + "/v1/messages", json=body(stream=True), headers=HEADERS)
        plain = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        stats = handle.stats()
    assert streamed.status_code == 200
    events = sse_events(streamed.text)
    assert [name for name, _ in events] == ["message_start", "error"]
    assert events[1][1]["error"]["type"] == "overloaded_error"
    assert plain.status_code == 529
    assert stats["faults"] == {"stream_error": 1, "529": 1}
    assert stats["answers_ok"] == 0


def test_fault_sequence_follows_the_seed() -> None:
    """The same seed gives the same faults in the same arrival order; about fault_rate of them fail."""

    def statuses(seed: int) -> list[int]:
        config = SandboxConfig(fault_rate=0.5, faults=("529", "500"), seed=seed)
        with running_sandbox(config) as handle, httpx.Client(headers=HEADERS) as http:
            return [http.post(handle.base_url + "/v1/messages", json=body()).status_code for _ in range(40)]

    first = statuses(3)
    assert first == statuses(3)
    assert first != statuses(4)
    assert 8 < sum(status != 200 for status in first) < 32
    assert {529, 500, 200} == set(first)


def test_latency_is_added_before_answering() -> None:
    """latency_ms delays each answer by about that much."""
    with running_sandbox(SandboxConfig(latency_ms=150, jitter_ms=20, seed=1)) as handle:
        started = time.monotonic()
        assert httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS).status_code == 200
    assert time.monotonic() - started >= 0.125


# --- rate limits and spend -----------------------------------------------------------------------


def test_request_rate_limit_gives_429_with_headers() -> None:
    """At 60 RPM with a one-second burst, a second immediate request is a 429 with retry-after and headers."""
    with (
        running_sandbox(SandboxConfig(requests_per_minute=60, burst_s=1.0)) as handle,
        httpx.Client() as http,
    ):
        first = http.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        second = http.post(handle.base_url + "/v1/messages", json=body("other"), headers=HEADERS)
        stats = handle.stats()
    assert first.status_code == 200
    assert first.headers["anthropic-ratelimit-requests-limit"] == "60"
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert int(second.headers["retry-after"]) >= 1
    assert second.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = datetime.fromisoformat(second.headers["anthropic-ratelimit-requests-reset"])
    assert reset.tzinfo is not None
    assert "anthropic-ratelimit-tokens-limit" not in second.headers
    assert stats["rate_limited"] == 1
    assert stats["answers_ok"] == 1
    assert len(stats["ok_by_request"]) == 1


def test_token_limits_and_their_headers() -> None:
    """Input tokens are charged on admission, output tokens after the answer; remaining rounds to 1,000."""
    config = SandboxConfig(input_tokens_per_minute=600_000, output_tokens_per_minute=60)
    with running_sandbox(config) as handle, httpx.Client(headers=HEADERS) as http:
        first = http.post(handle.base_url + "/v1/messages", json=body())
        second = http.post(handle.base_url + "/v1/messages", json=body())
    assert first.status_code == 200
    assert first.headers["anthropic-ratelimit-input-tokens-limit"] == "600000"
    assert (
        first.headers["anthropic-ratelimit-input-tokens-remaining"] == "10000"
    )  # 10,000 minus a few, rounded
    assert (
        first.headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
    )  # the answer overdrew the bucket
    assert first.headers["anthropic-ratelimit-tokens-limit"] == "60"  # output is the tighter limit
    # the bucket holds one second (1 token) and is now ~20 tokens short: the wait is the debt at 1 token/s
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 10


def test_oversized_input_passes_when_the_bucket_is_full() -> None:
    """A request costing more than the input bucket holds is admitted when the bucket is full, then waits."""
    with (
        running_sandbox(SandboxConfig(input_tokens_per_minute=60)) as handle,
        httpx.Client(headers=HEADERS) as http,
    ):
        first = http.post(handle.base_url + "/v1/messages", json=body("x" * 400))
        second = http.post(handle.base_url + "/v1/messages", json=body())
    assert first.status_code == 200
    assert second.status_code == 429


def test_no_ratelimit_headers_when_disabled_or_unlimited() -> None:
    """ratelimit_headers=False (a self-hosted server) or no limits: no anthropic-ratelimit-* headers."""
    for config in (SandboxConfig(requests_per_minute=600, ratelimit_headers=False), SandboxConfig()):
        with running_sandbox(config) as handle:
            response = httpx.post(handle.base_url + "/v1/messages", json=body(), headers=HEADERS)
        assert response.status_code == 200
        assert not [name for name in response.headers if name.startswith("anthropic-ratelimit")]


def test_spend_limit_is_a_429_without_retry_after() -> None:
    """After spend_limit_after answers every request gets the spend-cap 429, which carries no retry-after."""
    with running_sandbox(SandboxConfig(spend_limit_after=2)) as handle, httpx.Client(headers=HEADERS) as http:
        statuses = [
            http.post(handle.base_url + "/v1/messages", json=body(str(i))).status_code for i in range(4)
        ]
        capped = http.post(handle.base_url + "/v1/messages", json=body())
        stats = handle.stats()
    assert statuses == [200, 200, 429, 429]
    assert "retry-after" not in capped.headers
    assert capped.json()["error"]["type"] == "rate_limit_error"
    assert capped.json()["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
    assert stats["answers_ok"] == 2
    assert stats["rate_limited"] == 0


# --- stats and lifecycle -------------------------------------------------------------------------


def test_stats_count_requests_and_paid_answers() -> None:
    """Stats count statuses and paid answers per canonical request (stream or not); reset zeroes them."""
    payload = body("count me")
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    key = hashlib.sha256(canonical.encode()).hexdigest()
    with running_sandbox() as handle, httpx.Client(headers=HEADERS, base_url=handle.base_url) as http:
        http.post("/v1/messages", json=payload)
        http.post("/v1/messages", json={**payload, "stream": True})
        http.post("/v1/messages", json=body(foo=1))
        served = http.get("/_sandbox/stats").json()
        assert served == handle.stats()
        assert http.post("/_sandbox/reset").status_code == 200
        after = handle.stats()
    assert served["requests_total"] == 3
    assert served["answers_ok"] == 2
    assert served["by_status"] == {"200": 2, "400": 1}
    assert served["ok_by_request"] == {key: 2}
    assert after["requests_total"] == 0
    assert after["ok_by_request"] == {}
    assert after["by_status"] == {}


def test_running_sandbox_shuts_down_cleanly() -> None:
    """Leaving the block stops the thread and closes the port, even with a keep-alive connection open."""
    threads = threading.active_count()
    with running_sandbox() as handle, httpx.Client(headers=HEADERS) as http:
        assert http.post(handle.base_url + "/v1/messages", json=body()).status_code == 200
        assert threading.active_count() == threads + 1
        port = int(handle.base_url.rsplit(":", 1)[1])
    assert threading.active_count() == threads
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_port_in_use_raises_at_start() -> None:
    """Asking for a port that is taken fails in running_sandbox, not later."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with (
            pytest.raises(OSError, match="in use"),
            running_sandbox(SandboxConfig(port=taken.getsockname()[1])),
        ):
            pass


@pytest.mark.parametrize(
    "bad",
    [
        {"fault_rate": 2.0},
        {"faults": ("nope",)},
        {"auth": "basic"},
        {"shape": "xml"},
        {"requests_per_minute": 0},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    """SandboxConfig refuses values it cannot honour, naming them."""
    with pytest.raises(ValueError, match=next(iter(bad))):
        SandboxConfig(**bad)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_its_url_and_stops_on_signal(signum: int) -> None:
    """serve() announces the bound URL on stderr, answers, and exits 0 without a traceback on a signal."""
    code = "from pipeline.sandbox import SandboxConfig, serve; serve(SandboxConfig(port=0))"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=env) as child:
        try:
            assert child.stderr is not None
            line = child.stderr.readline()
            assert line.startswith("sandbox listening on http://127.0.0.1:")
            url = line.rsplit(" ", 1)[1].strip()
            assert httpx.post(url + "/v1/messages", json=body(), headers=HEADERS).status_code == 200
            child.send_signal(signum)
            assert child.wait(timeout=10) == 0
            assert "Traceback" not in child.stderr.read()
        finally:
            if child.poll() is None:
                child.kill()
