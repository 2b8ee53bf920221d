"""The API's error shape: the exception a check raises, the JSON body sent for it, and reading a body
that may deserve one (too large, not JSON)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

JSON_TYPE = "application/json"
READ_CHUNK = 1 << 20


class RequestError(Exception):
    """A request the sandbox refuses, with the status and ``error.type`` the hosted API would send.

    :param message: the API-style message, usually prefixed with the JSON path of the bad field.
    :param details: extra ``error.details`` (the spend cap sets ``error_code``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        error_type: str = "invalid_request_error",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.details = details


def error_body(
    error_type: str, message: str, request_id: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The hosted API's error JSON: ``{"type":"error","error":{...},"request_id":...}``."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error, "request_id": request_id}


def cursor_window(ids: list[str], query: Any, limit: int) -> tuple[int, int]:
    """The ``start, stop`` of a list page, as the API pages by ``after_id`` / ``before_id``: after
    an id, the next ``limit``; before one, the ``limit`` just before it; an unknown id, nothing."""
    start, stop = 0, len(ids)
    if (after := query.get("after_id")) is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
    if (before := query.get("before_id")) is not None:
        stop = ids.index(before) if before in ids else 0
        start = max(start, stop - limit)
    return start, stop


def json_reply(body: dict[str, Any], request_id: str, status: int = 200) -> web.Response:
    """A JSON answer with the ``request-id`` header the hosted API sends on every response."""
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=JSON_TYPE,
        headers={"request-id": request_id},
    )


def error_reply(err: RequestError, request_id: str) -> web.Response:
    """The hosted API's answer to a refused request."""
    return json_reply(
        error_body(err.error_type, err.message, request_id, err.details), request_id, err.status
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, read in chunks up to ``limit`` bytes: the API's 413 past it, its 400 for non-JSON."""
    too_large = RequestError(
        f"Request exceeds the maximum allowed number of bytes ({limit})",
        status=413,
        error_type="request_too_large",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    if request.content_type != JSON_TYPE:
        raise RequestError(f"Content-Type must be {JSON_TYPE}, got {request.content_type!r}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(raw: bytes) -> Any:
    """The decoded JSON body, or the API's 400 for one that is not JSON."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"There was an error parsing the body of your request: {exc}") from None
