"""Every failure of a provider call becomes a typed ``ApiError`` here, for every endpoint alike.

Four ways a call fails, one function each: a failed response (:func:`classify`: status, headers
and body, HTML error pages included), an ``error`` event or error body after a 200
(:func:`error_from_event`), no usable answer at all (:func:`transport_failure`: timeouts, refused
or dropped connections), and a 2xx that cannot be read (:func:`parse_failure`). The class says what
happens next: retry (:class:`RetryableApiError`), give up on this request
(:class:`PermanentApiError`) or stop the run (:class:`FatalApiError`).
"""

from __future__ import annotations

import email.utils
import html
import json
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from http import HTTPStatus
from typing import Any

import httpx

from pipeline.errors import ApiError, FatalApiError, PermanentApiError, RetryableApiError

MESSAGE_LIMIT = 200  # characters of a server's error text kept in a one-line message


# The status each API error type stands for, used when the type arrives without one (an SSE
# ``error`` event after a 200) and, inverted in the client, to name errors whose body says nothing.
STATUS_FOR_ERROR_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "conflict_error": 409,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


RETRYABLE_STATUSES = frozenset({408, 409, 429})  # plus every status >= 500


FATAL_STATUSES = frozenset({401, 402, 403})


SPEND_LIMIT_CODE = "enforced_spend_limit_reached"


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def error_from_event(data: Mapping[str, Any], request_id: str | None) -> ApiError:
    """The error an ``error`` event (or an error body sent with a 200) stands for.

    The HTTP status was 200, so the class comes from ``error.type``: ``overloaded_error`` acts as a
    529, ``api_error`` as a 500, ``invalid_request_error`` as a 400 and so on; unknown types (vLLM's
    ``internal_error``...) as a 500, because a server that failed mid-answer may well succeed next time.
    """
    error_type, message, body_request_id, details = read_error_json(data)
    error_type = error_type or "api_error"
    status = STATUS_FOR_ERROR_TYPE.get(error_type, 500)
    cls = error_class(status, None, details)
    return cls(
        f"{message or error_type} (sent inside a 200 reply)",
        status=status,
        error_type=error_type,
        request_id=request_id or body_request_id,
    )


def error_class(status: int, should_retry: str | None, details: Mapping[str, Any]) -> type[ApiError]:
    """The ``ApiError`` subclass for a status, an ``x-should-retry`` value and ``error.details``."""
    # Fatal first: x-should-retry answers "again or not", but a bad key or an exhausted spend cap
    # fails every row, so no header makes them a single row's problem.
    if status in FATAL_STATUSES or (status == 429 and details.get("error_code") == SPEND_LIMIT_CODE):
        return FatalApiError
    hint = (should_retry or "").strip().lower()
    if hint == "true":
        return RetryableApiError
    if hint == "false":
        return PermanentApiError
    if status in RETRYABLE_STATUSES or status >= 500:
        return RetryableApiError
    return PermanentApiError


def read_error_json(data: Mapping[str, Any]) -> tuple[str | None, str, str | None, Mapping[str, Any]]:
    """(error.type, message, request_id, error.details) from any of the error JSON shapes seen."""
    error = data.get("error")
    request_id = _opt_str(data.get("request_id"))
    if isinstance(error, Mapping):
        details = error.get("details")
        return (
            _opt_str(error.get("type")) or _opt_str(error.get("code")),
            one_line(_str(error.get("message"))),
            request_id,
            details if isinstance(details, Mapping) else {},
        )
    if isinstance(error, str):  # {"error": "text"}, as some proxies send
        return None, one_line(error), request_id, {}
    # FastAPI-style {"detail": ...} (vLLM) or a bare {"message": ...}
    for key in ("message", "detail"):
        if isinstance(value := data.get(key), str) and value:
            kind = _opt_str(data.get("type"))
            return (kind if kind != "error" else None), one_line(value), request_id, {}
    return None, one_line(json.dumps(data, ensure_ascii=False, separators=(",", ":"))), request_id, {}


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Whitespace collapsed to single spaces, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# the API's error.type per status, for bodies that do not say (a proxy's HTML page, an empty body)
_TYPE_FOR_STATUS = {
    **{status: name for name, status in STATUS_FOR_ERROR_TYPE.items()},
    408: "timeout_error",
    422: "invalid_request_error",
}


def classify(
    status: int, headers: Mapping[str, str], body: bytes | str, *, now: float | None = None
) -> ApiError:
    """The ``ApiError`` for a failed response: retryable, permanent or fatal, with a one-line message.

    :param headers: response headers; a case-insensitive mapping (``httpx.Headers``) or lower-case keys.
    :param body: the raw body: the API's error JSON, or a proxy's HTML or text page.
    :param now: the current Unix time, for an HTTP-date ``retry-after`` (default: the system clock).
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    error_type, message, body_request_id, details = _read_error_body(text, status, headers)
    cls = error_class(status, headers.get("x-should-retry"), details)
    return cls(
        message,
        status=status,
        error_type=error_type or default_error_type(status),
        request_id=headers.get("request-id") or body_request_id,
        retry_after=None if cls is FatalApiError else parse_retry_after(headers, now=now),
    )


def default_error_type(status: int) -> str:
    """The ``error.type`` the API would use for ``status``, for bodies that do not say."""
    if status in _TYPE_FOR_STATUS:
        return _TYPE_FOR_STATUS[status]
    if status >= 500:
        return "api_error"
    # the API uses invalid_request_error for the 4xx codes without a type of their own
    return "invalid_request_error" if status >= 400 else "http_error"


def _read_error_body(
    text: str, status: int, headers: Mapping[str, str]
) -> tuple[str | None, str, str | None, Mapping[str, Any]]:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            data = json.loads(stripped)
        except ValueError:
            pass
        else:
            if isinstance(data, Mapping):
                error_type, message, request_id, details = read_error_json(data)
                return error_type, message or _phrase(status), request_id, details
            return None, one_line(stripped), None, {}
    if not stripped:
        return None, f"{_phrase(status)} (empty body)", None, {}
    content_type = headers.get("content-type", "").lower()
    if "html" in content_type or re.match(r"<(!doctype|html|head|body|title)\b", stripped, re.IGNORECASE):
        return None, f"HTML error page: {html_summary(stripped) or _phrase(status)}", None, {}
    return None, one_line(stripped), None, {}


def html_summary(page: str) -> str:
    """The ``<title>`` of an HTML page, else its visible text, on one line."""
    match = re.search(r"<title[^>]*>(.*?)</title\s*>", page, re.IGNORECASE | re.DOTALL)
    if match and match.group(1).strip():
        return one_line(html.unescape(match.group(1)))
    without_code = re.sub(r"<(script|style)\b.*?</\1\s*>", " ", page, flags=re.IGNORECASE | re.DOTALL)
    return one_line(html.unescape(re.sub(r"<[^>]*>", " ", without_code)))


def _phrase(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or ``None``.

    ``retry-after-ms`` wins over ``retry-after``; ``retry-after`` is seconds (a float is accepted) or
    an HTTP date. Zero, negative, unparseable and past values mean "no advice". No upper bound here:
    the caller caps it, because a server asking for 90 s means it (the SDK's 60 s cut-off does not).
    """
    if (millis := _positive_float(headers.get("retry-after-ms"))) is not None:
        return millis / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    if (seconds := _positive_float(value)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    delay = when.timestamp() - (time.time() if now is None else now)
    return delay if delay > 0 else None


def _positive_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def parse_failure(message: str, status: int, request_id: str | None = None) -> RetryableApiError:
    """A 2xx whose body cannot be read: usually a proxy or a truncated body, so worth another attempt."""
    return RetryableApiError(message, status=status, error_type="parse_error", request_id=request_id)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """A successful answer's JSON object; anything else is a :func:`parse_failure`."""
    try:
        data = response.json()
    except ValueError:
        raise parse_failure(
            f"answer is not JSON: {one_line(response.text, 80)!r}", response.status_code
        ) from None
    if not isinstance(data, dict):
        raise parse_failure("answer is not a JSON object", response.status_code)
    return data


def transport_failure(
    exc: httpx.HTTPError, *, timeout_s: float, connect_timeout_s: float
) -> RetryableApiError:
    """The error for a call that got no usable answer: timed out, refused, reset, or dropped mid-reply.

    All are retryable: the next attempt may get through. The message says which limit ran out.
    """
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout):
            limit = f"no connection within {connect_timeout_s:g} s"
        elif isinstance(exc, httpx.PoolTimeout):
            limit = f"no free pooled connection within {timeout_s:g} s"
        else:
            limit = f"timeout {timeout_s:g} s"
        return RetryableApiError(f"{describe(exc)} ({limit})", status=None, error_type="timeout_error")
    if isinstance(exc, httpx.DecodingError):
        return RetryableApiError(describe(exc), status=None, error_type="parse_error")
    return RetryableApiError(describe(exc), status=None, error_type="connection_error")


def describe(exc: Exception) -> str:
    """An exception as ``Type: message`` on one line."""
    text = one_line(str(exc), 160)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
