"""The official anthropic SDK against the sandbox: what it sends is accepted and what it gets back parses."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import TextBlock, ToolUseBlock
from PIL import Image

from pipeline.sandbox import SandboxConfig, SandboxHandle, running_sandbox

MODEL = "claude-haiku-4-5"
MISMATCH = (
    "The image was specified using the image/jpeg media type, but the image appears to be a image/png image"
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category", "has_text", "colours"],
    "properties": {
        "category": {"type": "string", "enum": ["apparel", "electronics", "home", "other"]},
        "has_text": {"type": "boolean"},
        "colours": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
}


def image_b64(fmt: str) -> str:
    """A small real image made by Pillow, base64-encoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (20, 120, 220)).save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def image_message(fmt: str, media_type: str) -> list[Any]:
    source = {"type": "base64", "media_type": media_type, "data": image_b64(fmt)}
    content = [
        {"type": "image", "source": source},
        {"type": "text", "text": "Write alt text for this photo."},
    ]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxHandle]:
    with running_sandbox() as handle:
        yield handle


@pytest.fixture
def client(sandbox: SandboxHandle) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sandbox.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def test_text_message(client: anthropic.Anthropic) -> None:
    """A plain text request parses into a Message with a sandbox model, text and usage."""
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Say hello to the sandbox."}]
    )
    assert message.model == "sandbox:" + MODEL
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert isinstance(block, TextBlock)
    assert block.text.startswith("[sandbox] ")
    assert "Say hello to the sandbox." in block.text
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    assert message._request_id is not None
    assert message._request_id.startswith("req_sandbox_")


def test_image_message(client: anthropic.Anthropic) -> None:
    """A base64 JPEG made by Pillow is accepted and counted."""
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=image_message("JPEG", "image/jpeg")
    )
    block = message.content[0]
    assert isinstance(block, TextBlock)
    assert "(1 image)" in block.text
    assert message.usage.input_tokens >= 2  # 40x30 px is ceil(1200/750) tokens on top of the text


def test_count_tokens_matches_usage(client: anthropic.Anthropic) -> None:
    """The SDK's count_tokens returns the input tokens that the answer's usage reports."""
    messages = image_message("PNG", "image/png")
    counted = client.messages.count_tokens(model=MODEL, messages=messages, system="Be brief.")
    answered = client.messages.create(model=MODEL, max_tokens=50, messages=messages, system="Be brief.")
    assert counted.input_tokens == answered.usage.input_tokens


def test_forced_tool_call(client: anthropic.Anthropic) -> None:
    """A forced tool call parses into a ToolUseBlock whose input fits the tool's schema."""
    message = client.messages.create(
        model=MODEL,
        max_tokens=400,
        messages=[{"role": "user", "content": "Annotate the product."}],
        tools=[{"name": "record_annotation", "description": "Record it.", "input_schema": SCHEMA}],
        tool_choice={"type": "tool", "name": "record_annotation"},
    )
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert isinstance(block, ToolUseBlock)
    assert block.name == "record_annotation"
    assert block.id.startswith("toolu_sandbox_")
    assert isinstance(block.input, dict)
    jsonschema.validate(block.input, SCHEMA)


def test_media_type_mismatch_is_a_bad_request(client: anthropic.Anthropic) -> None:
    """PNG bytes declared as image/jpeg raise BadRequestError with the API's mismatch message."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=image_message("PNG", "image/jpeg"))
    assert caught.value.status_code == 400
    assert MISMATCH in str(caught.value)
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_sandbox_")


def test_streaming_final_message(client: anthropic.Anthropic) -> None:
    """messages.stream(...).get_final_message() assembles the same answer as the plain call."""
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 400,
        "messages": [{"role": "user", "content": "Stream me a reply."}],
        "tools": [{"name": "record_annotation", "input_schema": SCHEMA}],
    }
    plain = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    text, tool = final.content
    assert isinstance(text, TextBlock)
    assert isinstance(tool, ToolUseBlock)
    assert isinstance(plain.content[0], TextBlock)
    assert isinstance(plain.content[1], ToolUseBlock)
    assert text.text == streamed_text == plain.content[0].text
    assert tool.input == plain.content[1].input
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_overload_and_stream_error_reach_the_sdk_as_typed_errors() -> None:
    """A 529 is OverloadedError; an in-stream overload is an APIStatusError whose type says so."""
    config = SandboxConfig(fault_rate=1.0, faults=("stream_error",))
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with (
        running_sandbox(config) as handle,
        anthropic.Anthropic(base_url=handle.base_url, api_key="sk-test", max_retries=0) as sdk,
    ):
        with pytest.raises(anthropic.OverloadedError):
            sdk.messages.create(model=MODEL, max_tokens=50, messages=messages)
        with (
            pytest.raises(anthropic.APIStatusError) as caught,
            sdk.messages.stream(model=MODEL, max_tokens=50, messages=messages) as stream,
        ):
            stream.get_final_message()
    assert caught.value.type == "overloaded_error"


def test_bearer_auth_token() -> None:
    """With auth="bearer" the SDK's auth_token works; a wrong token is an AuthenticationError."""
    config = SandboxConfig(auth="bearer", api_key="sk-bearer")
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with running_sandbox(config) as handle:
        with anthropic.Anthropic(base_url=handle.base_url, auth_token="sk-bearer", max_retries=0) as sdk:
            assert sdk.messages.create(model=MODEL, max_tokens=50, messages=messages).content
        with (
            anthropic.Anthropic(base_url=handle.base_url, auth_token="sk-other", max_retries=0) as sdk,
            pytest.raises(anthropic.AuthenticationError),
        ):
            sdk.messages.create(model=MODEL, max_tokens=50, messages=messages)


def test_sdk_sends_its_api_key_as_a_bearer_token() -> None:
    """SDK 2.14 sends api_key as Authorization: Bearer, so a server that reads only x-api-key refuses it."""
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with (
        running_sandbox(SandboxConfig(auth="x-api-key")) as handle,
        anthropic.Anthropic(base_url=handle.base_url, api_key="sk-test", max_retries=0) as sdk,
        pytest.raises(anthropic.AuthenticationError, match="x-api-key header is required"),
    ):
        sdk.messages.create(model=MODEL, max_tokens=50, messages=messages)
