"""The Message Batches endpoints over HTTP: create, retrieve, list, cancel and the results stream.

Paths and shapes are those of https://platform.claude.com/docs/en/build-with-claude/batch-processing
(``/v1/messages/batches`` ...). Failures go through :mod:`pipeline.api.classify` and retries through
:mod:`pipeline.api.retry`, so a batch call fails with the same typed errors as a Messages call
(retryable, permanent, fatal). Retrieve, list, cancel and opening the results are
idempotent and retried with jittered backoff (or the server's ``retry-after``); a create is retried
only when the server answered 429 or 529, which means it refused the request before making a batch.
A create that fails any other way (timeout, dropped connection, 5xx) raises
:class:`CreateUnconfirmed`: a batch may or may not exist, and the caller must find out by listing.

The key travels only in request headers, never in a URL, message or log line; redirects are not
followed (httpx would carry the key to whatever host a redirect names). The results stream is read
line by line and closed however the reader stops (anthropics/anthropic-sdk-python#1928).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from pipeline.api.classify import classify, describe, json_object, transport_failure
from pipeline.api.config import CONNECT_TIMEOUT_S, ClientConfig
from pipeline.errors import ApiError, CreateUnconfirmed, RetryableApiError

log = logging.getLogger("pipeline.batch")

BATCHES_PATH = "/v1/messages/batches"
LIST_PAGE = 100
UPLOAD_CHUNK = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch as the API describes it (the fields batch mode uses)."""

    id: str
    processing_status: str
    request_counts: dict[str, int]
    created_at: datetime | None
    ended_at: str | None = None

    @property
    def total(self) -> int:
        """Requests in the batch: the counts always add up to it, before and after it ends."""
        return sum(self.request_counts.values())

    @property
    def ended(self) -> bool:
        """Whether results can be downloaded."""
        return self.processing_status == "ended"

    @classmethod
    def from_json(cls, data: Any) -> BatchInfo:
        """Read a ``message_batch`` object; ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError("response is not a message batch (no id)")
        counts = data.get("request_counts") or {}
        created = data.get("created_at")
        return cls(
            id=data["id"],
            processing_status=str(data.get("processing_status", "")),
            request_counts={
                str(k): int(v) for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)
            },
            created_at=_parse_time(created) if isinstance(created, str) else None,
            ended_at=data.get("ended_at") if isinstance(data.get("ended_at"), str) else None,
        )


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class BatchesApi:
    """The batch endpoints for one command. Use as ``async with BatchesApi(config) as api``.

    :param transport: an ``httpx`` transport; tests may pass ``httpx.MockTransport``.
    :param sleep: what backoff waits with.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._transport = transport
        self._sleep = sleep
        self._policy = config.retry_policy()
        self._http: httpx.AsyncClient | None = None
        self.calls = 0

    async def __aenter__(self) -> BatchesApi:
        self._http = self.config.open_http(self._transport)
        return self

    async def __aexit__(self, *exc: object) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The open client (only inside ``async with``)."""
        if self._http is None:
            raise RuntimeError("BatchesApi is not open: use it inside `async with`")
        return self._http

    def _url(self, suffix: str = "") -> str:
        return self.config.url(f"{BATCHES_PATH}{suffix}")

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        return self.config.headers(accept=accept)

    def _transport_failure(self, exc: httpx.HTTPError) -> RetryableApiError:
        return transport_failure(exc, timeout_s=self.config.timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S)

    # ------------------------------------------------------------------ calls

    async def create(self, body: Path) -> BatchInfo:
        """POST the request body held in ``body`` (streamed from disk, never loaded whole).

        :raises CreateUnconfirmed: the outcome is unknown (no answer, or a 5xx other than 529).
        :raises ApiError: the server refused it, so no batch was made (4xx, or 429/529 too often).
        """
        size = (await asyncio.to_thread(body.stat)).st_size
        headers = {**self._headers(), "content-type": "application/json", "content-length": str(size)}

        async def attempt() -> BatchInfo:
            try:
                response = await self.http.post(self._url(), content=_read_file(body), headers=headers)
            except httpx.HTTPError as exc:
                raise CreateUnconfirmed(f"no answer to the create request: {describe(exc)}") from None
            if response.status_code >= 500 and response.status_code != 529:
                error = classify(response.status_code, response.headers, response.content)
                raise CreateUnconfirmed(f"the create request failed: {self._clean(error)}")
            if response.is_success:
                try:
                    return self._batch(response)
                except RetryableApiError as exc:  # a 2xx we cannot read may still have made a batch
                    raise CreateUnconfirmed(f"unreadable answer to the create request: {exc}") from None
            return self._batch(response)  # raises the refusal (retried when it is a 429 or 529)

        return await self._retrying(attempt, what="create")

    async def retrieve(self, batch_id: str) -> BatchInfo:
        """GET one batch (its status and counts)."""
        return await self._retrying(lambda: self._get_batch(self._url(f"/{batch_id}")), what="retrieve")

    async def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the API to cancel a batch (it moves to ``canceling``, then ``ended``)."""

        async def attempt() -> BatchInfo:
            response = await self._send("POST", self._url(f"/{batch_id}/cancel"))
            return self._batch(response)

        return await self._retrying(attempt, what="cancel")

    async def list_since(self, since: datetime) -> list[BatchInfo]:
        """Every batch created at or after ``since`` (the API lists newest first; pages until older)."""
        found: list[BatchInfo] = []
        after: str | None = None
        while True:
            params = {"limit": str(LIST_PAGE)} | ({"after_id": after} if after else {})

            async def attempt(params: dict[str, str] = params) -> dict[str, Any]:
                response = await self._send("GET", self._url(), params=params)
                return json_object(response)

            page = await self._retrying(attempt, what="list")
            data = page.get("data")
            if not isinstance(data, list):
                raise RetryableApiError("list answer has no data", status=200, error_type="parse_error")
            batches = [BatchInfo.from_json(item) for item in data]
            found.extend(b for b in batches if b.created_at is None or b.created_at >= since)
            older = any(b.created_at is not None and b.created_at < since for b in batches)
            if older or not page.get("has_more") or not batches:
                return found
            after = str(page.get("last_id") or batches[-1].id)

    @asynccontextmanager
    async def results(self, batch_id: str) -> AsyncIterator[AsyncIterator[str]]:
        """The batch's results as lines of JSON, streamed; the response is closed when the block exits."""
        url = self._url(f"/{batch_id}/results")

        async def attempt() -> httpx.Response:
            request = self.http.build_request("GET", url, headers=self._headers("application/binary"))
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise self._transport_failure(exc) from None
            if not response.is_success:
                body = await response.aread()
                await response.aclose()
                raise self._clean(classify(response.status_code, response.headers, body))
            return response

        response = await self._retrying(attempt, what="results")
        try:
            yield response.aiter_lines()
        except httpx.TransportError as exc:
            raise self._transport_failure(exc) from None
        finally:
            await response.aclose()

    # ------------------------------------------------------------------ plumbing

    async def _get_batch(self, url: str) -> BatchInfo:
        return self._batch(await self._send("GET", url))

    async def _send(self, method: str, url: str, params: dict[str, str] | None = None) -> httpx.Response:
        self.calls += 1
        try:
            response = await self.http.request(method, url, headers=self._headers(), params=params)
        except httpx.TransportError as exc:
            raise self._transport_failure(exc) from None
        if not response.is_success:
            raise self._clean(classify(response.status_code, response.headers, response.content))
        return response

    def _batch(self, response: httpx.Response) -> BatchInfo:
        if not response.is_success:
            raise self._clean(classify(response.status_code, response.headers, response.content))
        try:
            return BatchInfo.from_json(json_object(response))
        except ValueError as exc:
            raise RetryableApiError(str(exc), status=response.status_code, error_type="parse_error") from None

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run ``call`` under the retry policy every provider call shares (:mod:`pipeline.api.retry`)."""
        return await self._policy.call(call, sleep=self._sleep, log=log, what=f"batch {what}")

    def _clean(self, error: ApiError) -> ApiError:
        """Blank the key out of a server-supplied message (a proxy may echo headers)."""
        return self.config.redact(error)


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    """The file in chunks, read off the event loop: the body can be 256 MB."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK):
            yield chunk
    finally:
        handle.close()


def dump_line(record: Any) -> str:
    """Compact JSON as the pipeline sends it (non-ASCII kept)."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))
