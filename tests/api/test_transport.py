"""The client's own connection pool (aiohttp) against real loopback servers: what it sends, and every
failure typed as the ``httpx`` transport seam types it (so retries and messages stay the same)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from pipeline.api.client import ClientConfig, MessagesClient
from pipeline.api.transport import AiohttpCarrier, HttpxCarrier, LineSplitter, environment_proxy
from pipeline.errors import ApiError, PermanentApiError
from pipeline.wire import MessagePayload
from scripted import STREAM_EVENTS, message, sse_lines

KEY = "sk-ant-api03-TRANSPORT-TEST-do-not-leak"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def payload(*, stream: bool = False) -> MessagePayload:
    body: MessagePayload = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "héllo \u2028 there"}],
    }
    if stream:
        body["stream"] = True
    return body


async def serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    """An aiohttp app on 127.0.0.1 (an ephemeral port) answering POSTs at the given paths."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def api() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Start loopback servers for a test; every one is cleaned up after it."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        runner, url = await serve(routes)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


def client(base_url: str, **config: Any) -> MessagesClient:
    settings = {"base_url": base_url, "api_key": KEY, "max_attempts": 2, "timeout_s": 5.0, **config}
    return MessagesClient(ClientConfig(**settings), sleep=no_wait)


async def no_wait(_: float) -> None:
    """Retries wait for nothing here: the tests are about what the carrier reports."""


async def send(c: MessagesClient, body: MessagePayload | None = None) -> Any:
    async with c:
        return await c.send(body or payload(), input_tokens=10)


async def test_a_run_sends_through_aiohttp_with_the_api_headers_and_the_body(api: Any) -> None:
    """Without a test transport the requests go through aiohttp, carrying key, version, JSON type and body."""
    seen: list[tuple[dict[str, str], Any]] = []

    async def messages(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response(message("hi"), headers={"request-id": "req_1"})

    c = client(await api({"/v1/messages": messages}))
    async with c:
        assert isinstance(c._wire, AiohttpCarrier)
        sent = await c.send(payload(), input_tokens=10)
    assert (sent.reply.text, sent.reply.request_id, sent.attempts) == ("hi", "req_1", 1)
    ((headers, body),) = seen
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("pipeline/")
    assert body == payload()  # the text arrives as sent (UTF-8, U+2028 included)


async def test_stream_lines_are_read_from_aiohttp(api: Any) -> None:
    """An event stream read through aiohttp assembles text, tools and usage like the httpx path."""

    async def messages(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        body = sse_lines(*STREAM_EVENTS).replace("\n", "\r\n").encode()
        for start in range(0, len(body), 7):  # small chunks: lines and \r\n pairs split across them
            await response.write(body[start : start + 7])
        await response.write_eof()
        return response

    sent = await send(client(await api({"/v1/messages": messages})), payload(stream=True))
    assert sent.reply.text == "Hi there"
    assert [call.name for call in sent.reply.tool_calls] == ["tag"]
    assert sent.reply.usage.output_tokens == 17


async def test_a_redirect_is_not_followed_and_the_key_stays_home(api: Any) -> None:
    """A 307 from the API is an answer, not a hop: the host it names never sees the request."""
    elsewhere: list[str] = []

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("x-api-key", ""))
        return web.json_response(message())

    target = await api({"/v1/messages": other})

    async def messages(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{target}/v1/messages")

    with pytest.raises(ApiError) as caught:
        await send(client(await api({"/v1/messages": messages})))
    assert caught.value.status == 307
    assert isinstance(caught.value, PermanentApiError)
    assert elsewhere == []


async def test_a_slow_answer_is_a_retried_timeout(api: Any) -> None:
    """No byte within ``timeout_s`` is a ``timeout_error`` that is retried (aiohttp's sock_read)."""
    calls = 0

    async def messages(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(3)
        return web.json_response(message())

    retried: list[ApiError] = []
    c = client(await api({"/v1/messages": messages}), timeout_s=0.3)
    c._on_retry = lambda details: retried.append(details.error)
    sent = await send(c)
    assert sent.attempts == 2
    ((error,),) = [retried]
    assert (error.status, error.error_type) == (None, "timeout_error")
    assert "ReadTimeout" in error.message
    assert "timeout 0.3 s" in error.message


async def test_a_refused_connection_is_a_connection_error() -> None:
    """Nobody listening: every attempt fails with a ``connection_error`` (ConnectError), then it gives up."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ApiError) as caught:
        await send(client(f"http://127.0.0.1:{port}"))
    assert (caught.value.status, caught.value.error_type, caught.value.attempts) == (
        None,
        "connection_error",
        2,
    )
    assert caught.value.message.startswith("ConnectError: ")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        # headers promise 500 bytes, 20 come, the connection closes
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n" + b"x" * 20,
            "body",
        ),
        (b"", "nothing"),  # the connection closes before any byte of the reply
        (b"NOT HTTP AT ALL\r\n\r\n", "garbage"),
    ],
)
async def test_a_connection_dropped_mid_reply_is_a_retried_connection_error(reply: bytes, kind: str) -> None:
    """Cut off mid-body, closed before the reply, or garbled: ``connection_error``, retried to success."""
    calls = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        if calls == 1:
            writer.write(reply)
        else:
            body = json.dumps(message()).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            writer.write(b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    retried: list[ApiError] = []
    c = client(f"http://127.0.0.1:{port}")
    c._on_retry = lambda details: retried.append(details.error)
    try:
        sent = await send(c)
    finally:
        server.close()
        await server.wait_closed()
    assert sent.attempts == 2, kind
    ((error,),) = [retried]
    assert (error.status, error.error_type) == (None, "connection_error"), error.message


def test_lines_split_on_every_sse_line_ending_across_chunks() -> None:
    """``\\n``, ``\\r\\n`` and ``\\r`` end lines, split between chunks or not; UTF-8 and U+2028 survive."""
    text = "event: a\r\ndata: é\u2028x\r\rdata: z\n\nlast"
    data = text.encode()
    for size in (1, 2, 3, 5, len(data)):
        splitter = LineSplitter()
        lines = [
            line for start in range(0, len(data), size) for line in splitter.feed(data[start : start + size])
        ]
        lines += splitter.flush()
        assert lines == ["event: a", "data: é\u2028x", "", "data: z", "", "last"], size


def test_environment_proxy_follows_the_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY/HTTP_PROXY/ALL_PROXY choose the proxy, NO_PROXY exempts a host, as httpx reads them."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert environment_proxy("https://api.anthropic.com/v1/messages") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert environment_proxy("https://api.anthropic.com/v1/messages") == "http://proxy.internal:3128"
    assert environment_proxy("http://127.0.0.1:8080/v1/messages") is None
    monkeypatch.setenv("ALL_PROXY", "http://all.internal:3128")
    assert environment_proxy("http://127.0.0.1:8080/v1/messages") == "http://all.internal:3128"
    monkeypatch.setenv("NO_PROXY", "api.anthropic.com,127.0.0.1")
    assert environment_proxy("https://api.anthropic.com/v1/messages") is None
    assert environment_proxy("http://127.0.0.1:8080/v1/messages") is None


async def test_without_aiohttp_the_requests_go_through_httpx(
    monkeypatch: pytest.MonkeyPatch, api: Any
) -> None:
    """A bare install without aiohttp still runs: the API requests fall back to the httpx client."""

    async def messages(request: web.Request) -> web.Response:
        return web.json_response(message("via httpx"))

    base = await api({"/v1/messages": messages})
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # `import aiohttp` now raises ImportError
    c = client(base)
    async with c:
        assert isinstance(c._wire, HttpxCarrier)
        sent = await c.send(payload(), input_tokens=10)
    assert sent.reply.text == "via httpx"
