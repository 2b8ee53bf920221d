"""What carries the API requests' bytes: aiohttp's connection pool in a run, an ``httpx`` client in tests.

:class:`~pipeline.api.client.MessagesClient` decides what to send and how to read the reply; a
:class:`Carrier` only POSTs a body and hands back an :class:`Answer` (status, headers, body or lines).
Two carriers, one behaviour:

- :class:`AiohttpCarrier`, what a run uses. Measured on loopback (3,000 requests, 64 in flight,
  50 ± 20 ms replies), client CPU per request: httpx 0.28 6.2-7.0 ms, httpx2 3.5-3.6 ms, httpx on
  the aiohttp transport (httpx-aiohttp) 1.3-1.4 ms, aiohttp 0.49-0.51 ms. httpcore scans every
  pooled connection, probing its socket, on every request, so its cost grows with the concurrency.
- :class:`HttpxCarrier`, over the run's ``httpx`` client: when a test hands in a transport
  (``httpx.MockTransport``), and when aiohttp is not installed.

Both raise ``httpx`` transport exceptions, whatever failed (aiohttp's are translated), so one
classifier (:func:`~pipeline.api.classify.transport_failure`) types every failure.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import re
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from pipeline.api.config import CONNECT_TIMEOUT_S, USER_AGENT, ClientConfig

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("pipeline.client")

# how long an idle API connection stays open for the next request (httpx's default)
KEEPALIVE_S = 5.0
_NEWLINE = re.compile(r"\r\n|\r|\n")


def encode_json(body: Mapping[str, Any]) -> bytes:
    """A request body as JSON, the way ``httpx``'s ``json=`` spells it (compact, UTF-8, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class Answer(Protocol):
    """One reply as the client reads it, whatever carried it: status, headers, then the body."""

    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self) -> bytes: ...

    def lines(self) -> AsyncIterator[str]:
        """The body as lines without their endings (``\\n``, ``\\r\\n`` or ``\\r``), for event streams."""
        ...


class Carrier(Protocol):
    """POSTs one request body and hands back the reply; fails with ``httpx`` transport errors."""

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[Answer]: ...

    async def aclose(self) -> None: ...


def open_carrier(config: ClientConfig, http: httpx.AsyncClient, *, pooled: bool = True) -> Carrier:
    """aiohttp's connection pool for the API requests, or ``http`` itself.

    :param pooled: False when ``http`` has a transport of its own (a test's ``httpx.MockTransport``):
        the requests go through it. ``http`` is also used when aiohttp is not installed.
    """
    if not pooled:
        return HttpxCarrier(http)
    try:
        import aiohttp  # noqa: F401  (a core dependency; a bare install without it still runs)
    except ImportError:
        log.debug("aiohttp is not installed: the API requests go through httpx (slower)")
        return HttpxCarrier(http)
    return AiohttpCarrier(config)


class HttpxAnswer:
    """A reply read from an ``httpx`` response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        return await self.response.aread()

    def lines(self) -> AsyncIterator[str]:
        return self.response.aiter_lines()


class HttpxCarrier:
    """Requests through an ``httpx`` client: the transport seam of the tests (``httpx.MockTransport``)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @contextlib.asynccontextmanager
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> AsyncIterator[Answer]:
        request = self.http.build_request("POST", url, content=body, headers=headers)
        response = await self.http.send(request, stream=True, follow_redirects=False)
        try:
            yield HttpxAnswer(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """The client belongs to :class:`MessagesClient`, which closes it."""


class AiohttpAnswer:
    """A reply read from an ``aiohttp`` response (its failures raised as ``httpx`` ones)."""

    def __init__(self, response: aiohttp.ClientResponse, failures: type[Exception]) -> None:
        self.response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self._failures = failures

    async def read(self) -> bytes:
        try:
            return await self.response.read()
        except self._failures as exc:
            raise as_httpx_error(exc) from exc

    async def lines(self) -> AsyncIterator[str]:
        splitter = LineSplitter()
        try:
            async for chunk in self.response.content.iter_any():
                for line in splitter.feed(chunk):
                    yield line
        except self._failures as exc:
            raise as_httpx_error(exc) from exc
        for line in splitter.flush():
            yield line


class AiohttpCarrier:
    """The API requests over one ``aiohttp`` session: its pool, the configured timeouts, no credentials.

    Behaves as the ``httpx`` client did: the same CA bundle (``httpx.create_ssl_context``), the proxy
    the environment names (read once), ``timeout_s`` between reads and for a free connection,
    ``CONNECT_TIMEOUT_S`` to connect, no redirects, keep-alive for 5 s; aiohttp's failures come out
    as the matching ``httpx`` exceptions (:func:`as_httpx_error`), so
    :func:`~pipeline.api.classify.transport_failure` types them.
    """

    def __init__(self, config: ClientConfig) -> None:
        import aiohttp

        https = config.endpoint.lower().startswith("https:")
        connector = aiohttp.TCPConnector(
            limit=config.concurrency,  # the client's slots bound the requests in flight
            keepalive_timeout=KEEPALIVE_S,
            ssl=httpx.create_ssl_context() if https else True,
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=config.timeout_s,
                sock_connect=CONNECT_TIMEOUT_S,
                sock_read=config.timeout_s,
            ),
            headers={"user-agent": USER_AGENT},
            # not trust_env: aiohttp would then look up ~/.netrc credentials for every request
            trust_env=False,
        )
        self.proxy = environment_proxy(config.endpoint)
        self.failures: type[Exception] = aiohttp.ClientError

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> _AiohttpExchange:
        request = self.session.post(url, data=body, headers=headers, allow_redirects=False, proxy=self.proxy)
        return _AiohttpExchange(request, self.failures)

    async def aclose(self) -> None:
        await self.session.close()


class _AiohttpExchange:
    """``async with``: the reply's headers on entry, the connection handed back on exit.

    A class rather than ``contextlib.asynccontextmanager``: the generator machinery cost more per
    request than the rest of this module.
    """

    __slots__ = ("_failures", "_request")

    def __init__(
        self,
        request: contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse],
        failures: type[Exception],
    ) -> None:
        self._request = request
        self._failures = failures

    async def __aenter__(self) -> Answer:
        try:
            response = await self._request.__aenter__()
        except self._failures as exc:
            raise as_httpx_error(exc) from exc
        return AiohttpAnswer(response, self._failures)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._request.__aexit__(None, None, None)


def as_httpx_error(exc: Exception) -> httpx.TransportError | httpx.DecodingError:
    """An aiohttp failure as the ``httpx`` exception that means the same (what ``classify`` reads)."""
    import aiohttp
    from aiohttp.http_exceptions import ContentEncodingError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text)
    if isinstance(exc, aiohttp.ClientPayloadError):
        if isinstance(exc.__cause__, ContentEncodingError):
            return httpx.DecodingError(text)
        return httpx.RemoteProtocolError(text)  # the body was cut short
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(text)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(text)
    return httpx.ReadError(text)  # reset, broken pipe and the rest of the connection's failures


class LineSplitter:
    """Bytes in, lines out, ended by ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec's three), UTF-8 safe
    across chunk boundaries. Unlike ``str.splitlines`` it leaves U+2028 and friends inside a line."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._tail = ""

    def feed(self, chunk: bytes) -> list[str]:
        text = self._tail + self._decoder.decode(chunk)
        hold = ""
        if text.endswith("\r"):  # maybe the first half of "\r\n": wait for the next chunk
            text, hold = text[:-1], "\r"
        lines = _NEWLINE.split(text)
        self._tail = lines.pop() + hold
        return lines

    def flush(self) -> list[str]:
        text = self._tail + self._decoder.decode(b"", final=True)
        self._tail = ""
        lines = _NEWLINE.split(text)
        if lines[-1] == "":
            lines.pop()
        return lines


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``,
    minus ``NO_PROXY``), as ``httpx`` reads them; None for a direct connection."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme.lower()) or proxies.get("all")
    if not proxy or (parts.hostname and urllib.request.proxy_bypass(parts.hostname)):
        return None
    return proxy
