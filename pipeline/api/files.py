"""The Files API over HTTP: upload, list, retrieve and delete (beta header ``files-api-2025-04-14``).

Paths and shapes are those of https://platform.claude.com/docs/en/build-with-claude/files and the
API reference (``POST /v1/files`` as multipart with a ``file`` part, ``GET /v1/files`` paged,
``GET`` and ``DELETE /v1/files/{file_id}``). An uploaded file is referenced from a Messages or batch
request as ``{"type": "file", "file_id": ...}`` with the same beta header; it lives until deleted
(500 MB a file, 100 GB an organisation). Failures go through :mod:`pipeline.api.classify` and
retries through the one policy of :mod:`pipeline.api.retry`, as for every provider call.

An upload that times out may still have been stored: it is retried, and the first copy is then
an orphan that costs storage, never a wrong answer. The key travels only in request headers;
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from pipeline.api.classify import classify, json_object, transport_failure
from pipeline.api.config import CONNECT_TIMEOUT_S, FILES_API_BETA, ClientConfig
from pipeline.errors import PermanentApiError, RetryableApiError

log = logging.getLogger("pipeline.files")

FILES_PATH = "/v1/files"
LIST_PAGE = 1000  # the most the list endpoint returns per page
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A file as the API describes it (``BetaFileMetadata``)."""

    id: str
    filename: str
    mime_type: str
    size_bytes: int
    created_at: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> FileInfo:
        """Read a file object; ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError("response is not a file object (no id)")
        size = data.get("size_bytes")
        return cls(
            id=data["id"],
            filename=str(data.get("filename", "")),
            mime_type=str(data.get("mime_type", "")),
            size_bytes=size if isinstance(size, int) and not isinstance(size, bool) else 0,
            created_at=data.get("created_at") if isinstance(data.get("created_at"), str) else None,
        )


class FilesApi:
    """The Files endpoints for one command. Use as ``async with FilesApi(config) as files``.

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
        self.uploads = 0  # files stored by this client (retries not counted twice)
        self.bytes_uploaded = 0

    async def __aenter__(self) -> FilesApi:
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
            raise RuntimeError("FilesApi is not open: use it inside `async with`")
        return self._http

    def _headers(self) -> dict[str, str]:
        headers = self.config.headers()
        betas = [beta for beta in headers.get("anthropic-beta", "").split(",") if beta]
        if FILES_API_BETA not in betas:
            betas.append(FILES_API_BETA)
        headers["anthropic-beta"] = ",".join(betas)
        return headers

    # ------------------------------------------------------------------ calls

    async def upload(self, data: bytes, *, filename: str, media_type: str) -> FileInfo:
        """Store ``data`` as a file; returns what the API recorded (its ``id`` goes into requests)."""

        async def attempt() -> FileInfo:
            files = {"file": (filename, data, media_type)}
            response = await self._send("POST", self.config.url(FILES_PATH), files=files)
            return self._file(response)

        info = await self._retrying(attempt, what="upload")
        self.uploads += 1
        self.bytes_uploaded += len(data)
        return info

    async def retrieve(self, file_id: str) -> FileInfo:
        """One file's metadata."""

        async def attempt() -> FileInfo:
            return self._file(await self._send("GET", self.config.url(f"{FILES_PATH}/{file_id}")))

        return await self._retrying(attempt, what="retrieve")

    async def delete(self, file_id: str) -> bool:
        """Delete a file; False when the API no longer has it (404), True when it was deleted now."""

        async def attempt() -> bool:
            await self._send("DELETE", self.config.url(f"{FILES_PATH}/{file_id}"))
            return True

        try:
            return await self._retrying(attempt, what="delete")
        except PermanentApiError as exc:
            if exc.status == 404:
                return False
            raise

    async def list(self) -> AsyncIterator[FileInfo]:
        """Every file of the workspace, page by page.

        Pages by ``next_page`` (the ``page`` cursor the SDK's types describe) or, failing that,
        ``has_more`` and ``after_id`` with ``last_id`` (the shape the API reference shows).
        """
        params: dict[str, str] = {"limit": str(LIST_PAGE)}
        while True:

            async def attempt(params: dict[str, str] = params) -> dict[str, Any]:
                response = await self._send("GET", self.config.url(FILES_PATH), params=params)
                return json_object(response)

            page = await self._retrying(attempt, what="list")
            data = page.get("data")
            if not isinstance(data, list):
                raise RetryableApiError("list answer has no data", status=200, error_type="parse_error")
            infos = [FileInfo.from_json(item) for item in data]
            for info in infos:
                yield info
            cursor = page.get("next_page")
            if isinstance(cursor, str) and cursor:
                params = {"limit": str(LIST_PAGE), "page": cursor}
            elif page.get("has_more") and infos:
                params = {"limit": str(LIST_PAGE), "after_id": str(page.get("last_id") or infos[-1].id)}
            else:
                return

    # ------------------------------------------------------------------ plumbing

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method, url, headers=self._headers(), params=params, files=files, follow_redirects=False
            )
        except httpx.TransportError as exc:
            raise transport_failure(
                exc, timeout_s=self.config.timeout_s, connect_timeout_s=CONNECT_TIMEOUT_S
            ) from None
        if not response.is_success:
            raise self.config.redact(classify(response.status_code, response.headers, response.content))
        return response

    def _file(self, response: httpx.Response) -> FileInfo:
        try:
            return FileInfo.from_json(json_object(response))
        except ValueError as exc:
            raise RetryableApiError(str(exc), status=response.status_code, error_type="parse_error") from None

    async def _retrying(self, call: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run ``call`` under the retry policy every provider call shares (:mod:`pipeline.api.retry`)."""
        return await self._policy.call(call, sleep=self._sleep, log=log, what=f"files {what}")
