"""The official anthropic SDK against the sandbox: what it sends is accepted and what it gets back parses.

SDK 2.x sends ``anthropic-version: 2026-10-21`` and the key as ``Authorization: Bearer``; the sandbox
takes what the hosted API takes for that version (no sampling parameters, the current models' rules).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pydantic
import pytest
from anthropic.types import TextBlock, ThinkingBlock, ToolUseBlock
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


class Annotation(pydantic.BaseModel):
    """A structured answer the SDK turns into a JSON schema and parses back."""

    category: str
    has_text: bool
    colours: list[str]


def test_models_list_and_retrieve(client: anthropic.Anthropic) -> None:
    """models.list() pages through every model (auto-pagination) and models.retrieve() resolves an alias."""
    listed = list(client.models.list(limit=5))
    assert len(listed) == len({model.id for model in listed}) > 5
    assert all(model.capabilities is not None for model in listed)
    info = client.models.retrieve("claude-haiku-4-5")
    assert info.id == "claude-haiku-4-5-20251001"
    assert info.max_tokens == 64_000
    assert info.capabilities is not None
    assert info.capabilities.structured_outputs.supported
    assert info.capabilities.thinking.types.enabled.supported
    assert not info.capabilities.thinking.types.adaptive.supported
    retired = list(client.models.list(lifecycle=["retired"]))
    assert retired
    assert {model.lifecycle for model in retired} == {"retired"}
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nonexistent-1")


def test_structured_output_request(client: anthropic.Anthropic) -> None:
    """messages.parse(output_format=...) sends output_config.format; the JSON answer parses and fits."""
    message = client.messages.parse(
        model="claude-opus-5",
        max_tokens=800,
        messages=[{"role": "user", "content": "Annotate the product."}],
        output_format=Annotation,
    )
    assert message.stop_reason == "end_turn"
    assert isinstance(message.parsed_output, Annotation)
    text = message.content[-1]
    assert isinstance(text, TextBlock)
    assert Annotation.model_validate_json(text.text) == message.parsed_output


def test_thinking_request_plain_and_streamed(client: anthropic.Anthropic) -> None:
    """An adaptive thinking request answers a ThinkingBlock first, streamed or not, billed as output."""
    kwargs: dict[str, Any] = {
        "model": "claude-haiku-5-5",
        "max_tokens": 2000,
        "thinking": {"type": "adaptive", "display": "summarized"},
        "messages": [{"role": "user", "content": "Think, then answer."}],
    }
    plain = client.messages.create(**kwargs)
    thought, answer = plain.content
    assert isinstance(thought, ThinkingBlock)
    assert thought.thinking.startswith("[sandbox] thinking about ")
    assert thought.signature
    assert isinstance(answer, TextBlock)
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert isinstance(final.content[0], ThinkingBlock)
    assert final.content[0].thinking == thought.thinking
    assert final.usage.output_tokens == plain.usage.output_tokens
    omitted = client.messages.create(**{**kwargs, "thinking": {"type": "adaptive", "display": "omitted"}})
    block = omitted.content[0]
    assert isinstance(block, ThinkingBlock)
    assert block.thinking == ""
    assert omitted.usage.output_tokens == plain.usage.output_tokens  # omitted thinking is still paid for
    with pytest.raises(anthropic.BadRequestError, match=r"thinking\.type\.enabled"):
        client.messages.create(**{**kwargs, "thinking": {"type": "enabled", "budget_tokens": 1024}})


def test_a_refusal_reaches_the_sdk_with_its_stop_details() -> None:
    """stop_reason refusal and stop_details parse into the SDK's RefusalStopDetails, streamed or not."""
    messages: list[Any] = [{"role": "user", "content": "hi"}]
    with (
        running_sandbox(SandboxConfig(refusal_rate=1.0)) as handle,
        anthropic.Anthropic(base_url=handle.base_url, api_key="sk-test", max_retries=0) as sdk,
    ):
        message = sdk.messages.create(model="claude-opus-5", max_tokens=200, messages=messages)
        with sdk.messages.stream(model="claude-opus-5", max_tokens=200, messages=messages) as stream:
            final = stream.get_final_message()
    for answer in (message, final):
        assert answer.stop_reason == "refusal"
        assert answer.stop_details is not None
        assert answer.stop_details.category == "cyber"
